/** The lazy engine with the committed fixture model: faithful, order-free, lazy, bounded. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Model, jpegLevel } from '../lib/engine/model.js';
import { Render } from '../lib/engine/render.js';
import { MemoryBlockStore } from '../lib/engine/blockstore.js';
import { KVStore } from '../lib/engine/kvstore.js';
import { blockNoise } from '../lib/engine/rng.js';
import { upsampleRegion } from '../lib/engine/bicubic.js';
import { thumbnail } from '../lib/engine/thumb.js';
import { FIXTURE, loadRef, maxAbsDiff } from './helpers.js';
import type { RGBImage } from '../lib/tiles/image.js';

const model = await Model.load(FIXTURE + '.json', { threads: 1 });
const ref = loadRef();
const [R, C] = ref.idx.grid as [number, number];
const lrArr = ref.get('image.lr_uint8');
const lrImg: RGBImage = { width: lrArr.shape[1], height: lrArr.shape[0], data: Uint8Array.from(lrArr.data) };

function render(opts: Partial<ConstructorParameters<typeof Render>[0]> = {}) {
  return new Render({ model, image: lrImg, scale: 4, seed: 42, batch: 16, kvBytes: 64 << 20, store: new MemoryBlockStore(), ...opts });
}
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
async function full(r: Render) { return (await r.region(0, 0, r.width, r.height)).data; }

test('rng reproduces model/infdit/sample.py', () => {
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

test('onnxruntime-node reproduces the PyTorch block step through the layer graphs (tolerance 1e-4)', async () => {
  const g = (k: string) => ref.get('step.' + k).data;     // a fresh copy each time: feeds move to the model thread
  const b = 3, L = model.layers, KF = model.kvFloats, H = model.manifest.heads, TD = KF / (2 * H);
  const kvNbAll = g('kv_nb');                              // (b, 3, L, 2, h, T, dh): all layers, as one evaluation
  // k4/v4 (b, h, 4T, dh): the block's own layer-l K/V in slot 0, the three neighbours' after it
  const slotsAt = (own: Float32Array, l: number) => {
    const k4 = new Float32Array(b * 2 * KF), v4 = new Float32Array(b * 2 * KF);
    for (let i = 0; i < b; i++) for (let s = 0; s < 4; s++) {
      const src = s === 0 ? own.subarray(i * KF, (i + 1) * KF) : kvNbAll.subarray(((i * 3 + s - 1) * L + l) * KF, ((i * 3 + s - 1) * L + l + 1) * KF);
      for (let hd = 0; hd < H; hd++) {
        k4.set(src.subarray(hd * TD, (hd + 1) * TD), ((i * H + hd) * 4 + s) * TD);
        v4.set(src.subarray((H + hd) * TD, (H + hd + 1) * TD), ((i * H + hd) * 4 + s) * TD);
      }
    }
    return { k4, v4 };
  };
  let r = await model.run(0, b, { x: g('x'), up: g('up'), sigma: g('sigma'), pos: g('pos') });
  let h = r.out.h, kv = r.out.kv as Float32Array;
  const cond = r.out.cond, kvs = [kv.slice()];
  for (let l = 0; l < L; l++) {
    r = await model.run(l + 1, b, {
      h, cond: cond.slice(), pos: g('pos'), ...slotsAt(kv, l), present: g('present'),
      ...(l === 0 ? { lr_ctx: g('lr_ctx') } : {}), ...(l === L - 1 ? { x: g('x'), up: g('up'), sigma: g('sigma') } : {}),
    });
    if (l < L - 1) { h = r.out.h_next; kv = r.out.kv_next as Float32Array; kvs.push(kv.slice()); }
  }
  assert.ok(maxAbsDiff(r.out.denoised, g('denoised')) < 1e-4, `denoised diff ${maxAbsDiff(r.out.denoised, g('denoised'))}`);
  const want = g('kv');                                    // (b, L, 2, h, T, dh)
  for (let i = 0; i < b; i++) for (let l = 0; l < L; l++) {
    const d = maxAbsDiff(kvs[l].subarray(i * KF, (i + 1) * KF), want.subarray((i * L + l) * KF, (i * L + l + 1) * KF));
    assert.ok(d < 1e-4, `kv of block ${i}, layer ${l}: diff ${d}`);
  }
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

test('model workers: two model threads of one onnxruntime thread each, batches side by side, give the single thread\'s bytes', async () => {
  const base = hash(await full(render({ preset: 'detail' })));
  const pool = await Model.load(FIXTURE + '.json', { threads: 2, workers: 2 });
  try {
    assert.equal(pool.parallel, 2);
    for (const batch of [1, 4]) {
      const r = render({ model: pool, preset: 'detail', batch });
      // a raster render, then requests in a random order with a small cache (reruns), as a viewer makes them
      assert.equal(hash(await full(r)), base, `batch ${batch}, raster`);
      const r2 = render({ model: pool, preset: 'detail', batch, kvBytes: 3 * model.kvFloats * 4 });
      await Promise.all([[2, 4], [0, 3], [1, 0], [2, 1]].map(b => r2.last.ensure([b as [number, number]])));
      assert.equal(hash(await full(r2)), base, `batch ${batch}, concurrent requests`);
    }
    const each = pool.callsEach;
    assert.ok(each.every(n => n > 10), `calls per model thread ${each}: the batches were not spread`);
  } finally { await pool.close(); }
});

/** The cone, computed independently of the engine: a block wanted at level λ = n·(L+1)+k needs
 *  its top/left/top-left neighbours at (n, k-1), or at (n-1, L-1) when k = 0. All nodes "r,c,level". */
