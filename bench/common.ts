/** What the benchmarks share: the MatMul yardstick, a baseline commit's checkout, the results file. */
import { join } from 'node:path';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import * as ort from 'onnxruntime-node';
import { ROOT } from '../test/helpers.js';

/** onnxruntime's MatMul rate on this machine (2048³, best of 5): the yardstick for a graph's GFLOP/s. */
export async function matmulPeak(threads: number) {
  const s = await ort.InferenceSession.create(join(ROOT, 'bench/matmul.onnx'), { intraOpNumThreads: threads || cpus().length });
  const n = 2048, a = new ort.Tensor('float32', new Float32Array(n * n).fill(0.5), [n, n]), b = new ort.Tensor('float32', new Float32Array(n * n).fill(0.25), [n, n]);
  await s.run({ a, b });
  let best = Infinity;
  for (let i = 0; i < 5; i++) { const t = performance.now(); await s.run({ a, b }); best = Math.min(best, performance.now() - t); }
  return { n, ms: best, gflops: (2 * n ** 3) / (best / 1000) / 1e9 };
}


/** A worktree of `commit` with this checkout's node_modules: that commit's engine, model and server. */
export function worktree(commit: string) {
  const dir = join(tmpdir(), `infdit-${commit}`);
  if (!existsSync(dir)) {
    execFileSync('git', ['-C', ROOT, 'worktree', 'add', '--detach', dir, commit], { stdio: 'ignore' });
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  }
  return dir;
}

/** Print the result as JSON and keep it as bench/results/<kind>-<time>.json. */
export function saveResult(kind: string, res: { date: string; [k: string]: unknown }) {
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const f = join(ROOT, 'bench/results', `${kind}-${res.date.replace(/[:.]/g, '-')}.json`);
  writeFileSync(f, JSON.stringify(res, null, 1));
  console.log(JSON.stringify(res, null, 1));
  process.stderr.write(`wrote ${f}\n`);
}

/** Upload a photo to a running server (POST /api/images) as the viewer does; its image id. */
export async function upload(base: string, photo: Uint8Array<ArrayBuffer>, name: string): Promise<string> {
  const fd = new FormData();
  fd.append('image', new Blob([photo]), name);
  const up = await fetch(`${base}/api/images`, { method: 'POST', body: fd });
  if (up.status !== 201 && up.status !== 200) throw new Error(`upload answered ${up.status}: ${await up.text()}`);
  return ((await up.json()) as { id: string }).id;
}
