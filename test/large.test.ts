/** Gigapixel sizes with synthetic inputs made here (nothing large is committed). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import sharp from 'sharp';
import { openLR } from '../lib/tiles/lrfile.js';
import { ROOT } from './helpers.js';

test('a 50 Mpx upload is accepted with bounded memory, kept on disk, and served from there', { timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'infdit-large-'));
  try {
    const W = 8000, H = 6250, input = join(dir, 'big.jpg');
    await sharp({ create: { width: W, height: H, channels: 3, background: '#808080', noise: { type: 'gaussian', mean: 128, sigma: 40 } } }).jpeg({ quality: 70 }).toFile(input);
    const out = execFileSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test/large-child.ts'), join(dir, 'data'), input], { cwd: ROOT, encoding: 'utf8', timeout: 170_000 });
    const r = JSON.parse(out.trim().split('\n').pop()!);
    console.log(`50 Mpx upload: added in ${r.addMs} ms, far top-level tile of ${r.width}×${r.height} in ${r.farMs} ms, peak RSS ${Math.round(r.before)} → ${Math.round(r.after)} MiB`);
    assert.deepEqual([r.meta.lrWidth, r.meta.lrHeight, r.width, r.height], [W, H, 4 * W, 4 * H]);
    // decoded whole, the photo alone is 150 MB (and sharp's buffer for it as much again); measured
    // here +60-70 MiB (libvips' strip buffers), once +112 before the halving reused its buffers
    assert.ok(r.after - r.before < 120, `peak RSS grew by ${Math.round(r.after - r.before)} MiB while adding and serving a 50 Mpx upload`);
    assert.ok(r.far > 0 && r.lrTile > 0 && r.preview > 0);
    // the pixels on disk are the photo's, decoded as a whole-image decode would
    const lr = openLR(join(dir, 'data/images', r.meta.id, 'lr'))!;
    const { data } = await sharp(input, { limitInputPixels: false }).extract({ left: W - 300, top: H - 200, width: 300, height: 200 }).raw().toBuffer({ resolveWithObject: true });
    assert.ok(Buffer.from(lr.levels[0].regionSync(W - 300, H - 200, 300, 200)).equals(data));
    assert.deepEqual(lr.levels.map(l => l.width).slice(0, 4), [8000, 4000, 2000, 1000]);
    assert.equal(readFileSync(join(dir, 'data/images', r.meta.id, 'source')).length > 0, true);
  } finally { rmSync(dir, { recursive: true, force: true }); }
});
