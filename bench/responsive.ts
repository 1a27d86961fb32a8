/**
 * Does the server answer while it generates? Against real `infdit serve` processes on loopback:
 * a 512×384 upload (2048×1536 out) saturates the cores with background fill, and a probe asks,
 * one request at a time, for a static file, /api/images, a cached tile and a not-yet-made
 * source-level tile. Figures: p50/p95 latency per kind, generation throughput (blocks/s) over the
 * same window, the HTTP thread's event-loop delay (from /api/health); for each model-thread
 * setting (nice, spinning) and, with --baseline COMMIT, for that commit's server (release 1:
 * 82d57ba, the model in the HTTP thread) in the same run. Then the first page load after
 * `npm start`'s settings, while the demo generates, in Debian's Chromium.
 * Prints JSON, writes bench/results/responsive-<time>.json; never fails on time.
 *   node --import tsx bench/responsive.ts [--seconds 15] [--baseline 82d57ba] [--all-settings] [--models a.json,b.json]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir, cpus } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import sharp from 'sharp';
import { chromium } from 'playwright-core';
import { ROOT } from '../test/helpers.js';
import { worktree, saveResult } from './common.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const SECONDS = Number(opt('seconds', '15'));
const baseline = opt('baseline', '');
const log = (s: string) => process.stderr.write(s + '\n');
const pct = (a: number[], p: number) => { if (!a.length) return null; const s = [...a].sort((x, y) => x - y); return +s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))].toFixed(1); };


/** `infdit serve` from a checkout; resolves when it says where it listens. */
function serve(root: string, extra: string[]): Promise<{ proc: ChildProcess; base: string; t0: number }> {
  const t0 = performance.now();
  const proc = spawn(process.execPath, ['--max-old-space-size=1024', join(root, 'bin/infdit.js'), 'serve', '--port', '0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], cwd: root });
  return new Promise((resolve, reject) => {
    let out = '';
    const on = (d: Buffer) => { out += d; const m = /viewer at (http:\/\/[\d.]+:\d+)\//.exec(out); if (m) resolve({ proc, base: m[1], t0 }); };
    proc.stdout!.on('data', on); proc.stderr!.on('data', on);
    proc.on('exit', c => reject(new Error(`server exited ${c}: ${out}`)));
  });
}

async function timed(url: string) {
  const t = performance.now();
  const r = await fetch(url);
  await r.arrayBuffer();
  return { ms: performance.now() - t, status: r.status };
}

async function probe(root: string, label: string, extra: string[]) {
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-resp-'));
  const { proc, base } = await serve(root, ['--data-dir', dataDir, '--no-demo', ...extra]);
  try {
    const png = await sharp(join(ROOT, 'viewer/demo.jpg')).resize(512, 384, { fit: 'fill' }).png().toBuffer();
    const fd = new FormData();
    fd.append('image', new Blob([png], { type: 'image/png' }), 'probe.png');
    const meta = await (await fetch(`${base}/api/images`, { method: 'POST', body: fd })).json() as { id: string };
    const st0 = await (await fetch(`${base}/api/images/${meta.id}`)).json() as any;
    const srcL = st0.sourceMaxLevel, tile = (c: number, r: number) => `${base}/images/${meta.id}_files/${srcL}/${c}_${r}.jpeg`;
    const cols = Math.ceil(512 / st0.tileSize), rows = Math.ceil(384 / st0.tileSize);
    const tUp = performance.now();
    await timed(tile(0, 0));                                  // made once: from now on a cached tile
    await fetch(`${base}/api/health`);                        // resets the event-loop histogram
    const t0 = performance.now();
    const kinds: Record<string, number[]> = { static: [], api: [], cachedTile: [], sourceTile: [] };
    let fresh = 1, i = 0, doneAt = 0;
    // until the image is complete (throughput = all its blocks over the time since the upload:
    // blocks finish in bursts, a window's count would measure the bursts), at most SECONDS × 4
    while (performance.now() - t0 < SECONDS * 4000) {
      if (i % 20 === 19) {
        const s = await (await fetch(`${base}/api/images/${meta.id}`)).json() as any;
        if (s.blocks.done === s.blocks.total) { doneAt = performance.now(); break; }
      }
      const k = ['static', 'api', 'cachedTile', 'sourceTile'][i++ % 4];
      const url = k === 'static' ? `${base}/${i % 8 === 0 ? 'vendor/openseadragon/openseadragon.min.js' : 'style.css'}` : k === 'api' ? `${base}/api/images`
        : k === 'cachedTile' ? tile(0, 0) : tile(fresh % cols, Math.floor(fresh++ / cols) % rows);
      kinds[k].push((await timed(url)).ms);
      await new Promise(r => setTimeout(r, 100));
    }
    const health = await (await fetch(`${base}/api/health`)).json() as any;
    const st = await (await fetch(`${base}/api/images/${meta.id}`)).json() as any;
    const all = Object.values(kinds).flat();
    const secs = ((doneAt || performance.now()) - tUp) / 1000;
    const res = {
      label, blocksPerS: st.blocks.done / secs, secondsToComplete: doneAt ? secs : null, blocksDone: st.blocks.done, blocksTotal: st.blocks.total,
      latencyMs: Object.fromEntries(([...Object.entries(kinds), ['all', all]] as [string, number[]][]).map(([k, v]) => [k, { n: v.length, p50: pct(v, 50), p95: pct(v, 95), max: pct(v, 100) }])),
      eventLoopDelayMs: health.eventLoopDelayMs ?? null,
    };
    log(`${label}: ${res.blocksPerS.toFixed(2)} blocks/s (${res.blocksDone}/${res.blocksTotal} in ${secs.toFixed(1)} s); all p50 ${res.latencyMs.all.p50} ms, p95 ${res.latencyMs.all.p95} ms, max ${res.latencyMs.all.max} ms` +
      (res.eventLoopDelayMs ? `; event-loop delay p99 ${res.eventLoopDelayMs.p99} ms, max ${res.eventLoopDelayMs.max} ms` : ''));
    return res;
  } finally { proc.kill('SIGKILL'); }
}

/** `npm start`'s settings with the demo: time from the process start to the page's load event. */
async function firstPage(root: string, label: string) {
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-first-'));
  const { proc, base, t0 } = await serve(root, ['--data-dir', dataDir]);
  const browser = await chromium.launch({ executablePath: '/usr/lib/chromium/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu'] });
  try {
    const listening = performance.now() - t0;
    const page = await browser.newPage();
    const t1 = performance.now();
    await page.goto(base + '/', { waitUntil: 'load', timeout: 120000 });
    const loadMs = performance.now() - t1;
    const st = await (await fetch(`${base}/api/images`)).json() as any;
    const s = await (await fetch(`${base}/api/images/${st.images[0].id}`)).json() as any;
    const res = { label, listeningAfterMs: Math.round(listening), pageLoadMs: Math.round(loadMs), demoPercentAtLoad: s.percent };
    log(`${label}: listening ${res.listeningAfterMs} ms after start, page load event ${res.pageLoadMs} ms (demo ${s.percent}% generated)`);
    return res;
  } finally { await browser.close(); proc.kill('SIGKILL'); }
}

async function main() {
  const base = baseline ? worktree(baseline) : null;
  const rows = [];
  const variants: [string, string[]][] = [
    ['worker, nice 10, no spinning (default)', []],
    ['worker, nice 0, no spinning', ['--model-nice', '0']],
    ['worker, nice 0, spinning', ['--model-nice', '0', '--ort-spinning']],
    ['worker, nice 10, spinning', ['--ort-spinning']],
  ];
  // --models a.json,b.json: the default settings with each model in turn (the same run), instead of the default model
  const models = opt('models', '') ? opt('models', '').split(',').map(m => resolve(m)) : [''];
  for (const model of models)
    for (const [label, extra] of args.includes('--all-settings') ? variants : variants.slice(0, 1))
      rows.push(await probe(ROOT, model ? `${label}, ${relative(ROOT, model)}` : label, model ? [...extra, '--model', model] : extra));
  if (base) rows.push(await probe(base, `${baseline} (model in the HTTP thread)`, []));
  const pages = [await firstPage(ROOT, 'this checkout')];
  if (base) pages.push(await firstPage(base, baseline));
  const res = { date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model }, command: 'node --import tsx bench/responsive.ts ' + args.join(' '),
    seconds: SECONDS, probes: rows, firstPage: pages };
  saveResult('responsive', res);
}
main();
