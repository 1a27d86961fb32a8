/** The lazy engine with the committed fixture model: faithful, order-free, lazy, bounded. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Model } from '../lib/model.js';
import { Render } from '../lib/render.js';
import { MemoryBlockStore } from '../lib/blockstore.js';
import { blockNoise } from '../lib/rng.js';
import { upsampleRegion } from '../lib/bicubic.js';
import { thumbnail } from '../lib/thumb.js';
import { FIXTURE, loadRef, maxAbsDiff } from './helpers.js';
import type { RGBImage } from '../lib/image.js';

const model = await Model.load(FIXTURE + '.onnx', { threads: 1 });
const ref = loadRef();
const [R, C] = ref.idx.grid as [number, number];
const lrArr = ref.get('image.lr_uint8');
const lrImg: RGBImage = { width: lrArr.shape[1], height: lrArr.shape[0], data: Uint8Array.from(lrArr.data) };

function render(opts: Partial<ConstructorParameters<typeof Render>[0]> = {}) {
  return new Render({ model, image: lrImg, scale: 4, seed: 42, batch: 16, kvBytes: 64 << 20, store: new MemoryBlockStore(), ...opts });
}
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
async function full(r: Render) { return (await r.region(0, 0, r.width, r.height)).data; }

test('rng reproduces model/sample.py', () => {
  assert.ok(maxAbsDiff(blockNoise(7, 1, 2, 3, 0, 16), ref.get('noise.7.1.2.3.0').data) < 1e-6);
});

test('bicubic upsample reproduces PyTorch', () => {
  const up = ref.get('image.up');             // (3, H, W)
  const [, H, W] = up.shape;
  const src = new Float32Array(3 * lrImg.height * lrImg.width);
  for (let i = 0; i < lrImg.height * lrImg.width; i++) for (let c = 0; c < 3; c++) src[c * lrImg.height * lrImg.width + i] = lrImg.data[i * 3 + c] / 127.5 - 1;
  const mine = upsampleRegion(src, 3, lrImg.height, lrImg.width, 4, 0, 0, H, W);
  assert.ok(maxAbsDiff(mine, up.data) < 1e-5, `max diff ${maxAbsDiff(mine, up.data)}`);
});

test('onnxruntime-node reproduces the PyTorch block step (tolerance 1e-4)', async () => {
  const g = (k: string) => ref.get('step.' + k).data;
  const out = await model.run(3, g('x'), g('up'), g('lr_ctx'), g('sigma'), g('pos'), g('kv_nb'), g('present'));
  assert.ok(maxAbsDiff(out.denoised, g('denoised')) < 1e-4, `denoised diff ${maxAbsDiff(out.denoised, g('denoised'))}`);
  assert.ok(maxAbsDiff(out.kv, g('kv')) < 1e-4, `kv diff ${maxAbsDiff(out.kv, g('kv'))}`);
});

for (const preset of ['fidelity', 'detail']) {
  test(`full render equals PyTorch whole-image sampling (${preset})`, async () => {
    const r = render({ preset });
    const out = await full(r);
    const want = ref.get('image.' + preset);     // (3,H,W) float in [-1,1]
    const [, H, W] = want.shape;
    assert.equal(r.width, W); assert.equal(r.height, H);
    let worst = 0;
    for (let i = 0; i < H * W; i++) for (let c = 0; c < 3; c++) {
      const v = Math.min(255, Math.max(0, (want.data[c * H * W + i] + 1) * 127.5));
      worst = Math.max(worst, Math.abs(out[i * 3 + c] - v));
    }
    assert.ok(worst <= 0.51 + 1e-3, `worst pixel diff ${worst} (expected only rounding)`);
  });
}

test('order-free: raster, random orders, batch 1/3/16, constant eviction give identical bytes', async () => {
  const base = hash(await full(render({ preset: 'detail' })));
  const rng = (s: number) => () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  for (const batch of [1, 3, 16]) {
    for (const seed of [1, 2]) {
      const r = render({ preset: 'detail', batch, kvBytes: seed === 2 ? 1 : 64 << 20 });  // 1 byte: every entry evicted
      const blocks: [number, number][] = [];
      for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) blocks.push([i, j]);
      const rand = rng(seed * 100 + batch);
      blocks.sort(() => rand() - 0.5);
      for (const b of blocks) await r.last.ensure([b]);
      assert.equal(hash(await full(r)), base, `batch ${batch}, order ${seed}`);
      if (seed === 2) assert.ok(r.last.stats.reruns > 0 && r.kv.evictions >= 0, 'the tiny cache never forced a recomputation');
    }
  }
});

test('closure: one block computes exactly its upper-left rectangle', async () => {
  const r = render({ preset: 'detail' });
  r.last.nodeLog = [];
  await r.last.ensure([[1, 2]]);
  const N = r.plan.count;
  assert.equal(r.last.nodeLog.length, 2 * 3 * N);
  assert.ok(r.last.nodeLog.every(k => { const [a, b] = k.split(',').map(Number); return a <= 1 && b <= 2; }));
  assert.equal(new Set(r.last.nodeLog).size, r.last.nodeLog.length, 'a node ran twice');
  // a later request reuses the cached K/V: only the new blocks' nodes run
  r.last.nodeLog = [];
  await r.last.ensure([[2, 2]]);
  assert.equal(r.last.nodeLog.length, 3 * N);
});

test('memory: K/V high-water mark stays within the frontier bound', async () => {
  const img: RGBImage = { width: 80, height: 80, data: new Uint8Array(80 * 80 * 3).map((_, i) => (i * 37) % 251) };
  const r = new Render({ model, image: img, scale: 4, seed: 1, preset: 'detail', batch: 64, kvBytes: 1 << 30, store: new MemoryBlockStore() });
  await r.last.ensure([[r.last.R - 1, r.last.C - 1]]);
  const per = model.kvFloats * 4, N = r.plan.count, { R: rr, C: cc } = r.last;
  const entries = r.kv.highWater / per;
  // live K/V is the staircase edge: at most ~2 anti-diagonals per evaluation, not the area
  assert.ok(entries <= 2 * N * (rr + cc), `high water ${entries} entries > bound ${2 * N * (rr + cc)} (area ${rr * cc * N})`);
  assert.equal(r.kv.bytes, 0, 'K/V left alive after a full render');
});

test('coalescing: concurrent overlapping requests run each node once', async () => {
  const r = render({ preset: 'detail' });
  r.last.nodeLog = [];
  await Promise.all([r.last.ensure([[2, 3]]), r.last.ensure([[1, 4]]), r.last.ensure([[2, 4]])]);
  assert.equal(r.last.nodeLog.length, R * C * r.plan.count);
  assert.equal(new Set(r.last.nodeLog).size, r.last.nodeLog.length);
});

test('cancellation: an aborted request stops costing work, done work is kept', async () => {
  const r = render({ preset: 'detail', batch: 1 });
  r.last.nodeLog = [];
  const ac = new AbortController();
  const p = r.last.ensure([[R - 1, C - 1]], { signal: ac.signal });
  setImmediate(() => ac.abort());
  await assert.rejects(p, /cancelled/);
  await new Promise(res => setTimeout(res, 50));
  const ran = r.last.nodeLog.length;
  assert.ok(ran < R * C * r.plan.count, `ran ${ran} nodes after abort`);
  await new Promise(res => setTimeout(res, 50));
  assert.equal(r.last.nodeLog.length, ran, 'work continued after the abort');
  await r.last.ensure([[R - 1, C - 1]]);
  assert.equal(new Set(r.last.nodeLog).size, r.last.nodeLog.length, 'work done before the abort was redone');
});

test('priority: viewer work overtakes background fill', async () => {
  const r = render({ preset: 'detail', batch: 2 });
  r.last.nodeLog = [];
  const bg = r.last.ensure([[R - 1, C - 1]], { priority: 0 });
  let viewerDoneAt = -1;
  await new Promise(res => setImmediate(res));
  const fg = r.last.ensure([[0, 0]], { priority: 10 }).then(() => { viewerDoneAt = r.last.nodeLog!.length; });
  await Promise.all([bg, fg]);
  assert.ok(viewerDoneAt > 0 && viewerDoneAt < R * C * r.plan.count / 2, `viewer block finished after ${viewerDoneAt} nodes`);
});

test('cascade: 16× equals stage 1 then stage 2 run separately', async () => {
  const small: RGBImage = { width: 12, height: 8, data: Uint8Array.from({ length: 12 * 8 * 3 }, (_, i) => (i * 53) % 256) };
  const r16 = new Render({ model, image: small, scale: 16, seed: 5, batch: 8, kvBytes: 1 << 26, store: new MemoryBlockStore() });
  const out16 = await r16.region(0, 0, r16.width, r16.height);
  const r4 = new Render({ model, image: small, scale: 4, seed: 5, batch: 8, kvBytes: 1 << 26, store: new MemoryBlockStore() });
  const mid = await r4.region(0, 0, r4.width, r4.height);
  // stage 2 on its own: same seed, but the noise is keyed by stage 2
  const r2 = new Render({ model, image: mid, scale: 4, seed: 5, batch: 8, kvBytes: 1 << 26, store: new MemoryBlockStore() });
  (r2.stages[0] as any).o.stage = 2;
  const out2 = await r2.region(0, 0, r2.width, r2.height);
  assert.equal(r16.width, 12 * 16);
  assert.equal(hash(out16.data), hash(out2.data));
  // 8× is 16× halved with dzsave's rule
  const r8 = new Render({ model, image: small, scale: 8, seed: 5, batch: 8, kvBytes: 1 << 26, store: new MemoryBlockStore() });
  assert.equal(r8.width, 96);
  await r8.region(0, 0, r8.width, r8.height);
});

test('stress: random concurrent and cancelled requests, cache sizes and batches never stall and never change a byte', async () => {
  const base = hash(await full(render({ preset: 'detail' })));
  let s = 99;
  const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const kvBlock = model.kvFloats * 4;
  for (let trial = 0; trial < 24; trial++) {
    const kvBytes = [1, kvBlock, 3 * kvBlock, 64 << 20][trial % 4];
    const r = render({ preset: 'detail', batch: 1 + Math.floor(rand() * 8), kvBytes });
    const waves = [];
    for (let k = 0; k < 4; k++) {
      const reqs = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => {
        const ac = new AbortController();
        const p = r.last.ensure([[Math.floor(rand() * R), Math.floor(rand() * C)]], { priority: Math.floor(rand() * 3), signal: ac.signal });
        if (rand() < 0.3) setTimeout(() => ac.abort(), Math.floor(rand() * 5));   // a viewer panned away
        return p.catch(e => { if (e.name !== 'AbortError') throw e; });
      });
      waves.push(Promise.all(reqs));
      if (rand() < 0.5) await waves[waves.length - 1];
    }
    const timeout = new Promise((_, rej) => setTimeout(() => rej(new Error(`trial ${trial} stalled`)), 10000).unref());
    await Promise.race([Promise.all(waves), timeout]);
    assert.equal(hash(await full(r)), base, `trial ${trial}`);
  }
});

test('global conditioning: the thumbnail and a full render equal PyTorch', async () => {
  const gm = await Model.load(FIXTURE.replace(/tiny$/, 'tiny-global') + '.onnx', { threads: 1 });
  assert.ok(gm.manifest.global.enabled);
  const want = ref.get('global.thumb');
  assert.ok(maxAbsDiff(thumbnail(lrImg, gm.manifest.global.thumb!), want.data) < 1e-5);
  for (const preset of ['fidelity', 'detail']) {
    const r = new Render({ model: gm, image: lrImg, scale: 4, seed: 42, preset, batch: 4, kvBytes: 1 << 26, store: new MemoryBlockStore() });
    const out = await full(r);
    const w = ref.get('global.image.' + preset), [, H, W] = w.shape;
    let worst = 0;
    for (let i = 0; i < H * W; i++) for (let c = 0; c < 3; c++)
      worst = Math.max(worst, Math.abs(out[i * 3 + c] - Math.min(255, Math.max(0, (w.data[c * H * W + i] + 1) * 127.5))));
    assert.ok(worst <= 0.51 + 1e-3, `${preset}: worst pixel diff ${worst}`);
  }
});

