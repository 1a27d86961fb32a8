/**
 * Engine benchmark: prints figures as JSON (and writes bench/results/engine-<time>.json); it
 * never fails on time.
 *   npm run bench [-- --model FILE --sizes 512,1024 --batch 16 --threads 0 --no-torch]
 * 1. MatMul peak of onnxruntime on this machine (same run, same threads).
 * 2. ms per block-evaluation at batch 1 and 16, achieved GFLOP/s against that peak.
 * 3. Full renders (LR N² → 4N²) in a child process each: wall time, share of time in
 *    onnxruntime vs JavaScript, K/V high-water mark, peak RSS.
 * 4. Beside them, a whole-image single forward of the same model in PyTorch (all blocks at
 *    once, no laziness): seconds and peak RSS, where it fits in memory.
 */
import { mkdirSync, writeFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir, cpus, totalmem } from 'node:os';
import { execFileSync } from 'node:child_process';
import * as ort from 'onnxruntime-node';
import { Model } from '../lib/model.js';
import { ROOT } from '../test/helpers.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const modelPath = opt('model', join(ROOT, 'model/release/infdit-s4.json'));
const sizes = opt('sizes', '512,1024').split(',').map(Number).filter(n => n > 0);   // --sizes 0: block evaluations only
const threads = Number(opt('threads', '0'));
const batch = Number(opt('batch', '16'));
const log = (s: string) => process.stderr.write(s + '\n');

async function matmulPeak() {
  const s = await ort.InferenceSession.create(join(ROOT, 'bench/matmul.onnx'), { intraOpNumThreads: threads || cpus().length });
  const n = 2048, a = new ort.Tensor('float32', new Float32Array(n * n).fill(0.5), [n, n]), b = new ort.Tensor('float32', new Float32Array(n * n).fill(0.25), [n, n]);
  await s.run({ a, b });
  let best = Infinity;
  for (let i = 0; i < 5; i++) { const t = performance.now(); await s.run({ a, b }); best = Math.min(best, performance.now() - t); }
  return { n, ms: best, gflops: (2 * n ** 3) / (best / 1000) / 1e9 };
}

async function blockEval(model: Model, b: number) {
  const m = model.manifest, BF = model.blockFloats, s = model.ctxSide;
  const rnd = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
  const kvN = b * 3 * model.kvFloats;
  const kv = m.kv.dtype === 'float16' ? new Uint16Array(kvN).fill(0x3000) : rnd(kvN);
  const inputs = [b, rnd(b * BF), rnd(b * BF), rnd(b * 3 * s * s), new Float32Array(b).fill(1), new Float32Array(b * 2).fill(64), kv, new Float32Array(b * 3).fill(1)] as const;
  await model.run(...inputs);
  const reps = b === 1 ? 20 : 4, times: number[] = [];
  for (let i = 0; i < reps; i++) { const t = performance.now(); await model.run(...inputs); times.push(performance.now() - t); }
  times.sort((x, y) => x - y);
  const ms = times[Math.floor(times.length / 2)] / b;
  return { batch: b, msPerBlockEval: ms, gflops: m.flops_per_block_eval / (ms / 1000) / 1e9 };
}

async function main() {
  const model = await Model.load(modelPath, { threads });
  const m = model.manifest;
  log(`model ${m.name}: ${(m as any).params} params, ${(m.flops_per_block_eval / 1e9).toFixed(2)} GFLOP per block-evaluation`);
  const peak = await matmulPeak();
  log(`MatMul peak ${peak.gflops.toFixed(1)} GFLOP/s`);
  const evals = [];
  for (const b of [1, batch]) { const r = await blockEval(model, b); evals.push({ ...r, ofPeak: r.gflops / peak.gflops }); log(`batch ${b}: ${r.msPerBlockEval.toFixed(1)} ms per block-eval, ${r.gflops.toFixed(1)} GFLOP/s`); }
  const renders = [];
  for (const n of sizes) {
    log(`render ${n}² → ${4 * n}² ...`);
    const out = execFileSync(process.execPath, ['--import', 'tsx', join(ROOT, 'bench/render-child.ts'), modelPath, String(n), String(batch), String(threads), mkdtempSync(join(tmpdir(), 'bench-'))], { encoding: 'utf8', maxBuffer: 1 << 20 });
    const r = JSON.parse(out.trim().split('\n').pop()!);
    renders.push(r);
    log(`  ${r.wallS.toFixed(1)} s, ${r.msPerNode.toFixed(1)} ms/node, JS ${(100 * r.jsShare).toFixed(1)}% of wall, K/V high water ${(r.kvHighWaterBytes / 2 ** 20).toFixed(0)} MiB, peak RSS ${(r.maxRssBytes / 2 ** 20).toFixed(0)} MiB`);
  }
  const whole = [];
  if (!args.includes('--no-torch')) {
    for (const n of [128, 256, 512]) {
      const est = (4 * n / m.block) ** 2 * m.heads * m.tokens_per_block * 4 * m.tokens_per_block * 4 * 3;  // attention weights alone
      if (est > totalmem() * 0.6) { whole.push({ lr: n, out: 4 * n, fits: false, estimatedBytes: est }); log(`  whole-image forward ${4 * n}²: does not fit (≈${(est / 2 ** 30).toFixed(0)} GiB)`); continue; }
      try {
        const o = execFileSync('/usr/bin/python3', [join(ROOT, 'bench/whole_forward.py'), join(ROOT, 'model/release/infdit-s4.ckpt.pt'), String(n)], { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads || cpus().length) } });
        const r = JSON.parse(o.trim().split('\n').pop()!);
        whole.push({ lr: n, out: 4 * n, fits: true, ...r });
        log(`  whole-image forward ${4 * n}²: ${r.seconds.toFixed(1)} s, peak RSS ${(r.maxRssBytes / 2 ** 20).toFixed(0)} MiB`);
      } catch (e) { whole.push({ lr: n, out: 4 * n, fits: false, error: String((e as Error).message).slice(0, 200) }); }
    }
  }
  const res = { date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: totalmem() / 2 ** 30 },
    model: { name: m.name, id: model.id, params: (m as any).params, flopsPerBlockEval: m.flops_per_block_eval, kvDtype: m.kv.dtype },
    threads, matmulPeak: peak, blockEval: evals, renders, wholeImageTorch: whole };
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const f = join(ROOT, 'bench/results', `engine-${res.date.replace(/[:.]/g, '-')}.json`);
  writeFileSync(f, JSON.stringify(res, null, 1));
  console.log(JSON.stringify(res, null, 1));
  log(`wrote ${f}`);
}
main();
