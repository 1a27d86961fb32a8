/**
 * The base super-resolver's cost through onnxruntime-node (issue 38): one window (tile + 2·halo LR px a
 * side, the engine's only call shape) per call, on 1 and 2 intra-op threads, median of rounds; seconds
 * per output Mpx counting the halo's overlap; beside it the transformer's block evaluation (input + layer
 * graphs, bench/graphs.ts) at batch 8 in the same run, so the ratio holds on any machine.
 *
 *   node --import tsx bench/base.ts [--model model/release/infdit-s4.json] [--rounds 7]
 *
 * Prints figures (JSON, kept in bench/results/); never fails on time.
 */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Model, sessionOptions } from '../lib/engine/model.js';
import { layered } from './graphs.js';
import { ROOT } from '../test/helpers.js';
import { saveResult, matmulPeak } from './common.js';

const arg = (name: string, d: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : d; };
const modelPath = resolve(arg('--model', join(ROOT, 'model/release/infdit-s4.json')));
const rounds = Number(arg('--rounds', '7'));
const m = JSON.parse(readFileSync(modelPath, 'utf8'));
if (!m.base) { console.error(`${modelPath} has no base (manifest "base"): attach one with model/infdit/base.py attach`); process.exit(2); }
const g = m.graphs.find((x: { name: string }) => x.name === 'base');
const T = m.base.tile, S = T + 2 * m.base.halo, outMpx = (m.scale * T) ** 2 / 1e6;
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

const base: Record<string, unknown>[] = [];
for (const threads of [1, 2]) {
  const s = await ort.InferenceSession.create(readFileSync(join(dirname(modelPath), g.file)), sessionOptions(threads, false));
  const x = new ort.Tensor('float32', Float32Array.from({ length: 3 * S * S }, (_, i) => Math.sin(i * 0.37)), [1, 3, S, S]);
  await s.run({ lr: x });
  const ms: number[] = [];
  for (let r = 0; r < rounds; r++) { const t = performance.now(); await s.run({ lr: x }); ms.push(performance.now() - t); }
  const w = median(ms);
  base.push({ threads, window: `${S}x${S}`, tile: `${T}x${T}`, msPerWindow: +w.toFixed(1), secondsPerOutputMpx: +(w / 1000 / outMpx).toFixed(3),
    gflops: +((m.base.flops_per_lr_pixel * S * S) / (w / 1000) / 1e9).toFixed(1) });
  await s.release();
}
const model = await Model.load(modelPath, { threads: 0, inThread: true });
const block = (await layered(model, 8, 3)).msPerBlockEval;
await model.close();
const blocksPerMpx = 1e6 / m.block ** 2;
const two = base[1] as { secondsPerOutputMpx: number };
saveResult('base', {
  date: new Date().toISOString(), cpu: cpus()[0].model, cores: cpus().length, command: 'node --import tsx bench/base.ts ' + process.argv.slice(2).join(' '),
  model: modelPath.replace(ROOT + '/', ''), params: m.base.params, matmul: await matmulPeak(0), base,
  transformer: { msPerBlockEval: +block.toFixed(2), secondsPerOutputMpx: +(block * blocksPerMpx / 1000).toFixed(2) },
  // the base once per output pixel against one evaluation of every block (fidelity: one evaluation)
  baseShareOfFidelity: +(two.secondsPerOutputMpx / (two.secondsPerOutputMpx + block * blocksPerMpx / 1000)).toFixed(3),
});
