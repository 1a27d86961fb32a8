/**
 * Scale-out figures, release model, on this machine:
 *   halo     redundant work per region size: layer-steps a region's job runs over the region's own
 *            (the engine's cone rule counted exactly, and measured through runJob for small sizes)
 *   workers  a queued render (real redis-server, real `infdit worker --threads 1` processes) with 1
 *            and 2 workers: blocks/s and the ratio; Redis bytes per output megapixel
 *   master   the master's own cost per result (PNG decode + block split), its ceiling in jobs/s
 * and a projection for 64 workers on a 1 Gpx render from those. Prints JSON, writes
 * bench/results/queue-<time>.json; never fails on time.
 *   node --import tsx bench/queue.ts [--size 384x256] [--region 6] [--measure-halo 2,4,8]
 */
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir, cpus } from 'node:os';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { Model } from '../lib/engine/model.js';
import { resolvePreset } from '../lib/engine/render.js';
import { SamplerPlan } from '../lib/engine/sampler.js';
import { runJob } from '../lib/queue/worker.js';
import { lrCrop, reach, toPng, fromPng, PROTOCOL, type JobData } from '../lib/queue/protocol.js';
import { ROOT, startRedis } from '../test/helpers.js';
import { saveResult } from './common.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const [W, H] = opt('size', '384x256').split('x').map(Number);
const region = Number(opt('region', '6'));
const measureHalo = opt('measure-halo', '2,4,8,16').split(',').filter(Boolean).map(Number);
const log = (s: string) => process.stderr.write(s + '\n');
const run = promisify(execFile);
const MODEL = join(ROOT, 'model/release/infdit-s4.json');

/** Nodes the engine runs for an a×a region far from the edges: its closure under the engine's rule
 *  (a node needs its own previous level and its up/left neighbours' der(level); lib/engine/engine.ts). */
function coneNodes(a: number, evals: number, L: number) {
  const S = L + 1, TOP = evals * S - 1, der = (l: number) => (l % S >= 1 ? l - 1 : l - 2);
  const off = TOP + 2, key = (r: number, c: number, l: number) => ((r + off) * 4096 + (c + off)) * 1024 + l;
  const seen = new Set<number>(), stack: [number, number, number][] = [];
  for (let r = 0; r < a; r++) for (let c = 0; c < a; c++) stack.push([r, c, TOP]);
  while (stack.length) {
    const [r, c, l] = stack.pop()!, k = key(r, c, l);
    if (seen.has(k)) continue;
    seen.add(k);
    if (l > 0) stack.push([r, c, l - 1]);
    const d = der(l);
    if (d >= 0) for (const [dr, dc] of [[-1, 0], [0, -1], [-1, -1]]) stack.push([r + dr, c + dc, d]);
  }
  return { nodes: seen.size, own: a * a * (TOP + 1) };
}

