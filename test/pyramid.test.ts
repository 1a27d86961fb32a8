/** DZI geometry and level pixels equal libvips dzsave's (sharp .tile()) for the same source. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { LevelSampler, dziXml, maxLevel, tileCount, tileRect, type Geometry } from '../lib/tiles/pyramid.js';
import type { RGBImage } from '../lib/tiles/image.js';

/** A plain crop (the pyramid itself crops through PixelSource.regionSync). */
function crop(img: RGBImage, x: number, y: number, w: number, h: number): RGBImage {
  const out = new Uint8Array(w * h * 3);
  for (let r = 0; r < h; r++) out.set(img.data.subarray(((y + r) * img.width + x) * 3, ((y + r) * img.width + x + w) * 3), r * w * 3);
  return { width: w, height: h, data: out };
}

function noise(w: number, h: number, seed: number): RGBImage {
  let s = seed >>> 0;
  const data = new Uint8Array(w * h * 3).map(() => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) >>> 24);
  return { width: w, height: h, data };
}

for (const [w, h, size, overlap] of [[1, 1, 256, 0], [255, 3, 256, 0], [255, 3, 254, 1], [1000, 700, 254, 1], [1000, 700, 256, 0], [513, 257, 64, 2]]) {
  test(`pyramid ${w}×${h} tile ${size} overlap ${overlap} equals sharp .tile()`, async () => {
    const img = noise(w, h, w * 31 + h);
    const dir = mkdtempSync(join(tmpdir(), 'dz-'));
    await sharp(Buffer.from(img.data), { raw: { width: w, height: h, channels: 3 } })
      .png().tile({ size, overlap, layout: 'dz' }).toFile(join(dir, 'out.dz'));
    const g: Geometry = { width: w, height: h, tileSize: size, overlap };
    assert.equal(dziXml(g, 'png'), readFileSync(join(dir, 'out.dzi'), 'utf8'));
    const sampler = new LevelSampler(g, async (x, y, ww, hh) => crop(img, x, y, ww, hh), () => null);
    const M = maxLevel(w, h);
    const levels = readdirSync(join(dir, 'out_files')).filter(f => /^\d+$/.test(f)).map(Number);
    assert.equal(Math.max(...levels), M);
    for (let L = 0; L <= M; L++) {
      const t = tileCount(g, L);
      assert.equal(readdirSync(join(dir, 'out_files', String(L))).length, t.cols * t.rows, `level ${L} tile count`);
      for (let r = 0; r < t.rows; r++) for (let c = 0; c < t.cols; c++) {
        const { data, info } = await sharp(join(dir, 'out_files', String(L), `${c}_${r}.png`)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
        const rect = tileRect(g, L, c, r);
        assert.deepEqual([info.width, info.height], [rect.w, rect.h], `tile ${L}/${c}_${r} size`);
        const mine = await sampler.region(L, rect.x, rect.y, rect.w, rect.h);
        assert.ok(Buffer.from(mine.data).equals(data), `tile ${L}/${c}_${r} pixels differ`);
      }
    }
  });
}
