/**
 * A screenful of detail (issue 33): every top-level tile of a 1920×1080 view at 1 image px per screen px,
 * centred at (60%, 70%) of a 32000×24000 output (an 8000×6000 photo at 4×), stated at once as the bundled
 * viewer states a view, through a real `infdit serve` (a child process, default settings but the ones
 * named here). Seconds until every tile is final, layer-steps, the model threads' busy time per second;
 * for each model, model-worker count and background fill asked for, one server each, in one run; then
 * bench/graphs.ts's block evaluation (ms per block at batch 8 and 16) for each model, interleaved round
 * by round, the same run.
 *
 *   node --import tsx bench/screen.ts [--models model/release/infdit-s4.json[,other.json…]]
 *        [--workers 1,2] [--fill off,on] [--batch 8[,16…]] [--photo 8000x6000] [--at 0.6,0.7] [--screen 1920x1080] [--no-graphs]
 *        [--overlap N] [--previews off] [--serve "more serve flags"]
 *
 * --workers: --model-workers values (1: the default).
 * modelBusy: the model threads' summed time in block evaluations over the wall time (2 = two threads busy);
 * jsBusy: the HTTP thread's time assembling and unpacking the batches, the same way.
 * secondsAllPreviews: every tile of the view asked as a preview at once, as the viewer does, until all are
 * answered; previews: what they were (base, lanczos). baseTiles: the base's windows computed (each ~0.13 s on
 * 2 cores, bench/base.ts); restorerTiles: the JPEG restorer's tiles they read (the photo is a JPEG); baseMs,
 * restorerMs: their model-thread time (not in modelBusy, which is the transformer's).
 * Prints figures (JSON, kept in bench/results/); never fails on time.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Model } from '../lib/engine/model.js';
import { layered } from './graphs.js';
import { tmpdir, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import sharp from 'sharp';
import { ROOT, spawnServe } from '../test/helpers.js';
import { saveResult, upload } from './common.js';
import { decodeRuns } from '../lib/tiles/progress.js';

const arg = (name: string, d: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : d; };
const fail = (s: string): never => { console.error(s); process.exit(2); };
const models = arg('--models', join(ROOT, 'model/release/infdit-s4.json')).split(',').map(m => resolve(m));
const workers = arg('--workers', '1,2').split(',').map(w => (/^[1-9]\d?$/.test(w) ? Number(w) : fail(`--workers takes --model-workers counts like 1,2, got "${w}"`)));
const batchSizes = arg('--batch', '8').split(',').map(b => (/^\d{1,3}$/.test(b) && +b >= 1 && +b <= 256 ? Number(b) : fail(`--batch takes --batch values from 1 to 256 like 8,16, got "${b}"`)));
const fills = arg('--fill', 'off,on').split(',').map(f => (f === 'on' || f === 'off' ? f === 'on' : fail(`--fill takes off, on or off,on, got "${f}"`)));
const size = /^(\d+)x(\d+)$/.exec(arg('--photo', '8000x6000')) ?? fail(`--photo takes WxH in pixels, got "${arg('--photo', '')}"`);
const screen = /^(\d+)x(\d+)$/.exec(arg('--screen', '1920x1080')) ?? fail(`--screen takes WxH in screen pixels, got "${arg('--screen', '')}"`);
const at = arg('--at', '0.6,0.7').split(',').map(Number);
if (at.length !== 2 || !at.every(f => f >= 0 && f <= 1)) fail(`--at takes fx,fy, fractions of the output from 0 to 1, got "${arg('--at', '')}"`);
const log = (s: string) => process.stderr.write(s + '\n');
// --overlap N: the server's --tile-overlap (default: its own, 1); --previews off: ask no previews (the
// figures before the base: what the previews' base tiles cost the screenful)
const overlap = arg('--overlap', '');
if (overlap && !/^\d{1,2}$/.test(overlap)) fail(`--overlap takes a --tile-overlap in px, got "${overlap}"`);
const askPreviews = arg('--previews', 'on') !== 'off';
// --serve "…": more `infdit serve` flags for every server of the run (e.g. "--model-nice 0")
const serveExtra = arg('--serve', '').split(' ').filter(Boolean);

const photo = await sharp(readFileSync(join(ROOT, 'viewer/demo.jpg'))).resize(Number(size[1]), Number(size[2]), { kernel: 'lanczos3', fit: 'fill' }).jpeg({ quality: 92 }).toBuffer();
const sleep = (ms: number) => new Promise(r => setTimeout(r, ms));

async function one(model: string, w: number, fill: boolean, batch: number) {
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-bench-screen-'));
  const { proc, base } = await spawnServe(['--model', model, '--data-dir', dataDir, '--demo', 'false', '--model-workers', String(w), '--batch', String(batch),
    ...(fill ? [] : ['--no-background-fill']), ...(overlap ? ['--tile-overlap', overlap] : []), ...serveExtra]);
  try {
    const id = await upload(base, new Uint8Array(photo), 'screen.jpg');
    const get = async () => (await fetch(`${base}/api/images/${id}`)).json() as Promise<any>;
    let st = await get();
    // with the fill, let it get going first, as it would have by the time a person has zoomed in
    if (fill) while (st.engine.nodes < 200) { await sleep(100); st = await get(); }
    const before = st.engine;
    const vw = Number(screen[1]), vh = Number(screen[2]);
    const clamp = (v: number, hi: number) => Math.max(0, Math.min(hi, Math.round(v)));
    const view = { viewer: 'bench-screen-0001', level: st.maxLevel, x: clamp(at[0] * st.width - vw / 2, st.width - vw), y: clamp(at[1] * st.height - vh / 2, st.height - vh), width: vw, height: vh };
    const t0 = performance.now();
    const state = async () => (await fetch(`${base}/api/images/${id}/view`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(view) })).json() as Promise<any>;
    const stated = await state();
    const tiles: [number, number, number][] = stated.tiles;
    const renew = setInterval(() => { state().catch(() => {}); }, stated.leaseMs / 3);
    // what a person sees first: every tile of the view asked as its preview at once, as the bundled
    // viewer does; seconds until all are answered, and what they were (the base, or Lanczos3)
    const kinds: Record<string, number> = {};
    const previews = Promise.all((askPreviews ? tiles : []).map(async ([L, c, r]) => {
      const res = await fetch(`${base}/images/${id}_files/${L}/${c}_${r}.${st.format}?preview=1`);
      await res.arrayBuffer();
      const k = res.headers.get('x-infdit-preview') ?? res.headers.get('x-infdit-tile') ?? '?';
      kinds[k] = (kinds[k] ?? 0) + 1;
    })).then(() => (performance.now() - t0) / 1000);
    // A top-level tile is final when every block under it is done: read from the block map (GET
    // /api/images/<id>/blocks), as cheap as the viewer's events. Asking the tiles with ?preview instead
    // made a Lanczos preview per tile per poll, CPU taken from the model (a first try: 42 s, not 27).
    const B = st.blocks.size, T = st.tileSize, final = new Set<number>(), firstAt: number[] = [];
    while (final.size < tiles.length) {
      const map = await (await fetch(`${base}/api/images/${id}/blocks`)).json() as any;
      const done = decodeRuns(map.runs, map.rows * map.cols);
      tiles.forEach(([, c, r], i) => {
        if (final.has(i)) return;
        const c0 = Math.floor(c * T / B), c1 = Math.ceil(Math.min(st.width, (c + 1) * T) / B), r0 = Math.floor(r * T / B), r1 = Math.ceil(Math.min(st.height, (r + 1) * T) / B);
        for (let y = r0; y < r1; y++) for (let x = c0; x < c1; x++) if (!done[y * map.cols + x]) return;
        final.add(i); firstAt.push((performance.now() - t0) / 1000);
      });
      if (final.size < tiles.length) await sleep(200);
    }
    const secs = (performance.now() - t0) / 1000;
    const previewSecs = await previews;
    clearInterval(renew);
    st = await get();
    const d = (k: number) => (st.engine.byClass[k] ?? 0) - (before.byClass[k] ?? 0);
    const nodes = st.engine.nodes - before.nodes;
    return { model: model.replace(ROOT + '/', ''), modelId: st.model.id, modelWorkers: w, batch, backgroundFill: fill, tiles: tiles.length,
      secondsAllPreviews: +previewSecs.toFixed(2), previews: kinds,
      secondsAllFinal: +secs.toFixed(2), firstTile: +firstAt[0].toFixed(2), layerSteps: nodes,
      // the transformer's graph calls: layerSteps / calls is the mean batch (the cone's edges leave batches part full)
      calls: st.engine.calls - before.calls, fillShare: nodes ? +(d(0) / nodes).toFixed(3) : 0,
      // the base's tiles made for the screenful (previews, and up(LR) over the base); their cost: bench/base.ts's per window
      baseTiles: st.engine.base.tiles - before.base.tiles, baseMs: st.engine.base.ms - before.base.ms,
      // the JPEG restorer's tiles under those windows (the photo is uploaded as a JPEG) and their model-thread time
      restorerTiles: st.engine.restorer.tiles - before.restorer.tiles, restorerMs: st.engine.restorer.ms - before.restorer.ms,
      modelBusy: +((st.engine.modelMs - before.modelMs) / 1000 / secs).toFixed(3), jsBusy: +((st.engine.jsMs - before.jsMs) / 1000 / secs).toFixed(3), msPerLayerStep: +(secs * 1000 / nodes).toFixed(2) };
  } finally {
    proc.kill('SIGTERM');
    await new Promise(r => proc.once('exit', r));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const runs = [];
for (const model of models) for (const w of workers) for (const batch of batchSizes) for (const fill of fills) {
  const r = await one(model, w, fill, batch);
  runs.push(r);
  log(JSON.stringify(r));
}
// bench/graphs.ts's block evaluation (input + layer graphs, one session on every core, in this thread) for
// each model, interleaved round by round so the machine's drift falls on all alike; median of the rounds
const graphs: { model: string; batch: number; msPerBlockEval: number; rounds: number[] }[] = [];
if (!process.argv.includes('--no-graphs')) {
  const loaded = [];
  for (const m of models) loaded.push(await Model.load(m, { threads: 0, inThread: true }));
  for (const b of [8, 16]) {
    const per = models.map(() => [] as number[]);
    for (let round = 0; round < 5; round++) for (let i = 0; i < models.length; i++) per[i].push((await layered(loaded[i], b, 3)).msPerBlockEval);
    models.forEach((m, i) => {
      const sorted = [...per[i]].sort((x, y) => x - y);
      graphs.push({ model: m.replace(ROOT + '/', ''), batch: b, msPerBlockEval: +sorted[2].toFixed(2), rounds: per[i].map(v => +v.toFixed(2)) });
      log(`block evaluation, batch ${b}, ${m.replace(ROOT + '/', '')}: ${sorted[2].toFixed(2)} ms (rounds ${per[i].map(v => v.toFixed(1)).join(' ')})`);
    });
  }
  for (const m of loaded) await m.close();
}
saveResult('screen', { date: new Date().toISOString(), cpu: cpus()[0].model, cores: cpus().length,
  command: 'node --import tsx bench/screen.ts ' + process.argv.slice(2).join(' '), photo: `${size[1]}x${size[2]}`, at, screen: `${screen[1]}x${screen[2]}`, runs, graphs });
