/**
 * The view drives generation: seconds until every tile in a viewer's view is final, at the
 * deepest zoom (2 screen px per image px, the bundled viewer's maxZoomPixelRatio) at the lower
 * right of an 8192×6144 output (a 2048×1536 photo at 4×), where the background fill (raster
 * order) arrives last. Through a real server: the view is stated as the bundled viewer states
 * it (POST /api/images/<id>/view), and finishing is read from /api/images/<id>. Default
 * settings, background fill on unless --no-fill; the fill's share of the model's work while
 * the view was being made comes from the engine's nodes per priority class.
 *
 *   node --import tsx bench/view.ts [--screens 900x520,1920x1080] [--pixel-ratio 2] [--no-fill]
 *                                   [--photo 2048x1536] [--at 1,1] [--model M.json] [--model-workers N]
 *
 * --photo: the uploaded photo's size (the demo photo resized); --at: where the view's centre is, as
 * fractions of the output (clamped inside). Issue 33's screenful, every top-level tile of a 1920×1080
 * view at (60%, 70%) of a 32000×24000 output: --photo 8000x6000 --at 0.6,0.7 --screens 1920x1080 --pixel-ratio 1.
 * modelBusyShare: the model thread's time in block evaluations over the wall time until all were final.
 *
 * Prints figures (JSON, kept in bench/results/); never fails on time.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { createApp } from '../server/app.js';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { ROOT } from '../test/helpers.js';
import { saveResult } from './common.js';

const arg = (name: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : undefined; };
const screens = (arg('--screens') ?? '900x520,1920x1080').split(',').map(s => {
  const m = /^(\d+)x(\d+)$/.exec(s);
  if (!m) throw new Error(`--screens takes WxH[,WxH…] in screen pixels, got "${s}"`);
  return { w: Number(m[1]), h: Number(m[2]) };
});
const fill = !process.argv.includes('--no-fill');
// screen px per image px: 2 is the bundled viewer's deepest zoom, 1 the top level at 100%
const ratio = Number(arg('--pixel-ratio') ?? 2);
if (!(ratio > 0 && ratio <= 8)) throw new Error(`--pixel-ratio takes a number in (0, 8], got ${arg('--pixel-ratio')}`);

const size = /^(\d+)x(\d+)$/.exec(arg('--photo') ?? '2048x1536');
if (!size) throw new Error(`--photo takes WxH in pixels, got "${arg('--photo')}"`);
const at = (arg('--at') ?? '1,1').split(',').map(Number);
if (at.length !== 2 || !at.every(f => f >= 0 && f <= 1)) throw new Error(`--at takes fx,fy, fractions of the output from 0 to 1, got "${arg('--at')}"`);
const photo = await sharp(readFileSync(join(ROOT, 'viewer/demo.jpg'))).resize(Number(size[1]), Number(size[2]), { kernel: 'lanczos3', fit: 'fill' }).jpeg({ quality: 92 }).toBuffer();
const runs = [];
for (const screen of screens) {
  // a server of its own per view: nothing made for one view helps the next
  const service = await ImageService.open(loadConfig({ dataDir: mkdtempSync(join(tmpdir(), 'infdit-bench-view-')), demo: false, backgroundFill: fill,
    ...(arg('--model-workers') !== undefined ? { modelWorkers: arg('--model-workers') } : {}), ...(arg('--model') ? { model: arg('--model') } : {}) }));
  const server = createApp(service).listen(0, '127.0.0.1');
  await new Promise(r => server.once('listening', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const meta = await service.add(photo, 'bench.jpg');
  const get = async () => (await fetch(`${base}/api/images/${meta.id}`)).json();
  let st = await get();
  // let the fill get going first, as it would have by the time a person has zoomed in
  if (fill) while (st.engine.nodes < 200) { await new Promise(r => setTimeout(r, 100)); st = await get(); }
  const before = st.engine;
  const w = Math.round(screen.w / ratio), h = Math.round(screen.h / ratio);
  const clamp = (v: number, hi: number) => Math.max(0, Math.min(hi, Math.round(v)));
  const view = { viewer: 'bench-view-0001', level: st.maxLevel, x: clamp(at[0] * st.width - w / 2, st.width - w), y: clamp(at[1] * st.height - h / 2, st.height - h), width: w, height: h };
  const t0 = performance.now();
  const state = async () => (await fetch(`${base}/api/images/${meta.id}/view`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(view) })).json();
  const stated = await state();
  const tiles: [number, number, number][] = stated.tiles;
  // stated again before the lease lapses, as the viewer does while tiles in view are still coming
  const renew = setInterval(state, stated.leaseMs / 3);
  const firstAt: number[] = [];
  for (;;) {
    const finals = await Promise.all(tiles.map(([L, c, r]) => service.tileIsFinal(meta.id, L, c, r)));
    const n = finals.filter(Boolean).length;
    while (firstAt.length < n) firstAt.push((performance.now() - t0) / 1000);
    if (n === tiles.length) break;
    await new Promise(r => setTimeout(r, 50));
  }
  const secs = (performance.now() - t0) / 1000;
  clearInterval(renew);
  st = await get();
  const d = (k: number) => (st.engine.byClass[k] ?? 0) - (before.byClass[k] ?? 0);
  const nodes = st.engine.nodes - before.nodes;
  runs.push({ screen: `${screen.w}x${screen.h}`, imageRect: `${w}x${h} at (${view.x}, ${view.y})`, tiles: tiles.length, secondsAllFinal: +secs.toFixed(2),
    secondsEachTile: firstAt.map(s => +s.toFixed(2)), layerSteps: nodes, viewLayerSteps: d(20), fillLayerSteps: d(0),
    fillShare: nodes ? +(d(0) / nodes).toFixed(3) : 0, modelBusyShare: +((st.engine.modelMs - before.modelMs) / 1000 / secs).toFixed(3),
    blocksDone: st.blocks.done, blocksTotal: st.blocks.total });
  console.error(JSON.stringify(runs[runs.length - 1]));
  server.close();
  await service.close();
}
saveResult('view', { date: new Date().toISOString(), cpu: cpus()[0].model, cores: cpus().length, backgroundFill: fill, pixelRatio: ratio,
  photo: `${size[1]}x${size[2]}`, at, runs });
