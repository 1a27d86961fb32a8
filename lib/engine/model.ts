/**
 * The model: layer-granular ONNX graphs (an input stage, one graph per layer, the last with the
 * output fused in) plus their JSON manifest. The manifest is checked against every graph at load;
 * a mismatch is refused with an error naming the field, so a model never runs with guessed shapes.
 *
 * The graphs run in a worker thread (lib/model-worker.js): onnxruntime-node's `session.run`
 * holds its JavaScript thread for the whole call, and the HTTP thread must keep answering while
 * the cores generate (DESIGN.md §6). Inputs travel to the worker and back by transfer, not copy.
 */
import { readFileSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { Worker } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { Sampling } from './sampler.js';

export interface IOSpec { name: string; shape: (number | string)[]; dtype: string }
export interface GraphSpec { name: string; file: string; inputs: IOSpec[]; outputs: IOSpec[] }
export interface Manifest {
  format: string; version: number; name: string;
  scale: number; block: number; patch: number; layers: number; heads: number; head_dim: number;
  tokens_per_block: number; grid: number; lr_block: number; flops_per_block_eval: number; flops_per_layer_step?: number;
  /** kv_pool (absent: 1): the layer graphs pool each neighbour's K/V kv_pool² to one inside (the engine hands them whole). */
  config: { dim: number; lr_cross_attn: boolean; kv_pool?: number };
  /** How the layer graphs attend (export.py ATTENTION_DOC); a pooled model's block attention is "plain". */
  attention?: { form: 'fused' | 'plain'; kv_pool?: number; block_attention?: 'plain' };
  kv: { dtype: 'float32' | 'float16'; bytes_per_layer: number };
  graphs: GraphSpec[];
  border_rule: string; target: string; sigma_data: number;
  sampling: Sampling;
  global: { enabled: boolean; input: string | null; thumb?: number | null };
  /** The JPEG condition: the input stage takes `jq`, jpegLevel of stage 1's file (absent: off). */
  jpeg: { enabled: boolean; input: string | null };
  /** The JPEG restorer (lib/engine/restore.ts): graph "restore", last in `graphs` (absent: none). */
  restorer?: { enabled: boolean; graph: string; tile: number; halo: number; offset?: number };
  /** The base super-resolver (lib/engine/base.ts): graph "base", last in `graphs` (absent: none). `jq`: it is
   *  JPEG-aware (its graph also takes `jq`, the LR's JPEG level, and reads a JPEG upload's LR as it is: such a
   *  model has no restorer). */
  base?: { enabled: boolean; graph: string; tile: number; halo: number; cell: number; jq?: boolean };
  /** What the transformer's up(LR) is: PyTorch's bicubic (models before the base), or the base. */
  up: 'bicubic' | 'base';
  provenance: Record<string, unknown>;
}

export class ModelError extends Error {}

/** The JPEG condition of a model with manifest `jpeg` (model/infdit/network.py jpeg_level): 0 for an LR
 *  that is not a JPEG (quality 0), else (100 - quality) / 100. */
export function jpegLevel(quality: number): number {
  return quality > 0 ? (100 - Math.min(100, quality)) / 100 : 0;
}

const need = (m: any, key: string, type: string) => {
  const v = key.split('.').reduce((o, k) => (o == null ? o : o[k]), m);
  if (typeof v !== type) throw new ModelError(`manifest field "${key}" must be a ${type}, got ${JSON.stringify(v)}`);
  return v;
};

export function validateManifest(m: any): Manifest {
  if (m?.format === 'infdit-blockstep')
    throw new ModelError('manifest format "infdit-blockstep" (version 1) is a whole-evaluation export; this engine runs layer graphs: ' +
      're-export with /usr/bin/python3 model/infdit/export.py --ckpt <checkpoint> --out <name>');
  if (m?.format !== 'infdit-layerstep') throw new ModelError(`manifest field "format" must be "infdit-layerstep", got ${JSON.stringify(m?.format)}`);
  if (m.version !== 2) throw new ModelError(`manifest field "version" must be 2, got ${JSON.stringify(m.version)}`);
  for (const k of ['scale', 'block', 'patch', 'layers', 'heads', 'head_dim', 'tokens_per_block', 'grid', 'lr_block', 'config.dim',
    'sigma_data', 'sampling.sigma_min', 'sampling.sigma_max', 'sampling.rho']) need(m, k, 'number');
  if (m.border_rule !== 'mask') throw new ModelError(`manifest field "border_rule" must be "mask" (the rule this engine implements), got ${JSON.stringify(m.border_rule)}`);
  if (!['float32', 'float16'].includes(m.kv?.dtype)) throw new ModelError(`manifest field "kv.dtype" must be "float32" or "float16", got ${JSON.stringify(m.kv?.dtype)}`);
  if (m.global?.enabled && !(m.global.input === 'thumb' && Number.isInteger(m.global.thumb) && m.global.thumb > 0))
    throw new ModelError(`manifest field "global" must name input "thumb" and an integer "thumb" size when enabled, got ${JSON.stringify(m.global)}`);
  m.jpeg ??= { enabled: false, input: null };   // manifests from before the JPEG condition
  if (typeof m.jpeg?.enabled !== 'boolean' || (m.jpeg.enabled && m.jpeg.input !== 'jq'))
    throw new ModelError(`manifest field "jpeg" must be {enabled: false} or {enabled: true, input: "jq"}, got ${JSON.stringify(m.jpeg)}`);
  if (m.block % m.scale || m.block / m.scale !== m.lr_block) throw new ModelError(`manifest field "lr_block" must equal block/scale (${m.block}/${m.scale}), got ${m.lr_block}`);
  if (m.grid * m.patch !== m.block || m.grid * m.grid !== m.tokens_per_block) throw new ModelError(`manifest fields "grid"/"tokens_per_block" disagree with block ${m.block} and patch ${m.patch}`);
  // offset: where the grid starts, above and left of the image (absent: 0, at its corner); even like the tile, so
  // that the restorer's pixel-unshuffle by 2 pairs the same pixels on every tile
  const off = m.restorer?.offset ?? 0;
  if (m.restorer !== undefined && !(m.restorer?.enabled === true && m.restorer.graph === 'restore' && Number.isInteger(m.restorer.tile) &&
      m.restorer.tile > 0 && m.restorer.tile % 2 === 0 && Number.isInteger(m.restorer.halo) && m.restorer.halo >= 0 &&
      Number.isInteger(off) && off >= 0 && off < m.restorer.tile && off % 2 === 0))
    throw new ModelError(`manifest field "restorer" must be {enabled: true, graph: "restore", tile: even integer > 0, halo: integer ≥ 0, offset: even integer from 0 to below tile (absent: 0)} or absent, got ${JSON.stringify(m.restorer)}`);
  if (m.base !== undefined && !(m.base?.enabled === true && m.base.graph === 'base' && [m.base.tile, m.base.halo, m.base.cell].every(Number.isInteger) &&
      m.base.cell > 0 && m.base.tile > 0 && m.base.tile % m.base.cell === 0 && m.base.tile % m.lr_block === 0 && m.base.halo >= 0 && m.base.halo % m.base.cell === 0))
    throw new ModelError(`manifest field "base" must be {enabled: true, graph: "base", cell: integer > 0, tile: a multiple of cell and of lr_block, halo: a multiple of cell ≥ 0, jq: boolean (absent: false)} or absent, got ${JSON.stringify(m.base)}`);
  if (m.base && m.base.jq !== undefined && typeof m.base.jq !== 'boolean')
    throw new ModelError(`manifest field "base.jq" must be true (a JPEG-aware base), false or absent, got ${JSON.stringify(m.base.jq)}`);
  // one reading of a JPEG upload: restored, or raw with its level by a JPEG-aware base, never both
  if (m.base?.jq && m.restorer)
    throw new ModelError('manifest fields "base.jq" and "restorer" exclude each other: a JPEG-aware base reads a JPEG upload\'s LR as it is, so its model has no restorer');
  m.up ??= 'bicubic';   // manifests from before the base
  if (m.up !== 'bicubic' && !(m.up === 'base' && m.base))
    throw new ModelError(`manifest field "up" must be "bicubic", or "base" for a model with a base, got ${JSON.stringify(m.up)}`);
  const want = ['input', ...Array.from({ length: m.layers }, (_, i) => `layer${i}`), ...(m.restorer ? ['restore'] : []), ...(m.base ? ['base'] : [])];
  if (!Array.isArray(m.graphs) || m.graphs.map((g: any) => g?.name).join() !== want.join())
    throw new ModelError(`manifest field "graphs" must list [${want}] in that order, got ${JSON.stringify(m.graphs?.map?.((g: any) => g?.name) ?? m.graphs)}`);
  const presets = m.sampling?.presets;
  if (!presets || typeof presets !== 'object' || !presets[m.sampling.default_preset])
    throw new ModelError(`manifest field "sampling.default_preset" must name one of sampling.presets, got ${JSON.stringify(m.sampling?.default_preset)}`);
  for (const [name, p] of Object.entries<any>(presets)) {
    if (!['euler', 'heun'].includes(p.method) || !(Number.isInteger(p.steps) && p.steps >= 1))
      throw new ModelError(`manifest field "sampling.presets.${name}" must be {method: "euler"|"heun", steps: integer ≥ 1}, got ${JSON.stringify(p)}`);
  }
  return m as Manifest;
}

/** The inputs and outputs each graph must have: what the engine feeds and reads. */
function expectedIO(m: Manifest, gi: number): { ins: IOSpec[]; outs: IOSpec[] } {
  const B = m.block, T = m.tokens_per_block, D = m.config.dim, kvd = m.kv.dtype, lb = m.lr_block, L = m.layers;
  const f = (name: string, shape: (number | string)[], dtype = 'float32'): IOSpec => ({ name, shape: ['b', ...shape], dtype });
  const kv1 = [2, m.heads, T, m.head_dim];
  if (m.base && gi === m.graphs.length - 1) {
    const t = m.base.tile, side = t + 2 * m.base.halo;
    return { ins: [f('lr', [3, side, side]), ...(m.base.jq ? [f('jq', [])] : [])], outs: [f('up', [3, m.scale * t, m.scale * t])] };
  }
  if (m.restorer && gi === L + 1) {
    const t = m.restorer.tile, side = t + 2 * m.restorer.halo;
    return { ins: [f('lr', [3, side, side]), f('jq', [])], outs: [f('restored', [3, t, t])] };
  }
  if (gi === 0) {
    const ins = [f('x', [3, B, B]), f('up', [3, B, B]), f('sigma', []), f('pos', [2])];
    if (m.global.enabled) ins.push(f('thumb', [3, m.global.thumb!, m.global.thumb!]));
    if (m.jpeg.enabled) ins.push(f('jq', []));
    return { ins, outs: [f('h', [T, D]), f('cond', [D]), f('kv', kv1, kvd)] };
  }
  const li = gi - 1;
  const slots = [m.heads, 4 * T, m.head_dim];   // self, top, left, top-left side by side
  const ins = [f('h', [T, D]), f('cond', [D]), f('pos', [2]), f('k4', slots, kvd), f('v4', slots, kvd), f('present', [3])];
  if (li === 0 && m.config.lr_cross_attn) ins.push(f('lr_ctx', [3, 3 * lb, 3 * lb]));
  if (li === L - 1) return { ins: [...ins, f('x', [3, B, B]), f('up', [3, B, B]), f('sigma', [])], outs: [f('denoised', [3, B, B])] };
  return { ins, outs: [f('h_next', [T, D]), f('kv_next', kv1, kvd)] };
}

/** What a session says of its graph (an onnxruntime session, or the same fields sent by the worker). */
type GraphMeta = Pick<ort.InferenceSession, 'inputNames' | 'outputNames'> & { inputMetadata?: readonly unknown[]; outputMetadata?: readonly unknown[] };

/** Compare each graph's declared inputs/outputs with what the engine needs and the graph really has. */
function checkGraph(m: Manifest, gi: number, s: GraphMeta) {
  const g = m.graphs[gi], at = `graphs[${gi}] (${g.name})`;
  const { ins, outs } = expectedIO(m, gi);
  const same = (a: IOSpec[], b: IOSpec[]) => a.length === b.length && a.every((x, i) => x.name === b[i].name && x.dtype === b[i].dtype && x.shape.join() === b[i].shape.join());
  const show = (l: IOSpec[]) => l.map(x => `${x.name}:${x.dtype}[${x.shape}]`).join(', ');
  if (!same(g.inputs ?? [], ins)) throw new ModelError(`manifest field "${at}.inputs" is [${show(g.inputs ?? [])}]; this engine feeds [${show(ins)}]`);
  if (!same(g.outputs ?? [], outs)) throw new ModelError(`manifest field "${at}.outputs" is [${show(g.outputs ?? [])}]; this engine reads [${show(outs)}]`);
  const meta = (list: readonly any[] | undefined, names: readonly string[]) => names.map((n, i) => ({ name: n, ...(list?.[i] ?? {}) }));
  const check = (decl: IOSpec[], real: any[], what: string) => {
    if (decl.length !== real.length || decl.some((d, i) => d.name !== real[i].name))
      throw new ModelError(`manifest field "${at}.${what}" names [${decl.map(d => d.name)}] but the graph ${g.file} has [${real.map(r => r.name)}]`);
    decl.forEach((d, i) => {
      const r = real[i];
      if (r.type && r.type !== d.dtype) throw new ModelError(`manifest field "${at}.${what}[${i}].dtype" is ${d.dtype} but the graph's ${d.name} is ${r.type}`);
      if (r.shape && (r.shape.length !== d.shape.length || r.shape.some((v: any, j: number) => typeof d.shape[j] === 'number' && typeof v === 'number' && v !== d.shape[j])))
        throw new ModelError(`manifest field "${at}.${what}[${i}].shape" is [${d.shape}] but the graph's ${d.name} is [${r.shape}]`);
    });
  };
  check(g.inputs, meta(s.inputMetadata as any[], s.inputNames), 'inputs');
  check(g.outputs, meta(s.outputMetadata as any[], s.outputNames), 'outputs');
}

export type Arr = Float32Array | Uint16Array;
export type Feeds = Record<string, Arr>;

/** Outputs, the feeds given back, and how long the model itself ran (ms). */
export interface RunResult { out: Feeds; feeds: Feeds; ms: number }

/** Runs graph `gi` on a batch of `b` blocks. `feeds` come back (moved to the worker and back):
 *  the caller reuses their buffers; so does `outs`, arrays the outputs are written into. */
export interface GraphRunner {
  run(gi: number, b: number, feeds: Feeds, outs?: Feeds): Promise<RunResult>;
  close(): Promise<void>;
}

export interface ModelOptions {
  threads?: number;
  /** Run in the calling thread (benchmarks of the worker's cost); default: a worker thread. */
  inThread?: boolean;
  /** onnxruntime's intra-op spin-waiting (measured in bench/responsive.ts; default off). */
  spinning?: boolean;
  /** Nice value of the model's threads (Linux: per thread), so the HTTP thread wins the CPU; default 10. */
  nice?: number;
  /** Run every graph once at this batch size before answering (grows onnxruntime's arenas at load); 0: not. */
  warm?: number;
  /** Model threads, each with its own onnxruntime sessions and threads/workers intra-op threads; calls go
   *  to the least busy; the engine keeps workers + 1 batches in flight. On this 2-core machine two
   *  single-threaded sessions made 1.2-1.3× the blocks per second of one session on both cores, whose
   *  small operators leave a core idle (bench/screen.ts), but the HTTP thread's worst delays grew
   *  (test/responsive.test.ts's measure: p99 ~40-80 ms instead of ~20 at batch 16). Default 1. */
  workers?: number;
  /** false: the manifest and the model's identity only, no onnxruntime sessions. A queue master
   *  (`--queue`) hands every block to workers and never runs a graph. Default true. */
  graphs?: boolean;
}

/** The runner of a model loaded without its graphs: any call is a bug, said plainly. */
class NoGraphs implements GraphRunner {
  async run(): Promise<RunResult> { throw new ModelError('this process loaded the model without its graphs (a --queue master: workers generate); nothing may run it here'); }
  async close() {}
}

export function sessionOptions(threads: number, spinning: boolean): ort.InferenceSession.SessionOptions {
  return {
    // 0 means every core: onnxruntime's own default counted fewer here (measured: 2 threads 40 ms vs 51 ms per block at batch 16)
    intraOpNumThreads: threads || cpus().length, interOpNumThreads: 1, graphOptimizationLevel: 'all',
    // no memory pattern: planned per input shape, it re-plans for every batch size the engine uses and
    // doubled the resident memory (2.7 → 1.5 GB in a 1024² render) and the first minute's page faults
    enableMemPattern: false,
    extra: { session: { intra_op: { allow_spinning: spinning ? '1' : '0' } } },
  };
}

function tensors(specs: IOSpec[], b: number, feeds: Feeds) {
  const t: Record<string, ort.Tensor> = {};
  for (const s of specs) t[s.name] = new ort.Tensor(s.dtype as 'float32', feeds[s.name], s.shape.map(v => (v === 'b' ? b : v as number)));
  return t;
}

class InThreadRunner implements GraphRunner {
  constructor(private sessions: ort.InferenceSession[], private m: Manifest) {}
  async run(gi: number, b: number, feeds: Feeds, outs?: Feeds) {
    const t0 = performance.now();
    const r = await this.sessions[gi].run(tensors(this.m.graphs[gi].inputs, b, feeds));
    const ms = performance.now() - t0;
    const out: Feeds = {};
    for (const o of this.m.graphs[gi].outputs) {
      const src = r[o.name].data as Arr, dst = outs?.[o.name];
      if (dst && dst.length === src.length) { (dst as Float32Array).set(src as Float32Array); out[o.name] = dst; } else out[o.name] = src;
    }
    return { out, feeds, ms };
  }
  async close() { for (const s of this.sessions) await s.release(); }
}

class WorkerRunner implements GraphRunner {
  private next = 0;
  private pending = new Map<number, { resolve: (v: RunResult) => void; reject: (e: Error) => void }>();
  private dead: Error | null = null;
  constructor(private w: Worker) {
    w.on('message', (msg: any) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(new ModelError(msg.error)); else p.resolve({ out: msg.out, feeds: msg.feeds, ms: msg.ms });
    });
    const fail = (e: Error) => {
      this.dead = e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    w.on('error', fail);
    w.on('exit', code => fail(new ModelError(`the model worker thread exited (code ${code})`)));
    w.unref();   // an idle worker does not keep the process alive
  }
  get inFlight() { return this.pending.size; }
  /** Calls taken so far. */
  calls = 0;
  run(gi: number, b: number, feeds: Feeds, outs?: Feeds) {
    if (this.dead) return Promise.reject(this.dead);
    if (this.closing) return Promise.reject(new ModelError('the model was closed'));
    this.calls++;
    const id = this.next++;
    const transfer = new Set<ArrayBuffer>();
    for (const a of [...Object.values(feeds), ...Object.values(outs ?? {})]) transfer.add(a.buffer as ArrayBuffer);
    return new Promise<RunResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) this.w.ref();
      this.w.postMessage({ id, gi, b, feeds, outs }, [...transfer]);
    }).finally(() => { if (this.pending.size === 0) this.w.unref(); });
  }
  private closing = false;
  /** Lets the calls in flight finish (terminating a thread inside onnxruntime aborts the process),
   *  then ends the thread; later calls are refused. */
  async close() {
    if (this.closing) return;
    this.closing = true;
    while (this.pending.size && !this.dead) await new Promise(r => setTimeout(r, 5));
    if (this.dead) return;
    const exited = new Promise(r => this.w.once('exit', r));
    this.w.ref();                   // keep the process alive until it has gone
    this.w.postMessage({ close: true });
    await exited;
  }
}

