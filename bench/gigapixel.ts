/**
 * Gigapixel end to end, through a real `infdit serve` process driven over HTTP as a viewer would:
 *   A  48 Mpx photo (8000×6000) at the defaults (4×, 32000×24000 = 768 Mpx, background fill on):
 *      upload time, the first far (bottom-right) top-level tile, N random top-level tiles, the
 *      fill's block rate over --fill-seconds and the full-render projection from it, peak RSS.
 *   B  the same photo with the fill off: data-folder size after browsing the same N tiles.
 *   C  16× on a 50 Mpx photo (8000×6250 → 128000×100000 = 12.8 Gpx): the .dzi, a far top-level tile.
 *   D  WebP tiles, and 512-px tiles: a far top-level tile each.
 * Peak RSS is the server process's VmHWM (the model's worker thread included). Prints JSON, writes
 * bench/results/gigapixel-<time>.json; never fails on time.
 *   node --import tsx bench/gigapixel.ts [--tiles 8] [--fill-seconds 60]
 */
import { mkdtempSync, rmSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir, cpus } from 'node:os';
import sharp from 'sharp';
import { ROOT, spawnServe } from '../test/helpers.js';
import { saveResult } from './common.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const nTiles = Number(opt('tiles', '8'));
const fillSeconds = Number(opt('fill-seconds', '60'));
const log = (s: string) => process.stderr.write(s + '\n');
const work = mkdtempSync(join(tmpdir(), 'gigapixel-'));

/** The demo photo at w×h with a little noise (a camera's grain), as a JPEG q90 file. */
async function photo(w: number, h: number, name: string) {
  const { data, info } = await sharp(join(ROOT, 'viewer/demo.jpg')).resize(w, h, { fit: 'fill', kernel: 'lanczos3' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  let s = 1;
  for (let i = 0; i < data.length; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; data[i] = Math.min(255, Math.max(0, data[i] + ((s >>> 29) - 3))); }
  const f = join(work, name);
  await sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } }).jpeg({ quality: 90 }).toFile(f);
  return f;
}

function vm(pid: number) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)![1]);
  return { rssMiB: Math.round(kb('VmRSS') / 1024), peakMiB: Math.round(kb('VmHWM') / 1024) };
}

function folder(dir: string) {
  let bytes = 0, blocks = 0, tiles = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true } as any) as any[]) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath ?? e.path, e.name);
    bytes += statSync(p).size;
    if (p.endsWith('.rgb') && p.includes('/blocks/')) blocks++;
    if (/_files\/\d+\//.test(p)) tiles++;
  }
  return { MiB: Math.round(bytes / 2 ** 20 * 10) / 10, blocks, tiles };
}

async function timed<T>(f: () => Promise<T>) { const t = performance.now(); const v = await f(); return { v, s: Math.round((performance.now() - t) / 10) / 100 }; }

async function server(name: string, flags: string[]) {
  const dataDir = join(work, name);
  const { proc, base } = await spawnServe(['--data-dir', dataDir, '--no-demo', ...flags], ['--max-old-space-size=1024']);
  return { proc, base, dataDir };
}

async function upload(base: string, file: string) {
  const fd = new FormData();
  fd.append('image', new Blob([readFileSync(file)]), 'photo.jpg');
  const r = await fetch(`${base}/api/images`, { method: 'POST', body: fd });
  if (r.status !== 201) throw new Error(`upload: ${r.status} ${await r.text()}`);
  return r.json() as Promise<{ id: string; width: number; height: number }>;
}

async function tile(base: string, id: string, L: number, c: number, r: number, fmt = 'jpeg') {
  const res = await fetch(`${base}/images/${id}_files/${L}/${c}_${r}.${fmt}`);
  if (res.status !== 200) throw new Error(`tile ${L}/${c}_${r}: ${res.status} ${await res.text()}`);
  if (res.headers.get('x-infdit-tile') !== 'final') throw new Error(`tile ${L}/${c}_${r} is ${res.headers.get('x-infdit-tile')}, not final`);
  return (await res.arrayBuffer()).byteLength;
}

const status = async (base: string, id: string) => (await fetch(`${base}/api/images/${id}`)).json() as Promise<any>;

