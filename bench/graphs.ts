/**
 * What one block-evaluation costs in the layer graphs against release 1's single whole-evaluation
 * graph, the same model, in the same run; where the time goes (per graph, per operator type).
 * Prints JSON; never fails on time.
 *   node --import tsx bench/graphs.ts [--model model/release/infdit-s4.json] [--batches 1,4,8,16] [--rounds 3] [--threads 0] [--profile]
 * Timings here swing 2× from minute to minute (other tenants): whole and layers are measured in
 * alternating rounds and each figure is the median over rounds, so their ratio is fair.
 */
import { join, dirname } from 'node:path';
import { pathToFileURL } from 'node:url';
import { readFileSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import * as ort from 'onnxruntime-node';
import { Model, sessionOptions, type Feeds } from '../lib/engine/model.js';
import { ROOT } from '../test/helpers.js';
import { matmulPeak, saveResult } from './common.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const modelPath = opt('model', join(ROOT, 'model/release/infdit-s4.json'));
const threads = Number(opt('threads', '0'));
const batches = opt('batches', '1,4,8,16').split(',').map(Number);
const rounds = Number(opt('rounds', '3'));
const log = (s: string) => process.stderr.write(s + '\n');

/** Plausible inputs for a spec list (values do not change the cost; finite ones keep it honest). */
export function inputs(specs: { name: string; shape: (number | string)[]; dtype: string }[], b: number): Feeds {
  const f: Feeds = {};
  for (const s of specs) {
    const n = s.shape.reduce<number>((a, v) => a * (v === 'b' ? b : (v as number)), 1);
    if (s.dtype === 'float16') f[s.name] = new Uint16Array(n).fill(0x3000);
    else if (s.name === 'sigma') f[s.name] = new Float32Array(n).fill(1);
    else if (s.name === 'present') f[s.name] = new Float32Array(n).fill(1);
    else if (s.name === 'pos') f[s.name] = new Float32Array(n).fill(64);
    else f[s.name] = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
  }
  return f;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function timeIt(reps: number, f: () => Promise<unknown>) {
  // the first calls at a new batch size grow onnxruntime's arena: page faults cost 10× a warm call here
  for (let i = 0; i < 3; i++) await f();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) { const t0 = performance.now(); await f(); t.push(performance.now() - t0); }
  return median(t);
}

/** The graphs of one block evaluation: the input stage and every layer (not the JPEG restorer,
 *  which runs once per LR tile of a JPEG upload: counted here it made every block evaluation
 *  look 21 ms dearer than the whole-evaluation graph). */
const evalGraphs = (model: Model) => model.manifest.graphs.map((g, gi) => ({ g, gi })).filter(({ g }) => g.name === 'input' || /^layer\d+$/.test(g.name));

/** ms per block-evaluation through the layer graphs (input + every layer), via `model.run`. */
export async function layered(model: Model, b: number, reps: number) {
  const per: number[] = [];
  let total = 0;
  for (const { gi } of evalGraphs(model)) {
    const spec = model.manifest.graphs[gi].inputs;
    let feeds = inputs(spec, b);
    const ms = await timeIt(reps, async () => { feeds = (await model.run(gi, b, feeds)).feeds; });
    per.push(ms / b); total += ms;
  }
  return { msPerBlockEval: total / b, perGraphMs: per };
}

async function wholeSession(file: string, opts: ort.InferenceSession.SessionOptions) {
  return ort.InferenceSession.create(readFileSync(file), opts);
}

async function whole(s: ort.InferenceSession, specs: any[], b: number, reps: number) {
  const f = inputs(specs, b);
  const t: Record<string, ort.Tensor> = {};
  for (const sp of specs) t[sp.name] = new ort.Tensor(sp.dtype, f[sp.name], sp.shape.map((v: any) => (v === 'b' ? b : v)));
  return (await timeIt(reps, () => s.run(t))) / b;
}

/** onnxruntime's own profile of one layer graph at batch b: time by operator type. */
async function profile(model: Model, gi: number, b: number, opts: ort.InferenceSession.SessionOptions) {
  const dir = mkdtempSync(join(tmpdir(), 'ortprof-'));
  const file = join(dirname(modelPath), model.manifest.graphs[gi].file);
  const s = await ort.InferenceSession.create(readFileSync(file), { ...opts, enableProfiling: true, profileFilePrefix: join(dir, 'p') });
  const spec = model.manifest.graphs[gi].inputs, f = inputs(spec, b);
  const t: Record<string, ort.Tensor> = {};
  for (const sp of spec) t[sp.name] = new ort.Tensor(sp.dtype as 'float32', f[sp.name], sp.shape.map(v => (v === 'b' ? b : v as number)));
  for (let i = 0; i < 6; i++) await s.run(t);
  (s as any).endProfiling?.();
  await s.release();
  const pf = readdirSync(dir).find(n => n.endsWith('.json'));
  if (!pf) return null;
  const ev = JSON.parse(readFileSync(join(dir, pf), 'utf8')) as any[];
  rmSync(dir, { recursive: true, force: true });
  const byOp: Record<string, number> = {};
  let run = 0;
  for (const e of ev) {
    if (e.cat === 'Node' && e.name.endsWith('_kernel_time')) byOp[e.args.op_name] = (byOp[e.args.op_name] ?? 0) + e.dur;
    if (e.cat === 'Session' && e.name === 'model_run') run += e.dur;
  }
  const kernels = Object.values(byOp).reduce((a, v) => a + v, 0);
  const share = Object.fromEntries(Object.entries(byOp).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, +(v / run).toFixed(3)]));
  return { graph: model.manifest.graphs[gi].name, batch: b, runs: 6, kernelShareOfRun: +(kernels / run).toFixed(3), shareOfRunByOp: share };
}

