/** onnxruntime's MatMul rate on this machine (2048³, best of 5): the yardstick for a graph's GFLOP/s. */
import { join } from 'node:path';
import { cpus } from 'node:os';
import * as ort from 'onnxruntime-node';
import { ROOT } from '../test/helpers.js';

export async function matmulPeak(threads: number) {
  const s = await ort.InferenceSession.create(join(ROOT, 'bench/matmul.onnx'), { intraOpNumThreads: threads || cpus().length });
  const n = 2048, a = new ort.Tensor('float32', new Float32Array(n * n).fill(0.5), [n, n]), b = new ort.Tensor('float32', new Float32Array(n * n).fill(0.25), [n, n]);
  await s.run({ a, b });
  let best = Infinity;
  for (let i = 0; i < 5; i++) { const t = performance.now(); await s.run({ a, b }); best = Math.min(best, performance.now() - t); }
  return { n, ms: best, gflops: (2 * n ** 3) / (best / 1000) / 1e9 };
}