function cone(targets: [number, number][], N: number, L: number, R: number, C: number): Set<string> {
  const S = L + 1, need = new Map<string, number>();
  const work = targets.map(([r, c]) => [r, c, N * S - 1]);
  while (work.length) {
    const [r, c, l] = work.pop()!;
    if ((need.get(`${r},${c}`) ?? -1) >= l) continue;
    need.set(`${r},${c}`, l);
    const d = l % S >= 1 ? l - 1 : l - 2;
    if (d >= 0) for (const [dr, dc] of [[-1, 0], [0, -1], [-1, -1]]) if (r + dr >= 0 && c + dc >= 0 && r + dr < R && c + dc < C) work.push([r + dr, c + dc, d]);
  }
  const out = new Set<string>();
  for (const [k, l] of need) for (let v = 0; v <= l; v++) out.add(`${k},${v}`);
  return out;
}

// 8×12 blocks: wide enough that a far block's cone (fidelity: 3 blocks up/left) is not its rectangle
const wide: RGBImage = { width: 96, height: 64, data: Uint8Array.from({ length: 96 * 64 * 3 }, (_, i) => 128 + Math.round(90 * Math.sin(i / 7) * Math.cos(i / 301))) };
const wideRender = (o: Partial<ConstructorParameters<typeof Render>[0]> = {}) =>
  new Render({ model, image: wide, scale: 4, seed: 3, batch: 8, kvBytes: 64 << 20, store: new MemoryBlockStore(), ...o });
const wideFull: Record<string, Render> = {};
async function wideBlock(preset: string, r: number, c: number) {
  if (!wideFull[preset]) { wideFull[preset] = wideRender({ preset }); await full(wideFull[preset]); }
  return hash(wideFull[preset].last.read(r, c));
}

test('cone: a far block alone runs exactly its cone (not its rectangle) and gives the raster render\'s bytes', async () => {
  const L = model.layers;
  for (const preset of ['fidelity', 'detail']) {
    const r = wideRender({ preset }), s = r.last;
    s.nodeLog = [];
    await s.ensure([[7, 11]]);
    const want = cone([[7, 11]], s.N, L, s.R, s.C);
    assert.equal(s.nodeLog.length, want.size, `${preset}: a node ran twice or the count is off`);
    assert.deepEqual(new Set(s.nodeLog), want, preset);
    if (preset === 'fidelity') {
      // the closed form: a block d steps away runs levels 0 … L-d, i.e. L-d+1 nodes; 2d+1 blocks lie d steps away
      let formula = 0;
      for (let d = 0; d <= L; d++) formula += (2 * d + 1) * (L - d + 1);
      assert.equal(want.size, formula);
      assert.ok(new Set(s.nodeLog.map(k => k.split(',').slice(0, 2).join())).size < 8 * 12 / 4, 'the cone touched the rectangle');
    }
    assert.equal(hash(s.read(7, 11)), await wideBlock(preset, 7, 11), `${preset}: bytes differ from the raster render`);
  }
});