async function main() {
  const out: Record<string, unknown> = {};
  const p48 = await photo(8000, 6000, '48mp.jpg'), p50 = await photo(8000, 6250, '50mp.jpg');
  let seed = 11;
  const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const picks = Array.from({ length: nTiles }, () => [rand(), rand()]);
  // tile requests wait for the final tile (a viewer would get the preview first and poll)
  const wait = ['--tile-wait-ms', '600000'];

  for (const fill of [true, false]) {
    const name = fill ? 'A' : 'B';
    const s = await server(name, [...wait, ...(fill ? [] : ['--no-background-fill'])]);
    try {
      const up = await timed(() => upload(s.base, p48));
      const { id, width, height } = up.v, st = await status(s.base, id);
      const M = st.maxLevel, cols = Math.ceil(width / st.tileSize), rows = Math.ceil(height / st.tileSize);
      const far = await timed(() => tile(s.base, id, M, cols - 1, rows - 1));
      log(`${name}: upload 48 Mpx ${up.s} s; ${width}×${height}; far top-level tile ${cols - 1},${rows - 1}: ${far.s} s`);
      const browse = [];
      for (const [a, b] of picks) {
        const c = Math.floor(a * cols), r = Math.floor(b * rows), t = await timed(() => tile(s.base, id, M, c, r));
        browse.push({ col: c, row: r, seconds: t.s });
      }
      log(`${name}: ${nTiles} random top-level tiles: ${browse.map(b => b.seconds).join(', ')} s`);
      const res: any = { uploadSeconds: up.s, output: `${width}x${height}`, blocksTotal: st.blocks.total, firstFarTileSeconds: far.s, browse,
        folderAfterBrowsing: folder(s.dataDir), memory: vm(s.proc.pid!) };
      if (fill) {
        const d0 = (await status(s.base, id)).blocks.done, t0 = Date.now();
        await new Promise(r => setTimeout(r, fillSeconds * 1000));
        const st1 = await status(s.base, id), secs = (Date.now() - t0) / 1000, rate = (st1.blocks.done - d0) / secs;
        res.fill = { seconds: secs, blocks: st1.blocks.done - d0, blocksPerSecond: Math.round(rate * 100) / 100,
          fullRenderProjectionHours: Math.round(st1.blocks.total / rate / 360) / 10, statusBytes: JSON.stringify(st1).length };
        res.memoryAfterFill = vm(s.proc.pid!);
        log(`${name}: fill ${res.fill.blocksPerSecond} blocks/s → full render ≈ ${res.fill.fullRenderProjectionHours} h; peak RSS ${res.memoryAfterFill.peakMiB} MiB`);
      }
      out[fill ? 'A_48mpx_defaults' : 'B_48mpx_no_fill'] = res;
    } finally { s.proc.kill('SIGKILL'); }
  }

  {
    const s = await server('C', [...wait, '--scale', '16', '--no-background-fill']);
    try {
      const up = await timed(() => upload(s.base, p50));
      const { id, width, height } = up.v;
      const dzi = await (await fetch(`${s.base}/images/${id}.dzi`)).text();
      const st = await status(s.base, id), M = st.maxLevel, cols = Math.ceil(width / st.tileSize), rows = Math.ceil(height / st.tileSize);
      const far = await timed(() => tile(s.base, id, M, cols - 1, rows - 1));
      const res = { output: `${width}x${height}`, gigapixels: width * height / 1e9, dziOk: /Width="128000"/.test(dzi), uploadSeconds: up.s, farTileSeconds: far.s,
        engine: (await status(s.base, id)).engine, folder: folder(s.dataDir), memory: vm(s.proc.pid!) };
      log(`C: 16× ${width}×${height}: far top-level tile ${far.s} s, peak RSS ${res.memory.peakMiB} MiB`);
      out.C_16x_50mpx = res;
    } finally { s.proc.kill('SIGKILL'); }
  }

  const variants: Record<string, unknown> = {};
  for (const [name, flags, fmt] of [['webp', ['--tile-format', 'webp'], 'webp'], ['tile512', ['--tile-size', '512'], 'jpeg']] as const) {
    const s = await server('D' + name, [...wait, '--no-background-fill', ...flags]);
    try {
      const { id, width, height } = await upload(s.base, p48);
      const st = await status(s.base, id), M = st.maxLevel, cols = Math.ceil(width / st.tileSize), rows = Math.ceil(height / st.tileSize);
      const far = await timed(() => tile(s.base, id, M, cols - 1, rows - 1, fmt));
      const low = await timed(() => tile(s.base, id, M - 1, Math.floor(cols / 4), Math.floor(rows / 4), fmt));
      variants[name] = { tileSize: st.tileSize, format: st.format, farTileSeconds: far.s, farTileBytes: far.v, levelBelowTileSeconds: low.s, memory: vm(s.proc.pid!) };
      log(`D ${name}: far tile ${far.s} s (${far.v} bytes), a level-${M - 1} tile ${low.s} s`);
    } finally { s.proc.kill('SIGKILL'); }
  }
  out.D_settings = variants;

  rmSync(work, { recursive: true, force: true });
  saveResult('gigapixel', { date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model }, command: 'node --import tsx bench/gigapixel.ts ' + args.join(' '), results: out });
}

main().catch(e => { log(String(e?.stack ?? e)); rmSync(work, { recursive: true, force: true }); process.exit(1); });
