/**
 * One layer graph in several forms (model/measure/quant_graphs.py's int8 rewrites, export.py --attention plain|fused),
 * timed against each other: every file's call at each batch size, interleaved round by round so the
 * machine's drift falls on all alike (median of 7 rounds); the largest output difference from the first
 * file on the same inputs. Prints figures (JSON, kept in bench/results/); never fails on time.
 *
 *   node --import tsx bench/layer-forms.ts a.onnx b.onnx … [--batches 8,16] [--threads 0]
 */
import { readFileSync, existsSync } from 'node:fs';
import { cpus } from 'node:os';
import * as ort from 'onnxruntime-node';
import { sessionOptions } from '../lib/engine/model.js';
import { saveResult } from './common.js';
import { inputs } from './graphs.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args.splice(i, 2)[1] : d; };
const batches = opt('batches', '8,16').split(',').map(Number);
const threads = Number(opt('threads', '0'));
const files = args;
if (!files.length || files.some(f => !f.endsWith('.onnx') || !existsSync(f))) {
  console.error('usage: bench/layer-forms.ts a.onnx b.onnx … [--batches 8,16] [--threads 0] (exported layer graphs that exist)');
  process.exit(2);
}
if (batches.some(b => !(Number.isInteger(b) && b > 0 && b <= 256))) { console.error('--batches takes sizes from 1 to 256, e.g. 8,16'); process.exit(2); }

/** Inputs for a session: bench/graphs.ts's plausible values for its declared inputs at batch b. */
function feeds(s: ort.InferenceSession, b: number) {
  const specs = s.inputNames.map((name, i) => {
    const md = s.inputMetadata[i] as any;
    return { name, dtype: md.type as string, shape: (md.shape as (number | string)[]).map(v => (typeof v === 'number' ? v : 'b')) };
  });
  const f = inputs(specs, b), t: Record<string, ort.Tensor> = {};
  for (const sp of specs) t[sp.name] = new ort.Tensor(sp.dtype as 'float32', f[sp.name], sp.shape.map(v => (v === 'b' ? b : v as number)));
  return t;
}
const f16 = (h: number) => { const e = (h >> 10) & 31, m = h & 1023, v = e ? (1 + m / 1024) * 2 ** (e - 15) : m / 1024 * 2 ** -14; return h & 0x8000 ? -v : v; };
const values = (x: ort.Tensor) => (x.type === 'float16' ? Array.from(x.data as Uint16Array, f16) : Array.from(x.data as Float32Array));

const sessions = [];
for (const f of files) sessions.push(await ort.InferenceSession.create(readFileSync(f), sessionOptions(threads, false)));
const rows: unknown[] = [];
for (const b of batches) {
  const inputs = feeds(sessions[0], b), outs: ort.InferenceSession.OnnxValueMapType[] = [];
  for (const s of sessions) { outs.push(await s.run(inputs)); for (let i = 0; i < 3; i++) await s.run(inputs); }   // arenas grown
  const ms = files.map(() => [] as number[]);
  for (let round = 0; round < 7; round++) for (let k = 0; k < files.length; k++) {
    const t0 = performance.now(); await sessions[k].run(inputs); ms[k].push(performance.now() - t0);
  }
  files.forEach((f, k) => {
    const med = [...ms[k]].sort((x, y) => x - y)[3];
    const diff: Record<string, number> = {};
    for (const name of Object.keys(outs[0])) {
      const a = values(outs[0][name] as ort.Tensor), c = values(outs[k][name] as ort.Tensor);
      diff[name] = +a.reduce((m, v, i) => Math.max(m, Math.abs(v - c[i])), 0).toExponential(2);
    }
    rows.push({ file: f, batch: b, msPerBlock: +(med / b).toFixed(3), overFirst: +(med / ([...ms[0]].sort((x, y) => x - y)[3])).toFixed(3), maxAbsDiffFromFirst: diff });
    console.error(`batch ${b}: ${f}: ${(med / b).toFixed(3)} ms per block, ${(med / [...ms[0]].sort((x, y) => x - y)[3]).toFixed(3)} of the first; max |diff| ${JSON.stringify(diff)}`);
  });
}
saveResult('layer-forms', { date: new Date().toISOString(), cpu: cpus()[0].model, cores: cpus().length, threads,
  command: 'node --import tsx bench/layer-forms.ts ' + process.argv.slice(2).join(' '), rows });
