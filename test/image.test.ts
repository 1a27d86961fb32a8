/** Input normalisation with sharp: every kind of photo becomes 8-bit sRGB RGB, upright. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { halve, cropClamped, type RGBImage } from '../lib/tiles/image.js';
import { prepareLR } from '../lib/tiles/lrfile.js';

/** Decode as an upload is decoded (to disk, strip by strip), then read it whole. */
async function loadRGB(bytes: Buffer) {
  const dir = mkdtempSync(join(tmpdir(), 'infdit-img-'));
  writeFileSync(join(dir, 'source'), bytes);
  const lr = await prepareLR(join(dir, 'source'), join(dir, 'lr'), 1e9);
  return { width: lr.width, height: lr.height, data: lr.levels[0].rows(0, lr.height) };
}
import { Model } from '../lib/engine/model.js';
import { Render } from '../lib/engine/render.js';
import { MemoryBlockStore } from '../lib/engine/blockstore.js';
import { FIXTURE } from './helpers.js';

test('grey, RGBA, 16-bit and EXIF-rotated inputs are normalised', async () => {
  const grey = await sharp({ create: { width: 5, height: 3, channels: 3, background: '#404040' } }).toColourspace('b-w').png().toBuffer();
  let im = await loadRGB(grey);
  assert.deepEqual([im.width, im.height, im.data.length], [5, 3, 45]);
  assert.equal(im.data[0], 0x40); assert.equal(im.data[1], 0x40);

  const rgba = await sharp({ create: { width: 4, height: 4, channels: 4, background: { r: 255, g: 0, b: 0, alpha: 0 } } }).png().toBuffer();
  im = await loadRGB(rgba);
  assert.deepEqual([...im.data.subarray(0, 3)], [255, 255, 255], 'transparent pixels flatten onto white');

  const deep = await sharp(Buffer.from(new Uint16Array(2 * 2 * 3).fill(65535).buffer), { raw: { width: 2, height: 2, channels: 3, depth: 'ushort' } as any }).toColourspace('rgb16').png().toBuffer();
  assert.equal((await sharp(deep).metadata()).depth, 'ushort');
  im = await loadRGB(deep);
  assert.deepEqual([...im.data], new Array(12).fill(255));

  // 6×2 stored, EXIF orientation 6 (rotate 90° clockwise to display): upright it is 2×6
  const raw = Buffer.alloc(6 * 2 * 3); raw[0] = 200;
  const rotated = await sharp(raw, { raw: { width: 6, height: 2, channels: 3 } }).jpeg({ quality: 100 }).withMetadata({ orientation: 6 }).toBuffer();
  im = await loadRGB(rotated);
  assert.deepEqual([im.width, im.height], [2, 6]);
});

test('2× is the 4× output halved with the pyramid rule', async () => {
  const model = await Model.load(FIXTURE + '.json', { threads: 1 });
  const image = { width: 10, height: 7, data: Uint8Array.from({ length: 210 }, (_, i) => (i * 29) % 256) };
  const mk = (scale: number) => new Render({ model, image, scale, seed: 1, batch: 8, kvBytes: 1 << 26, store: new MemoryBlockStore() });
  const r2 = mk(2), r4 = mk(4);
  const a = await r2.region(0, 0, r2.width, r2.height), b = await r4.region(0, 0, r4.width, r4.height);
  assert.deepEqual([r2.width, r2.height], [20, 14]);
  assert.ok(Buffer.from(a.data).equals(Buffer.from(halve(b).data)));
  assert.throws(() => mk(3), /scale must be one of 2, 4, 8, 16/);
});

test('the upload kept on disk reads as the decoded image: clamped regions, halved levels', async () => {
  const w = 37, h = 23, raw = Buffer.from(Uint8Array.from({ length: w * h * 3 }, (_, i) => (i * 31 + (i >> 5)) % 256));
  const dir = mkdtempSync(join(tmpdir(), 'infdit-img-'));
  writeFileSync(join(dir, 'source'), await sharp(raw, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer());
  const lr = await prepareLR(join(dir, 'source'), join(dir, 'lr'), 1e9);
  let img: RGBImage = { width: w, height: h, data: new Uint8Array(raw) };
  assert.ok(Buffer.from(lr.levels[0].regionSync(-3, -2, w + 7, h + 5)).equals(Buffer.from(cropClamped(img, -3, -2, w + 7, h + 5))));
  assert.ok(Buffer.from(lr.levels[0].regionSync(30, 20, 12, 9)).equals(Buffer.from(cropClamped(img, 30, 20, 12, 9))));
  assert.deepEqual(lr.levels.map(l => [l.width, l.height]), [[37, 23], [19, 12], [10, 6], [5, 3], [3, 2], [2, 1], [1, 1]]);
  for (const level of lr.levels.slice(1)) {
    img = halve(img);
    assert.ok(Buffer.from(level.rows(0, level.height)).equals(Buffer.from(img.data)));
  }
  await assert.rejects(prepareLR(join(dir, 'lr/0.v'), join(dir, 'bad'), 1e9).then(() => prepareLR(join(dir, 'nothing'), join(dir, 'bad'), 1e9)), /could not be decoded/);
});