test('cone: partial depth is reused (a block first needed at depth 2, later in full)', async () => {
  const L = model.layers;
  for (const kvBytes of [64 << 20, 1]) {          // with a 1-byte cache the partial states are gone: recomputed, same bytes
    const r = wideRender({ preset: 'fidelity', kvBytes }), s = r.last;
    s.nodeLog = [];
    await s.ensure([[7, 11]]);
    const first = new Set(s.nodeLog);
    assert.ok(first.has(`6,10,${L - 1}`) && !first.has(`6,10,${L}`), '(6,10) was needed to depth L-1 only');
    s.nodeLog = [];
    await s.ensure([[6, 10]]);
    if (kvBytes > 1) {
      const want = new Set([...cone([[7, 11], [6, 10]], 1, L, s.R, s.C)].filter(k => !first.has(k)));
      assert.deepEqual(new Set(s.nodeLog), want, 'the second request ran more than the depth it lacked');
      assert.equal(s.nodeLog.length, want.size);
    }
    assert.equal(hash(s.read(6, 10)), await wideBlock('fidelity', 6, 10));
    assert.equal(hash(s.read(7, 11)), await wideBlock('fidelity', 7, 11));
  }
});

test('memory: live state during a raster render is a band along the wavefront, not the area', async () => {
  for (const preset of ['fidelity', 'detail']) {
    const img: RGBImage = { width: 320, height: 64, data: new Uint8Array(320 * 64 * 3).map((_, i) => (i * 37) % 251) };
    const r = new Render({ model, image: img, scale: 4, seed: 1, preset, batch: 8, kvBytes: 1 << 30, store: new MemoryBlockStore() });
    await full(r);
    const s = r.last, per = model.kvFloats * 4 + (model.hFloats + model.manifest.config.dim) * 4;   // one K/V + one hidden state
    const entries = r.kv.highWater / per, area = s.R * s.C * s.N * s.S;
    // each block in flight holds about one K/V and one hidden state; the band is ~S·N diagonals deep at most
    const bound = 2 * s.S * s.N * Math.min(s.R, s.C) + 4 * s.R;
    assert.ok(entries <= bound && entries < area / 4, `${preset}: high water ${entries.toFixed(0)} states > bound ${bound} (area ${area})`);
    assert.equal(r.kv.bytes, 0, `${preset}: state left alive after a full render`);
  }
});

test('the state store bounds pinned and kept entries together: pinning pushes the oldest kept out', () => {
  const s = new KVStore(1000);
  s.keep('a', new Float32Array(100)); s.keep('b', new Float32Array(100));   // 800 bytes kept
  s.pin('c', new Float32Array(100));                                        // + 400 pinned: 'a' goes
  assert.deepEqual([s.has('a'), s.has('b'), s.has('c'), s.bytes], [false, true, true, 800]);
  s.pin('d', new Float32Array(200));                                        // pinned alone past the bound: kept ones all go, pinned stay
  assert.deepEqual([s.has('b'), s.has('c'), s.has('d'), s.bytes], [false, true, true, 1200]);
});

test('coalescing: concurrent overlapping requests run each node once', async () => {
  const r = render({ preset: 'detail' });
  r.last.nodeLog = [];
  await Promise.all([r.last.ensure([[2, 3]]), r.last.ensure([[1, 4]]), r.last.ensure([[2, 4]])]);
  const want = cone([[2, 3], [1, 4], [2, 4]], r.last.N, model.layers, R, C);
  assert.equal(r.last.nodeLog.length, want.size);
  assert.deepEqual(new Set(r.last.nodeLog), want);
});

test('cancellation: an aborted request stops costing work, done work is kept', async () => {
  const r = render({ preset: 'detail', batch: 1 });
  const total = cone([[R - 1, C - 1]], r.last.N, model.layers, R, C).size;
  r.last.nodeLog = [];
  const ac = new AbortController();
  const p = r.last.ensure([[R - 1, C - 1]], { signal: ac.signal });
  setTimeout(() => ac.abort(), 20);
  await assert.rejects(p, /cancelled/);
  await new Promise(res => setTimeout(res, 50));
  const ran = r.last.nodeLog.length;
  assert.ok(ran < total, `ran ${ran} of ${total} nodes after abort`);
  await new Promise(res => setTimeout(res, 50));
  assert.equal(r.last.nodeLog.length, ran, 'work continued after the abort');
  await r.last.ensure([[R - 1, C - 1]]);
  assert.equal(new Set(r.last.nodeLog).size, r.last.nodeLog.length, 'work done before the abort was redone');
});

