/** The JPEG quality an upload was saved at, read from its luma quantisation table. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jpegQuality } from '../lib/tiles/jpeg-quality.js';
import { wavePng } from './helpers.js';

test('the quality sharp (libjpeg) saved at is read back, from a buffer and a file; other formats and junk read as 0', async () => {
  const png = await wavePng(64, 48);
  const dir = mkdtempSync(join(tmpdir(), 'infdit-jq-'));
  for (const q of [1, 10, 30, 49, 50, 51, 75, 90, 99, 100]) {
    const jpg = await sharp(png).jpeg({ quality: q }).toBuffer();
    assert.equal(jpegQuality(jpg), q, `buffer at quality ${q}`);
    writeFileSync(join(dir, `q${q}.jpg`), jpg);
    assert.equal(jpegQuality(join(dir, `q${q}.jpg`)), q, `file at quality ${q}`);
  }
  // a large EXIF segment before the tables is skipped by its length
  const withExif = await sharp(png).withExif({ IFD0: { ImageDescription: 'x'.repeat(30_000) } }).jpeg({ quality: 62 }).toBuffer();
  assert.ok(withExif.indexOf(Buffer.from([0xff, 0xe1])) < withExif.indexOf(Buffer.from([0xff, 0xdb])));
  assert.equal(jpegQuality(withExif), 62);
  assert.equal(jpegQuality(png), 0);
  assert.equal(jpegQuality(await sharp(png).webp({ quality: 50 }).toBuffer()), 0);
  const jpg = await sharp(png).jpeg({ quality: 80 }).toBuffer();
  const dqt = jpg.indexOf(Buffer.from([0xff, 0xdb]));
  for (const cut of [0, 1, 3, dqt + 3, dqt + 20]) assert.equal(jpegQuality(jpg.subarray(0, cut)), 0, `cut at ${cut}`);
  const badLength = Buffer.from(jpg); badLength.writeUInt16BE(1, dqt + 2);
  assert.equal(jpegQuality(badLength), 0);
});

test('a 16-bit table and a non-standard one get the nearest quality', () => {
  // SOI, then a DQT with precision 1 (16-bit entries) holding libjpeg's quality-50 table (the standard one)
  const std = [16, 11, 12, 14, 12, 10, 16, 14, 13, 14, 18, 17, 16, 19, 24, 40, 26, 24, 22, 22, 24, 49, 35, 37, 29, 40, 58, 51, 61, 60,
    57, 51, 56, 55, 64, 72, 92, 78, 64, 68, 87, 69, 55, 56, 80, 109, 81, 87, 95, 98, 103, 104, 103, 62, 77, 113, 121, 112, 100, 120, 92, 101, 103, 99];
  const dqt16 = (zigzag: number[]) => {
    const seg = Buffer.alloc(2 + 2 + 2 + 1 + 128);
    seg.writeUInt16BE(0xffd8, 0); seg.writeUInt16BE(0xffdb, 2); seg.writeUInt16BE(2 + 1 + 128, 4); seg[6] = 0x10;
    zigzag.forEach((v, i) => seg.writeUInt16BE(v, 7 + 2 * i));   // zigzag order, as a file holds it
    return seg;
  };
  assert.equal(jpegQuality(dqt16(std)), 50);
  assert.equal(jpegQuality(dqt16(std.map(v => Math.round(v / 2)))), 75);   // libjpeg's scale at 75 is 50%
  // an encoder's own table, 60% of the standard one give or take 1 (libjpeg's scale at 70): about 70
  const own = jpegQuality(dqt16(std.map((v, i) => Math.max(1, Math.round(v * 0.6) + (i % 3) - 1))));
  assert.ok(own >= 69 && own <= 71, `read as quality ${own}`);
});