/** A model thread with its own sessions of the graphs, checked against the manifest before any call. */
async function startWorker(manifest: Manifest, files: string[], options: ort.InferenceSession.SessionOptions, opts: ModelOptions) {
  const w = new Worker(new URL('./model-worker.js', import.meta.url), {
    workerData: { files, options, nice: opts.nice ?? 10, warm: opts.warm ?? 0,
      // rank: which waiting call the thread takes first (model-worker.js): a base window (it completes previews),
      // then a restorer tile (what a base window of a JPEG waits for), then the transformer's batches. Ranked
      // graphs are the one-window ones: they always run one window per call (their bytes must not depend on a batch)
      graphs: manifest.graphs.map(g => ({ inputs: g.inputs, outputs: g.outputs, rank: g.name === 'base' ? 2 : g.name === 'restore' ? 1 : 0 })) },
  });
  // The worker's sessions report what the graphs really take and give: checked here before any
  // call (the worker only warms up after the check).
  const meta = await new Promise<any[]>((resolve, reject) => {
    w.once('message', (m: any) => (m.meta ? resolve(m.meta) : reject(new ModelError(`model worker: ${m.error}`))));
    w.once('error', reject);
  });
  try { meta.forEach((s, gi) => checkGraph(manifest, gi, s)); } catch (e) { await w.terminate(); throw e; }
  w.postMessage({ checked: true });
  await new Promise<void>((resolve, reject) => {
    w.once('message', (m: any) => (m.ready ? resolve() : reject(new ModelError(`model worker: ${m.error}`))));
    w.once('error', reject);
  });
  return new WorkerRunner(w);
}