async function photo(w: number, h: number) {
  const { data } = await sharp(join(ROOT, 'viewer/demo.jpg')).resize(w, h, { fit: 'fill', kernel: 'lanczos3' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return new Uint8Array(data.buffer, data.byteOffset, data.length);
}

async function main() {
  const model = await Model.load(MODEL, { threads: 1, warm: 8 });
  const m = model.manifest, p = resolvePreset(model), plan = new SamplerPlan(p.method, p.steps, m.sampling.sigma_min, m.sampling.sigma_max, m.sampling.rho);
  const out: Record<string, unknown> = {};

  // ---- halo
  const halo = [];
  const big = { w: 640, h: 640 }, lrPx = await photo(big.w, big.h), lb = m.lr_block;
  for (const a of [2, 4, 6, 8, 16, 32, 64]) {
    const c = coneNodes(a, plan.count, m.layers);
    const row: any = { regionBlocks: a, coneNodes: c.nodes, ownNodes: c.own, overhead: Math.round((c.nodes / c.own - 1) * 1000) / 1000 };
    if (measureHalo.includes(a)) {
      const r0 = 16, c0 = 16, reg = { r0, c0, r1: r0 + a, c1: c0 + a };
      const crop = lrCrop(reg, lb, big.w, big.h, reach(plan.count, m.layers));
      const px = new Uint8Array(crop.w * crop.h * 3);
      for (let y = 0; y < crop.h; y++) px.set(lrPx.subarray(((crop.y + y) * big.w + crop.x) * 3, ((crop.y + y) * big.w + crop.x + crop.w) * 3), y * crop.w * 3);
      const data: JobData = { protocol: PROTOCOL, model: { id: model.id, name: m.name }, stage: 1, seed: 0,
        plan: { method: plan.method, steps: plan.steps, sigmaMin: plan.sMin, sigmaMax: plan.sMax, rho: plan.rho },
        lr: { width: big.w, height: big.h, ...crop, png: await toPng(px, crop.w, crop.h) }, region: reg };
      const res = await runJob(model, data, { batch: 8, kvBytes: 1 << 30 });
      row.measuredNodes = res.nodes; row.measuredMs = res.ms;
      const t = performance.now();
      await fromPng(res.png, res.width, res.height, 'bench');
      row.masterDecodeMs = Math.round(performance.now() - t);
      row.resultPngBytesPerBlock = Math.round(res.png.length / (a * a));
      row.jobPayloadBytes = JSON.stringify(data).length;
    }
    halo.push(row);
    log(`region ${a}×${a}: ${c.nodes} layer-steps for ${c.own} own → overhead ${(row.overhead * 100).toFixed(0)}%${row.measuredNodes !== undefined ? ` (measured ${row.measuredNodes}, ${row.measuredMs} ms)` : ''}`);
  }
  out.halo = halo;
  await model.close();

  // ---- 1 vs 2 workers
  const dir = mkdtempSync(join(tmpdir(), 'bench-queue-'));
  const input = join(dir, 'photo.png');
  writeFileSync(input, await sharp(Buffer.from(await photo(W, H)), { raw: { width: W, height: H, channels: 3 } }).png().toBuffer());
  const redis = await startRedis();
  const workers: Record<string, unknown> = {};
  try {
    for (const n of [1, 2]) {
      const procs = Array.from({ length: n }, () => spawn(process.execPath, [join(ROOT, 'bin/infdit.js'), 'worker', '--queue', redis.url, '--threads', '1'], { stdio: ['ignore', 'pipe', 'inherit'] }));
      await Promise.all(procs.map(pr => new Promise<void>(res => { let s = ''; pr.stdout!.on('data', d => { s += d; if (/waiting for region jobs/.test(s)) res(); }); })));
      const t = performance.now();
      const { stdout } = await run(process.execPath, [join(ROOT, 'bin/infdit.js'), 'render', input, '--out', join(dir, `out${n}`), '--queue', redis.url, '--region-blocks', String(region)], { maxBuffer: 1 << 24 });
      const secs = (performance.now() - t) / 1000;
      // CPU the workers used (utime + stime, in clock ticks of 10 ms): how many cores one worker keeps busy
      const cpu = procs.map(pr => { const f = readFileSync(`/proc/${pr.pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) / 100; });
      for (const pr of procs) pr.kill('SIGKILL');
      const q = /queue: (\d+) region jobs, (\d+) blocks; Redis carried ([\d.]+) MB of jobs and ([\d.]+) MB of results \(([\d.]+) MB per output Mpx\); workers ran (\d+) layer-steps/.exec(stdout)!;
      workers[`${n}`] = { seconds: Math.round(secs * 10) / 10, jobs: +q[1], blocks: +q[2], blocksPerSecond: Math.round(+q[2] / secs * 100) / 100, redisMBJobs: +q[3], redisMBResults: +q[4], redisMBPerOutputMpx: +q[5], workerLayerSteps: +q[6],
        workerCpuSeconds: cpu.map(c => Math.round(c * 10) / 10), coresBusyPerWorker: cpu.map(c => Math.round(c / secs * 100) / 100) };
      log(`${n} worker(s): ${secs.toFixed(1)} s, ${(+q[2] / secs).toFixed(2)} blocks/s, Redis ${q[5]} MB per output Mpx, cores busy per worker ${cpu.map(c => (c / secs).toFixed(2)).join(', ')}`);
    }
    const t = performance.now();
    await run(process.execPath, [join(ROOT, 'bin/infdit.js'), 'render', input, '--out', join(dir, 'local'), '--threads', '2'], { maxBuffer: 1 << 24 });
    const localSecs = (performance.now() - t) / 1000;
    workers.localThreads2Seconds = Math.round(localSecs * 10) / 10;
    workers.ratio2over1 = Math.round(((workers['1'] as any).seconds / (workers['2'] as any).seconds) * 100) / 100;
    const same = (await run('diff', ['-r', '-x', '.infdit-cache', join(dir, 'out1'), join(dir, 'local')]).then(() => true, () => false))
      && (await run('diff', ['-r', '-x', '.infdit-cache', join(dir, 'out2'), join(dir, 'local')]).then(() => true, () => false));
    workers.identicalToLocal = same;
    // control, no queue at all: one local render with --threads 1, then two at once (two copies of
    // the photo, so nothing is shared): what this machine gives two model processes
    writeFileSync(join(dir, 'photo2.png'), readFileSync(input));
    const local1 = async (f: string, o: string) => { const t0 = performance.now(); await run(process.execPath, [join(ROOT, 'bin/infdit.js'), 'render', f, '--out', join(dir, o), '--threads', '1', '--data-dir', join(dir, o + '-cache')], { maxBuffer: 1 << 24 }); return (performance.now() - t0) / 1000; };
    const alone = await local1(input, 'c1');
    const t2 = performance.now();
    await Promise.all([local1(input, 'c2a'), local1(join(dir, 'photo2.png'), 'c2b')]);
    const both = (performance.now() - t2) / 1000;
    workers.controlLocalRenders = { oneAloneSeconds: Math.round(alone * 10) / 10, twoAtOnceSeconds: Math.round(both * 10) / 10, throughputRatio: Math.round((2 * alone / both) * 100) / 100 };
    log(`control without the queue: one local render (--threads 1) ${alone.toFixed(1)} s, two at once ${both.toFixed(1)} s: ${(2 * alone / both).toFixed(2)}× the throughput`);
    log(`2 workers / 1 worker speed-up ${workers.ratio2over1}; local render (2 threads) ${localSecs.toFixed(1)} s; identical: ${same}`);
  } finally { redis.stop(); rmSync(dir, { recursive: true, force: true }); }
  out.workers = workers;

  // ---- paper: 64 workers, 1 Gpx, regions of 32 blocks (the default)
  // one worker's measured rate in layer-steps/s (halo included, so edge effects do not flatter it),
  // turned into blocks/s at region 32 with the cone rule's overhead there
  const w1 = workers['1'] as any, h32 = halo.find(h => h.regionBlocks === 32)!, stepsPerBlock = plan.count * (m.layers + 1);
  const stepsPerSec = w1.workerLayerSteps / w1.seconds, perWorker = stepsPerSec / (stepsPerBlock * (1 + h32.overhead));
  const blocks = 1e9 / (m.block * m.block), jobs = Math.ceil(blocks / 1024), waves = Math.ceil(jobs / 64);
  const secs = waves * 1024 / perWorker;   // whole waves: the last one is as long as a full one
  const mbPerMpx = w1.redisMBPerOutputMpx;
  const measured = halo.find(h => h.masterDecodeMs !== undefined && h.regionBlocks === Math.max(...measureHalo))!;
  const masterMsPerBlock = measured.masterDecodeMs / measured.regionBlocks ** 2;
  out.projection64 = { outputGpx: 1, regionBlocks: 32, blocks: Math.round(blocks), jobs, waves, workerLayerStepsPerSecond: Math.round(stepsPerSec),
    perWorkerBlocksPerSecond: Math.round(perWorker * 100) / 100, minutes: Math.round(secs / 6) / 10, oneWorkerHours: Math.round(blocks / perWorker / 360) / 10,
    redisMBps: Math.round(mbPerMpx * 1000 / secs * 100) / 100, redisGB: Math.round(mbPerMpx * 1000 / 1024 * 10) / 10,
    masterBlocksPerSecondCeiling: Math.round(1000 / masterMsPerBlock), blocksPerSecondNeeded: Math.round(blocks / secs) };
  log(`64 workers, 1 Gpx: ≈ ${(out.projection64 as any).minutes} min (1 worker ${(out.projection64 as any).oneWorkerHours} h), Redis ≈ ${(out.projection64 as any).redisMBps} MB/s; master decodes ≤ ${(out.projection64 as any).masterBlocksPerSecondCeiling} blocks/s, needs ${(out.projection64 as any).blocksPerSecondNeeded}`);
  saveResult('queue', { date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model }, command: 'node --import tsx bench/queue.ts ' + args.join(' '), results: out });
}

main().catch(e => { log(String(e?.stack ?? e)); process.exit(1); });
