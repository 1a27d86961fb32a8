/** The base super-resolver (lib/engine/base.ts) with the committed fixture: equal to model/infdit/base.py's
 *  tiled reference, local (a region alone is the whole's), and, as the transformer's up(LR), order-free. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { Model, validateManifest, ModelError } from '../lib/engine/model.js';
import { BaseUp } from '../lib/engine/base.js';
import { Render, ImageLR } from '../lib/engine/render.js';
import { MemoryBlockStore } from '../lib/engine/blockstore.js';
import { MemoryPixels } from '../lib/engine/pixels.js';
import { ROOT, FIXTURE, maxAbsDiff } from './helpers.js';
import type { RGBImage } from '../lib/tiles/image.js';

const BASE = ROOT + '/test/fixtures/tiny-base';
const model = await Model.load(BASE + '.json', { threads: 1 });
const plain = await Model.load(FIXTURE + '.json', { threads: 1 });
const { data, info } = await sharp(BASE + '.lr.png').raw().toBuffer({ resolveWithObject: true });
const lr: RGBImage = { width: info.width, height: info.height, data: new Uint8Array(data) };
const ref = new Float32Array(readFileSync(BASE + '.ref.bin').buffer.slice(0));
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const W = lr.width * 4, H = lr.height * 4;

function crop(all: Float32Array, x0: number, y0: number, w: number, h: number) {
  const out = new Float32Array(3 * w * h);
  for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) out.set(all.subarray(c * W * H + (y0 + y) * W + x0, c * W * H + (y0 + y) * W + x0 + w), c * w * h + y * w);
  return out;
}

test('the base through onnxruntime-node equals model/infdit/base.py\'s tiled reference (tolerance 1e-5)', async () => {
  const b = new BaseUp(model, new ImageLR(new MemoryPixels(lr)));
  const all = await b.region(0, 0, W, H);
  assert.equal(all.length, ref.length);
  assert.ok(maxAbsDiff(all, ref) < 1e-5, `max diff ${maxAbsDiff(all, ref)}`);
  // the fixture's 52×44 LR is 2×2 tiles of 32 px, each computed once
  assert.equal(b.computed, 4);
});

test('the base is local: any region alone, in any order, with every tile evicted, equals the whole\'s pixels', async () => {
  const all = await new BaseUp(model, new ImageLR(new MemoryPixels(lr))).region(0, 0, W, H);
  const tiny = new BaseUp(model, new ImageLR(new MemoryPixels(lr)), 1);   // 1 byte: at most the floor of 4 tiles
  const rects: [number, number, number, number][] = [[150, 120, 32, 32], [0, 0, 7, 5], [120, 100, 20, 60], [60, 0, 100, 176], [0, 127, 208, 2]];
  for (const [x, y, w, h] of rects) {
    const got = await tiny.region(x, y, w, h);
    assert.equal(maxAbsDiff(got, crop(all, x, y, w, h)), 0, `region ${w}x${h}+${x}+${y}`);
  }
  // the grid's last column reaches past the image (2 tiles of 128 px for 208): past that is refused
  await assert.rejects(tiny.region(256, 0, 4, 4), /outside the tile grid/);
});

test('the base as up(LR): a render over it is order-free and is not the bicubic render', async () => {
  const render = (opts: Partial<ConstructorParameters<typeof Render>[0]> = {}) =>
    new Render({ model, image: lr, scale: 4, seed: 9, batch: 16, kvBytes: 64 << 20, store: new MemoryBlockStore(), ...opts });
  const full = async (r: Render) => hash((await r.region(0, 0, r.width, r.height)).data);
  const first = render();
  const want = await full(first);
  assert.ok(first.base && first.base.computed === 4, 'stage 1 made its base once per tile');
  const r = render({ batch: 3, kvBytes: 1, baseBytes: 1 });
  const R = Math.ceil(lr.height / 8), C = Math.ceil(lr.width / 8), blocks: [number, number][] = [];
  for (let i = R - 1; i >= 0; i--) for (let j = 0; j < C; j++) blocks.push([i, (j * 5) % C]);
  for (const b of blocks) await r.last.ensure([b]);
  assert.equal(await full(r), want, 'reverse order, batch 3, nothing cached');
  const bicubic = new Render({ model: plain, image: lr, scale: 4, seed: 9, batch: 16, kvBytes: 64 << 20, store: new MemoryBlockStore() });
  assert.notEqual(await full(bicubic), want, 'the same transformer over bicubic gave the same bytes: the base was not used');
});

test('the 16× cascade runs a base at each stage when the model was trained over it', async () => {
  const small: RGBImage = { width: 12, height: 8, data: Uint8Array.from({ length: 12 * 8 * 3 }, (_, i) => (i * 53) % 256) };
  const r16 = new Render({ model, image: small, scale: 16, seed: 5, batch: 8, kvBytes: 1 << 26, store: new MemoryBlockStore() });
  const a = await r16.region(0, 0, r16.width, r16.height);
  const again = new Render({ model, image: small, scale: 16, seed: 5, batch: 2, kvBytes: 1, store: new MemoryBlockStore() });
  assert.equal(hash((await again.region(0, 0, again.width, again.height)).data), hash(a.data));
  assert.ok((r16.stages[1] as any).o.base, 'stage 2 has no base');
});

test('a manifest\'s base and up are checked: bad fields are refused with the field named', () => {
  const m = JSON.parse(readFileSync(BASE + '.json', 'utf8'));
  assert.equal(validateManifest(structuredClone(m)).up, 'base');
  const bad = (f: (x: any) => void, re: RegExp) => { const x = structuredClone(m); f(x); assert.throws(() => validateManifest(x), (e: Error) => e instanceof ModelError && re.test(e.message)); };
  bad(x => { x.base.tile = 20; }, /manifest field "base" must be/);
  bad(x => { x.base.halo = 4; }, /manifest field "base" must be/);
  bad(x => { delete x.base; x.graphs.pop(); }, /manifest field "up" must be "bicubic", or "base" for a model with a base/);
  bad(x => { x.up = 'lanczos'; }, /manifest field "up"/);
  bad(x => { x.graphs.pop(); }, /manifest field "graphs" must list \[input,layer0,layer1,layer2,base\]/);
  const old = JSON.parse(readFileSync(FIXTURE + '.json', 'utf8'));
  assert.equal(validateManifest(old).up, 'bicubic', 'a manifest from before the base reads as bicubic');
});

test('in the model thread, a base window goes before the transformer batches queued with it', async () => {
  // six layer batches then one base window, posted at once: the window (a preview's pixels) must not wait
  // for all six (in arrival order it came last)
  const feeds = (gi: number, b: number) => Object.fromEntries(model.manifest.graphs[gi].inputs.map(s => {
    const n = s.shape.reduce<number>((a, v) => a * (v === 'b' ? b : (v as number)), 1);
    return [s.name, s.dtype === 'float16' ? new Uint16Array(n) : new Float32Array(n).fill(s.name === 'sigma' || s.name === 'present' ? 1 : 0)];
  }));
  const baseGi = model.manifest.graphs.findIndex(g => g.name === 'base'), done: string[] = [];
  const calls = Array.from({ length: 6 }, (_, i) => model.run(1, 64, feeds(1, 64)).then(() => { done.push(`layer batch ${i}`); }));
  calls.push(model.run(baseGi, 1, feeds(baseGi, 1)).then(() => { done.push('base'); }));
  await Promise.all(calls);
  assert.ok(done.indexOf('base') <= 2, `finished in the order ${done.join(', ')}`);
});

test('while a preview is made the render starts no transformer batch, and its bytes do not change', async () => {
  // the same model, its calls recorded in the order they are made (the real graphs run them)
  const calls: number[] = [];
  const spy = new Proxy(model, { get(t, k) {
    if (k === 'run') return (...a: Parameters<Model['run']>) => { calls.push(a[0]); return t.run(...a); };
    const v = Reflect.get(t, k, t);
    return typeof v === 'function' ? v.bind(t) : v;
  } });
  const render = (m: Model) => new Render({ model: m, image: lr, scale: 4, seed: 9, batch: 16, kvBytes: 64 << 20, store: new MemoryBlockStore() });
  const want = hash((await render(model).region(0, 0, W, H)).data);
  const r = render(spy);
  // a preview (base.pixels) holds the gate while it is made
  const preview = r.base!.pixels(0, 0, 8, 8);
  assert.ok(r.gate.busy);
  await preview;
  assert.ok(!r.gate.busy);
  // a preview that takes 300 ms (a JPEG's waits for its restorer tiles): the render asked meanwhile runs nothing
  let release!: () => void;
  const held = r.gate.during(() => new Promise<void>(res => { release = res; }));
  const before = calls.length, whole = r.region(0, 0, W, H);
  await new Promise(res => setTimeout(res, 300));
  assert.equal(calls.length, before, `the render called graphs ${calls.slice(before).join(',')} while a preview was being made`);
  release(); await held;
  assert.equal(hash((await whole).data), want);
  assert.equal(r.base!.computed, 4, 'a window was made twice');
});

// A JPEG-aware base (manifest base.jq) reads a JPEG upload's LR as it is, with the file's level; the fixture's reference
// is model/infdit/base.py's tiled output of tiny-base.lr.png at jpegLevel(60) = 0.4
const JQ = ROOT + '/test/fixtures/tiny-base-jq';
const jqModel = await Model.load(JQ + '.json', { threads: 1 });

test('a JPEG-aware base through onnxruntime-node equals base.py\'s reference at the file\'s level, and the level changes it', async () => {
  const jqRef = new Float32Array(readFileSync(JQ + '.ref.bin').buffer.slice(0));
  const at = (jq: number) => new BaseUp(jqModel, new ImageLR(new MemoryPixels(lr)), undefined, undefined, jq).region(0, 0, W, H);
  const got = await at(0.4);
  assert.ok(maxAbsDiff(got, jqRef) < 1e-5, `max diff ${maxAbsDiff(got, jqRef)}`);
  assert.ok(maxAbsDiff(await at(0), jqRef) > 0.05, 'level 0 gave the level-0.4 output: the graph ignores jq');
  // a base that is not JPEG-aware is never given a level; a level is a JPEG's, in [0, 1]
  assert.throws(() => new BaseUp(model, new ImageLR(new MemoryPixels(lr)), undefined, undefined, 0.4), /not JPEG-aware/);
  assert.throws(() => new BaseUp(jqModel, new ImageLR(new MemoryPixels(lr)), undefined, undefined, 2), /jq must be a JPEG level in \[0, 1\]/);
});

test('a render of a JPEG over a JPEG-aware base: stage 1\'s base reads the level, later stages none; order-free', async () => {
  const render = (q: number, opts: Partial<ConstructorParameters<typeof Render>[0]> = {}) =>
    new Render({ model: jqModel, image: lr, scale: 4, seed: 9, batch: 16, kvBytes: 64 << 20, store: new MemoryBlockStore(), jpegQuality: q, ...opts });
  const r16 = render(60, { scale: 16 });
  assert.deepEqual(r16.bases.map(b => b.jq), [0.4, 0], 'stage 1 reads the file\'s level, stage 2 (the model\'s own pixels) 0');
  assert.equal(r16.restorer, undefined);
  const full = async (x: Render) => hash((await x.region(0, 0, x.width, x.height)).data);
  const want = await full(render(60));
  assert.equal(await full(render(60, { batch: 3, kvBytes: 1, baseBytes: 1 })), want, 'batch 3, nothing cached');
  assert.notEqual(await full(render(0)), want, 'the same pixels as a PNG gave the JPEG\'s bytes: the level did not reach the base');
});

test('a JPEG-aware base\'s manifest is checked: jq is a boolean, such a model has no restorer, its graph takes jq', async () => {
  const m = JSON.parse(readFileSync(JQ + '.json', 'utf8'));
  assert.equal(validateManifest(structuredClone(m)).base!.jq, true);
  const bad = (f: (x: any) => void, re: RegExp) => { const x = structuredClone(m); f(x); assert.throws(() => validateManifest(x), (e: Error) => e instanceof ModelError && re.test(e.message)); };
  bad(x => { x.base.jq = 'yes'; }, /manifest field "base.jq" must be true/);
  bad(x => { x.restorer = { enabled: true, graph: 'restore', tile: 128, halo: 32 }; x.graphs.splice(4, 0, { ...x.graphs[4], name: 'restore' }); },
    /"base.jq" and "restorer" exclude each other/);
  // the graph must take the level: a manifest that says jq over a base graph without it is refused at load
  const noJq = JSON.parse(readFileSync(BASE + '.json', 'utf8'));
  noJq.base.jq = true;
  noJq.graphs[4].inputs.push({ name: 'jq', shape: ['b'], dtype: 'float32' });
  const path = join(ROOT, 'test/fixtures', `tmp-${process.pid}-base-jq.json`);   // beside the graphs it names
  writeFileSync(path, JSON.stringify(noJq));
  try {
    await assert.rejects(Model.load(path, { threads: 1 }), (e: Error) => e instanceof ModelError && /graphs\[4\] \(base\)/.test(e.message) && /jq/.test(e.message));
  } finally { rmSync(path); }
});