/** Several model threads: a call goes to the one with the fewest calls in flight (the first of equals). A
 *  block's result does not depend on which thread ran it, nor on its threads' count: the same graphs and
 *  kernels (checked: test/engine.test.ts on the fixture; release 4's renders with 1 and 2 model threads
 *  were identical PNGs). */
class PoolRunner implements GraphRunner {
  constructor(private pool: WorkerRunner[]) {}
  get size() { return this.pool.length; }
  /** Calls each model thread has taken (tests: the batches really are spread). */
  get callsEach() { return this.pool.map(r => r.calls); }
  run(gi: number, b: number, feeds: Feeds, outs?: Feeds) {
    let best = this.pool[0];
    for (const r of this.pool) if (r.inFlight < best.inFlight) best = r;
    return best.run(gi, b, feeds, outs);
  }
  async close() { await Promise.all(this.pool.map(r => r.close())); }
}

export class Model {
  readonly kvFloats: number;          // elements of one block's K/V for one layer
  readonly hFloats: number;           // the hidden state of one block: tokens × dim
  readonly blockFloats: number;       // 3·B·B
  readonly ctxSide: number;
  constructor(readonly manifest: Manifest, readonly runner: GraphRunner, readonly id: string) {
    this.kvFloats = 2 * manifest.heads * manifest.tokens_per_block * manifest.head_dim;
    this.hFloats = manifest.tokens_per_block * manifest.config.dim;
    this.blockFloats = 3 * manifest.block * manifest.block;
    this.ctxSide = 3 * manifest.lr_block;
  }