async function main() {
  const peak = await matmulPeak(threads);
  log(`MatMul 2048³: ${peak.gflops.toFixed(1)} GFLOP/s (best of 5, at the start of the run)`);
  const model = await Model.load(modelPath, { threads, inThread: true });
  const worker = await Model.load(modelPath, { threads });
  const m = model.manifest, F = m.flops_per_block_eval;
  const ref = (m as any).reference_whole_graph;
  const wholeFile = ref ? join(dirname(modelPath), ref.file) : null;
  const opts = sessionOptions(threads, false);
  const ws = wholeFile && existsSync(wholeFile) ? await wholeSession(wholeFile, opts) : null;
  const rows = [];
  for (const b of batches) {
    const reps = b === 1 ? 6 : 3, W: number[] = [], Ls: number[] = [], LW: number[] = [];
    let per: number[] = [];
    for (let k = 0; k < rounds; k++) {
      if (ws) W.push(await whole(ws, ref.inputs, b, reps));
      const l = await layered(model, b, reps); Ls.push(l.msPerBlockEval); per = l.perGraphMs;
      LW.push((await layered(worker, b, reps)).msPerBlockEval);
    }
    const w = W.length ? median(W) : null, l = median(Ls), lw = median(LW);
    const row = {
      batch: b, wholeMsPerBlockEval: w, layersMsPerBlockEval: l, layersInWorkerMsPerBlockEval: lw,
      layersOverWhole: w ? l / w : null, layersGflops: F / (l / 1000) / 1e9,
      layersOfPeak: F / (l / 1000) / 1e9 / peak.gflops, wholeOfPeak: w ? F / (w / 1000) / 1e9 / peak.gflops : null,
      perGraphMsPerBlock: Object.fromEntries(evalGraphs(model).map(({ g }, i) => [g.name, +per[i].toFixed(2)])), rounds: { whole: W, layers: Ls, worker: LW },
    };
    rows.push(row);
    log(`batch ${b}: whole ${w?.toFixed(1)} ms/block-eval, layers ${l.toFixed(1)} (in the worker ${lw.toFixed(1)}), ` +
      `layers/whole ${row.layersOverWhole?.toFixed(3)}, ${row.layersGflops.toFixed(1)} GFLOP/s = ${(100 * row.layersOfPeak).toFixed(0)}% of MatMul peak`);
  }
  const prof = args.includes('--profile') ? await profile(model, 2, batches[batches.length - 1], opts) : null;
  if (prof) log(`profile of ${prof.graph} at batch ${prof.batch}: ${JSON.stringify(prof.shareOfRunByOp)}`);
  await model.close(); await worker.close();
  saveResult('graphs', { date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model }, command: 'node --import tsx bench/graphs.ts ' + args.join(' '),
    model: m.name, threads, matmulPeak: peak, flopsPerBlockEval: F, rows, profile: prof });
}
// run as a script; bench/screen.ts imports layered() for its own table
if (import.meta.url === pathToFileURL(process.argv[1]).href) main();