test('priority: viewer work overtakes background fill', async () => {
  const r = render({ preset: 'detail', batch: 2 });
  const all: [number, number][] = [];
  for (let i = 0; i < R; i++) for (let j = 0; j < C; j++) all.push([i, j]);
  const total = cone(all, r.last.N, model.layers, R, C).size;
  r.last.nodeLog = [];
  const bg = r.last.ensure(all, { priority: 0 });
  let viewerDoneAt = -1;
  await new Promise(res => setTimeout(res, 10));
  const fg = r.last.ensure([[0, 0]], { priority: 10 }).then(() => { viewerDoneAt = r.last.nodeLog!.length; });
  await Promise.all([bg, fg]);
  assert.ok(viewerDoneAt > 0 && viewerDoneAt < total / 2, `viewer block finished after ${viewerDoneAt} of ${total} nodes`);
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
  const gm = await Model.load(FIXTURE.replace(/tiny$/, 'tiny-global') + '.json', { threads: 1 });
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


test('the JPEG condition: a render told quality 75 equals PyTorch; told none, it differs; stage 2 is told none', async () => {
  const jm = await Model.load(FIXTURE.replace(/tiny$/, 'tiny-jpeg') + '.json', { threads: 1 });
  assert.ok(jm.manifest.jpeg.enabled);
  assert.equal(jpegLevel(75), ref.get('jpeg.jq').data[0]);
  const mk = (jpegQuality: number, preset = 'fidelity', scale = 4) =>
    new Render({ model: jm, image: lrImg, scale, seed: 42, preset, batch: 4, kvBytes: 1 << 26, store: new MemoryBlockStore(), jpegQuality });
  for (const preset of ['fidelity', 'detail']) {
    const out = await full(mk(75, preset));
    const w = ref.get('jpeg.image.' + preset), [, H, W] = w.shape;
    let worst = 0;
    for (let i = 0; i < H * W; i++) for (let c = 0; c < 3; c++)
      worst = Math.max(worst, Math.abs(out[i * 3 + c] - Math.min(255, Math.max(0, (w.data[c * H * W + i] + 1) * 127.5))));
    assert.ok(worst <= 0.51 + 1e-3, `${preset}: worst pixel diff ${worst}`);
  }
  const told = await full(mk(75)), none = await full(mk(0));
  let moved = 0;
  for (let i = 0; i < told.length; i++) moved = Math.max(moved, Math.abs(told[i] - none[i]));
  assert.ok(moved >= 2, `quality 75 and no JPEG gave outputs within ${moved} of each other: the condition did not reach the graph`);
  const r16 = mk(75, 'fidelity', 16);
  assert.deepEqual(r16.stages.map(s => s.o.jq), [0.25, 0]);
});

test('pooled neighbours (kv_pool 2): a render equals PyTorch, in any order and batch, and pooling changes the output', async () => {
  const pm = await Model.load(FIXTURE.replace(/tiny$/, 'tiny-pool') + '.json', { threads: 1 });
  assert.equal(pm.manifest.config.kv_pool, 2);
  assert.equal(pm.manifest.attention?.block_attention, 'plain');
  const mk = (preset: string, batch = 4) =>
    new Render({ model: pm, image: lrImg, scale: 4, seed: 42, preset, batch, kvBytes: 1 << 26, store: new MemoryBlockStore() });
  for (const preset of ['fidelity', 'detail']) {
    const out = await full(mk(preset));
    const w = ref.get('pool.image.' + preset), [, H, W] = w.shape;
    let worst = 0;
    for (let i = 0; i < H * W; i++) for (let c = 0; c < 3; c++)
      worst = Math.max(worst, Math.abs(out[i * 3 + c] - Math.min(255, Math.max(0, (w.data[c * H * W + i] + 1) * 127.5))));
    assert.ok(worst <= 0.51 + 1e-3, `${preset}: worst pixel diff ${worst}`);
  }
  // the same bytes block by block, bottom-right first, one block a call
  const whole = hash(await full(mk('detail')));
  const r = mk('detail', 1);
  for (let i = R - 1; i >= 0; i--) for (let j = C - 1; j >= 0; j--) await r.last.ensure([[i, j]]);
  assert.equal(hash(await full(r)), whole);
  // and the pooled graphs are not the unpooled ones: PyTorch's unpooled twin of these weights differs
  const w = ref.get('pool.image.fidelity'), u = ref.get('pool.unpooled.fidelity');
  assert.ok(maxAbsDiff(w.data, u.data) > 1e-3, 'pooling the neighbours changed nothing');
});
