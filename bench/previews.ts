/**
 * A screenful's previews alone (issue 38: a base-quality screenful in ≤ 3 s): every tile of a 1920×1080 view at
 * the deepest zoom of a 32000×24000 output (an 8000×6000 photo at 4×), asked as ?preview=1 at once through a real
 * `infdit serve`, with and without the view stated (stated: the transformer generates beside the previews), for
 * each JPEG quality of the uploaded photo (below 100 a model's restorer runs before the base; 100: no restorer; a
 * JPEG-aware base reads any JPEG as it is).
 * Milliseconds at which each preview answered, the base's windows and their model-thread time.
 *
 *   node --import tsx bench/previews.ts [--model <default: config's>] [--quality 92,100] [--workers 1]
 *
 * Prints figures (JSON, kept in bench/results/); never fails on time.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, resolve } from 'node:path';
import sharp from 'sharp';
import { ROOT, spawnServe } from '../test/helpers.js';
import { saveResult, upload } from './common.js';
import { defaults } from '../config/index.js';

const arg = (name: string, d: string) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : d; };
const fail = (s: string): never => { console.error(s); process.exit(2); };
const model = resolve(arg('--model', defaults.model));
// a model with a restorer reads a JPEG below q100 through it; a JPEG-aware base (manifest base.jq) reads it as it is
const hasRestorer = !!JSON.parse(readFileSync(model, 'utf8')).restorer;
const qualities = arg('--quality', '92,100').split(',').map(q => (/^\d{1,3}$/.test(q) && +q >= 1 && +q <= 100 ? Number(q) : fail(`--quality takes JPEG qualities 1-100 like 92,100, got "${q}"`)));
const workers = arg('--workers', '1');
if (!/^[1-9]$/.test(workers)) fail(`--workers takes a --model-workers count 1-9, got "${workers}"`);

async function one(quality: number, stateView: boolean) {
  const photo = await sharp(readFileSync(join(ROOT, 'viewer/demo.jpg'))).resize(8000, 6000, { kernel: 'lanczos3', fit: 'fill' }).jpeg({ quality }).toBuffer();
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-bench-previews-'));
  const { proc, base } = await spawnServe(['--model', model, '--data-dir', dataDir, '--demo', 'false', '--no-background-fill', '--model-workers', workers]);
  try {
    const id = await upload(base, new Uint8Array(photo), 'previews.jpg');
    const st = await (await fetch(`${base}/api/images/${id}`)).json() as any;
    const view = { viewer: 'bench-previews-01', level: st.maxLevel, x: Math.round(0.6 * st.width - 960), y: Math.round(0.7 * st.height - 540), width: 1920, height: 1080 };
    const T = st.tileSize, tiles: [number, number][] = [];
    for (let r = Math.floor(view.y / T); r <= Math.floor((view.y + view.height - 1) / T); r++)
      for (let c = Math.floor(view.x / T); c <= Math.floor((view.x + view.width - 1) / T); c++) tiles.push([c, r]);
    const t0 = performance.now();
    if (stateView) await fetch(`${base}/api/images/${id}/view`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(view) });
    const at: number[] = [], kinds: Record<string, number> = {};
    await Promise.all(tiles.map(async ([c, r]) => {
      const res = await fetch(`${base}/images/${id}_files/${st.maxLevel}/${c}_${r}.${st.format}?preview=1`);
      await res.arrayBuffer();
      at.push(Math.round(performance.now() - t0));
      const k = res.headers.get('x-infdit-preview') ?? '?';
      kinds[k] = (kinds[k] ?? 0) + 1;
    }));
    const s2 = await (await fetch(`${base}/api/images/${id}`)).json() as any;
    at.sort((a, b) => a - b);
    return { quality, restorer: hasRestorer && quality < 100, viewStated: stateView, tiles: tiles.length, previews: kinds, firstMs: at[0], medianMs: at[at.length >> 1],
      allMs: at[at.length - 1], baseWindows: s2.engine.base.tiles, baseMs: s2.engine.base.ms,
      restorerTiles: s2.engine.restorer.tiles, restorerMs: s2.engine.restorer.ms };
  } finally {
    proc.kill('SIGTERM');
    await new Promise(r => proc.once('exit', r));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const runs = [];
for (const q of qualities) for (const v of [false, true]) {
  const r = await one(q, v);
  runs.push(r);
  process.stderr.write(JSON.stringify(r) + '\n');
}
saveResult('previews', { date: new Date().toISOString(), cpu: cpus()[0].model, cores: cpus().length, model: model.replace(ROOT + '/', ''), modelWorkers: Number(workers), runs });
