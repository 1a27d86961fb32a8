/**
 * The released model's JPEG restorer (model/infdit/restore.py, lib/engine/restore.ts): the engine's lazy,
 * tiled restoration equals PyTorch's; any order, region or cache size gives the same bytes; only a
 * JPEG's stage 1 goes through it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { Model, jpegLevel, validateManifest } from '../lib/engine/model.js';
import { RestoredLR, restorerReach, tilesUnder } from '../lib/engine/restore.js';
import { Render, ImageLR } from '../lib/engine/render.js';
import { MemoryPixels, cropClamped, type RGBImage } from '../lib/engine/pixels.js';
import { MemoryBlockStore } from '../lib/engine/blockstore.js';
import { ROOT } from './helpers.js';

const RELEASE = join(ROOT, 'model/release/infdit-s4.json');
const FIX = join(ROOT, 'test/fixtures');
let model: Model, img: RGBImage, ref: Uint8Array, quality = 0;

before(async () => {
  model = await Model.load(RELEASE, { threads: 2 });
  // written by model/infdit/restore.py fixture: a JPEG's decoded pixels, and PyTorch's restore_image of them
  quality = JSON.parse(readFileSync(join(FIX, 'restore-ref.json'), 'utf8')).quality;
  const { data, info } = await sharp(join(FIX, 'restore-in.png')).raw().toBuffer({ resolveWithObject: true });
  img = { width: info.width, height: info.height, data: new Uint8Array(data) };
  ref = new Uint8Array(await sharp(join(FIX, 'restore-ref.png')).raw().toBuffer());
});
after(() => model.close());

test('the released model has a restorer, and its tiled restoration equals PyTorch\'s', async () => {
  const r = model.manifest.restorer!;
  assert.ok(r.enabled && r.tile > 0 && r.halo > 0);
  const out = await new RestoredLR(model, new MemoryPixels(img), jpegLevel(quality)).region(0, 0, img.width, img.height);
  let off = 0, worst = 0, moved = 0;
  for (let i = 0; i < out.length; i++) {
    const d = Math.abs(out[i] - ref[i]);
    worst = Math.max(worst, d); if (d) off++;
    moved += Math.abs(out[i] - img.data[i]);
  }
  // onnxruntime and PyTorch differ in float rounding only: a value near .5 may round the other way
  assert.ok(worst <= 1 && off / out.length < 1e-3, `worst ${worst}, ${off} of ${out.length} values differ`);
  assert.ok(moved / out.length > 0.3, `the restorer changed the JPEG by ${moved / out.length} per value on average: it did nothing`);
});

test('any region, order and cache size give the same bytes; a tile is computed once unless evicted', async () => {
  const full = new RestoredLR(model, new MemoryPixels(img), jpegLevel(quality));
  const whole = await full.region(0, 0, img.width, img.height);
  // the release's grid starts `offset` px above and left of the image: its first tile border is at T - offset
  const T = model.manifest.restorer!.tile, off = model.manifest.restorer!.offset ?? 0, E = T - off;
  assert.ok(off > 0, 'the released restorer\'s grid is shifted (model/infdit/restore.py OFFSET)');
  const tiles = (Math.floor((img.width - 1 + off) / T) + 1) * (Math.floor((img.height - 1 + off) / T) + 1);
  assert.equal(full.computed, tiles);
  await full.region(3, 5, 40, 30);
  assert.equal(full.computed, tiles, 'a cached tile was computed again');
  // a cache of one tile: every tile evicted again and again, regions asked concurrently, some past the edges
  const small = new RestoredLR(model, new MemoryPixels(img), jpegLevel(quality), 1);
  const rects: [number, number, number, number][] = [[-7, -3, 60, 50], [E - 10, 0, 20, 20], [img.width - 30, img.height - 20, 50, 40], [5, E - 1, 3, 2], [0, 0, 1, 1], [E - 1, E - 1, 2, 2], [E + T - 1, 3, 2, 2]];
  const got = await Promise.all(rects.map(([x, y, w, h]) => small.region(x, y, w, h)));
  // then one after another, the other way round: now the tiles are evicted between requests
  for (const [x, y, w, h] of [...rects].reverse()) got.push(await small.region(x, y, w, h));
  [...rects, ...[...rects].reverse()].forEach(([x, y, w, h], i) =>
    assert.ok(Buffer.from(got[i]).equals(Buffer.from(cropClamped({ ...img, data: whole }, x, y, w, h))), `region ${[x, y, w, h]} differs`));
  assert.ok(small.computed > full.computed, 'the one-tile cache recomputed nothing');
});

test('what a queue job must carry: the raw LR under every tile a crop touches, windows included', () => {
  const r = model.manifest.restorer!, T = r.tile, H = r.halo;
  assert.deepEqual(tilesUnder(T - 1, 0, 2, 1, 1000, 1000, T), { c0: 0, c1: 1, r0: 0, r1: 0 });
  assert.deepEqual(restorerReach(T + 5, T + 5, 10, 10, 1000, 1000, T, H), { x: T - H, y: T - H, w: T + 2 * H, h: T + 2 * H });
  assert.deepEqual(restorerReach(0, 0, 10, 10, 50, 40, T, H), { x: 0, y: 0, w: 50, h: 40 }, 'clipped to the image');
  // on a grid starting 64 px above and left: tile c covers c·T − 64 …, its window H more each side
  assert.deepEqual(tilesUnder(T - 65, T - 64, 2, 1, 1000, 1000, T, 64), { c0: 0, c1: 1, r0: 1, r1: 1 });
  assert.deepEqual(restorerReach(T + 5, T + 5, 10, 10, 1000, 1000, T, H, 64), { x: T - 64 - H, y: T - 64 - H, w: T + 2 * H, h: T + 2 * H });
});

test('a render restores a JPEG\'s stage 1 only: not a PNG, not quality 100, not stage 2', async () => {
  const mk = (jpegQuality: number, scale = 4) =>
    new Render({ model, image: img, scale, seed: 1, batch: 4, kvBytes: 1 << 26, store: new MemoryBlockStore(), jpegQuality });
  assert.ok(mk(quality).stages[0].o.lr instanceof RestoredLR);
  assert.ok(mk(0).stages[0].o.lr instanceof ImageLR);
  assert.ok(mk(100).stages[0].o.lr instanceof ImageLR, 'quality 100 (level 0) is not restored');
  const r16 = mk(quality, 16);
  assert.ok(r16.stages[0].o.lr instanceof RestoredLR && !(r16.stages[1].o.lr instanceof RestoredLR));
  const jpeg = mk(quality), png = mk(0);
  assert.equal(png.restorer, undefined);
  const [a, b] = await Promise.all([jpeg.region(64, 64, 64, 64), png.region(64, 64, 64, 64)]);
  assert.ok(!Buffer.from(a.data).equals(Buffer.from(b.data)), 'the restored and the raw JPEG gave the same block');
  // what the server's status reports of it (engine.restorer): the tiles restored and their model-thread time
  assert.ok(jpeg.restorer === jpeg.stages[0].o.lr && jpeg.restorer.computed > 0 && jpeg.restorer.ms > 0);
});

test('a malformed restorer in a manifest is refused, naming the field', () => {
  const base = JSON.parse(readFileSync(RELEASE, 'utf8'));
  const edit = (f: (m: any) => void) => { const m = structuredClone(base); f(m); return () => validateManifest(m); };
  assert.throws(edit(m => { m.restorer.tile = 0; }), /"restorer" must be \{enabled: true, graph: "restore", tile/);
  assert.throws(edit(m => { m.restorer.halo = -1; }), /"restorer"/);
  assert.throws(edit(m => { m.restorer.offset = 63; }), /offset: even integer from 0 to below tile/);
  assert.throws(edit(m => { m.restorer.offset = m.restorer.tile; }), /offset/);
  edit(m => { delete m.restorer.offset; })();   // a manifest from before the offset: its grid at the corner
  // the release's graphs end restore, base (the base super-resolver, since 2026-12-07)
  assert.throws(edit(m => { m.graphs.splice(-2, 1); }), /"graphs" must list \[input,layer0,.*,layer7,restore,base\]/);
  assert.throws(edit(m => { delete m.restorer; }), /"graphs" must list \[input,layer0,.*,layer7,base\] in that order/);
  validateManifest(structuredClone(base));
});
