/**
 * Engine benchmark: full renders through the engine, each in a child process (wall time, blocks/s,
 * share of time in the model vs JavaScript, live-state high water, peak RSS); with --baseline
 * COMMIT the same renders by that commit's engine and model (release 1: 82d57ba, one graph per
 * evaluation, the rectangle closure) in the same run, from a git worktree. Prints JSON and writes
 * bench/results/engine-<time>.json; never fails on time.
 *   npm run bench [-- --sizes 256,512 --batch 8 --threads 0 --baseline 82d57ba --preset fidelity --torch]
 * --torch adds a whole-image single forward of the same model in PyTorch (no laziness) for scale.
 * --jpeg Q adds, for each size, the same render as if the photo were a JPEG of quality Q (a model
 * with a restorer reads its LR through it): the restorer's share of a full render.
 */
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir, cpus, totalmem } from 'node:os';
import { execFileSync } from 'node:child_process';
import { ROOT } from '../test/helpers.js';
import { matmulPeak, worktree, saveResult } from './common.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const modelPath = opt('model', join(ROOT, 'model/release/infdit-s4.json'));
const sizes = opt('sizes', '256,512').split(',').map(Number).filter(n => n > 0);
const threads = Number(opt('threads', '0'));
const batch = Number(opt('batch', '8'));
const preset = opt('preset', 'fidelity');
const baseline = opt('baseline', '');
const jpegQ = Number(opt('jpeg', '0'));
const log = (s: string) => process.stderr.write(s + '\n');

function child(root: string, model: string, n: number, jpegQuality = 0) {
  const out = execFileSync(process.execPath, ['--import', 'tsx', join(ROOT, 'bench/render-child.ts'), root, model, String(n), String(batch), String(threads), mkdtempSync(join(tmpdir(), 'bench-')), preset, String(jpegQuality)],
    { encoding: 'utf8', maxBuffer: 1 << 20, cwd: ROOT });
  return JSON.parse(out.trim().split('\n').pop()!);
}


async function main() {
  const peak = await matmulPeak(threads);
  log(`MatMul 2048³ ${peak.gflops.toFixed(1)} GFLOP/s`);
  const base = baseline ? worktree(baseline) : null;
  const renders = [];
  for (const n of sizes) {
    log(`render ${n}² → ${4 * n}² (${preset}) ...`);
    // alternate: timings drift between minutes here, so each pair runs back to back
    const r = child(ROOT, modelPath, n);
    log(`  layer graphs: ${r.wallS.toFixed(1)} s, ${r.blocksPerS.toFixed(2)} blocks/s, ${r.msPerBlockEval.toFixed(1)} ms/block-eval, model thread busy ${(100 * r.modelShare).toFixed(0)}%, JS ${(100 * r.jsShare).toFixed(1)}%, state high water ${(r.stateHighWaterBytes / 2 ** 20).toFixed(0)} MiB, peak RSS ${(r.maxRssBytes / 2 ** 20).toFixed(0)} MiB`);
    let b = null;
    if (base) {
      b = child(base, join(base, 'model/release/infdit-s4.onnx'), n);
      log(`  ${baseline} (one graph per evaluation): ${b.wallS.toFixed(1)} s, ${b.blocksPerS.toFixed(2)} blocks/s, ${b.msPerBlockEval.toFixed(1)} ms/block-eval; new/old time ${(r.wallS / b.wallS).toFixed(3)}`);
    }
    let j = null;
    if (jpegQ > 0) {
      j = child(ROOT, modelPath, n, jpegQ);
      log(`  as a JPEG q${jpegQ}: ${j.wallS.toFixed(1)} s, ${j.restorerTiles} restorer tiles; JPEG/clean time ${(j.wallS / r.wallS).toFixed(3)}`);
    }
    renders.push({ lr: n, out: 4 * n, layers: r, baseline: b, newOverOldTime: b ? r.wallS / b.wallS : null, jpeg: j, jpegOverCleanTime: j ? j.wallS / r.wallS : null });
  }
  const whole = [];
  if (args.includes('--torch')) {
    for (const n of [128, 256]) {
      const o = execFileSync('/usr/bin/python3', [join(ROOT, 'bench/whole_forward.py'), join(ROOT, 'model/release/infdit-s4.ckpt.pt'), String(n)], { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads || cpus().length) } });
      const r = JSON.parse(o.trim().split('\n').pop()!);
      whole.push({ lr: n, out: 4 * n, ...r });
      log(`  PyTorch whole-image forward ${4 * n}²: ${r.seconds.toFixed(1)} s, peak RSS ${(r.maxRssBytes / 2 ** 20).toFixed(0)} MiB`);
    }
  }
  const res = { date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memGiB: totalmem() / 2 ** 30 },
    command: 'node --import tsx bench/engine.ts ' + args.join(' '), threads, batch, preset, jpegQuality: jpegQ, matmulPeak: peak, renders, wholeImageTorch: whole };
  saveResult('engine', res);
}
main();