  get layers() { return this.manifest.layers; }

  /** Whether this process may run the graphs (false for a --queue master, which loads none). */
  get runsGraphs() { return !(this.runner instanceof NoGraphs); }

  /** How many calls can run at once (ModelOptions.workers). */
  get parallel() { return this.runner instanceof PoolRunner ? this.runner.size : 1; }
  /** Calls each model thread has taken: [all] for a single thread. */
  get callsEach() { return this.runner instanceof PoolRunner ? this.runner.callsEach : [this.runner instanceof WorkerRunner ? this.runner.calls : NaN]; }

  /** Load the model whose manifest is `<path>.json` (path may name the .json, or end in .onnx). */
  static async load(path: string, opts: ModelOptions = {}): Promise<Model> {
    const base = path.replace(/\.(onnx|json)$/, '');
    if (!existsSync(base + '.json')) throw new ModelError(`model manifest ${base}.json not found: --model must name an exported model (<name>.json with its graphs <name>.input.onnx, <name>.layer0.onnx, … beside it)`);
    let raw: unknown;
    try { raw = JSON.parse(readFileSync(base + '.json', 'utf8')); } catch (e) { throw new ModelError(`manifest ${base}.json is not valid JSON: ${(e as Error).message}`); }
    const manifest = validateManifest(raw);
    const files = manifest.graphs.map(g => join(dirname(base), g.file));
    for (const f of files) if (!existsSync(f)) throw new ModelError(`model graph ${f} (named in ${base}.json) not found`);
    // The model's identity keys every cache on disk: same bytes, same pixels.
    const hash = createHash('sha256').update(readFileSync(base + '.json'));
    for (const f of files) hash.update(readFileSync(f));
    const id = hash.digest('hex').slice(0, 16);
    if (opts.graphs === false) return new Model(manifest, new NoGraphs(), id);
    const opt = sessionOptions(opts.threads ?? 0, opts.spinning ?? false);
    if (opts.inThread) {
      const sessions: ort.InferenceSession[] = [];
      for (const f of files) sessions.push(await ort.InferenceSession.create(readFileSync(f), opt));
      sessions.forEach((s, gi) => checkGraph(manifest, gi, s));
      return new Model(manifest, new InThreadRunner(sessions, manifest), id);
    }
    const n = Math.max(1, Math.floor(opts.workers ?? 1));
    if (n === 1) return new Model(manifest, await startWorker(manifest, files, opt, opts), id);
    const each = sessionOptions(Math.max(1, Math.floor((opts.threads || cpus().length) / n)), opts.spinning ?? false);
    const got = await Promise.allSettled(Array.from({ length: n }, () => startWorker(manifest, files, each, opts)));
    const pool = got.flatMap(r => (r.status === 'fulfilled' ? [r.value] : []));
    const bad = got.find(r => r.status === 'rejected') as PromiseRejectedResult | undefined;
    if (bad) { await Promise.all(pool.map(r => r.close())); throw bad.reason; }
    return new Model(manifest, new PoolRunner(pool), id);
  }

  /** Run graph `gi` ('input' is 0, layer l is l+1) on `b` blocks; outputs into `outs` where given. */
  run(gi: number, b: number, feeds: Feeds, outs?: Feeds) { return this.runner.run(gi, b, feeds, outs); }

  close() { return this.runner.close(); }
}
