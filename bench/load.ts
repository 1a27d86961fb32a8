/**
 * Load benchmark: 50 simulated viewers for 60 s over a partly generated image, plus one upload,
 * against a real `infdit serve` process on loopback. Prints figures (JSON); never fails on time.
 *   node --import tsx bench/load.ts [--viewers 50 --seconds 60 --fill-seconds 6 --model FILE]
 * A viewer pans/zooms at random: it asks tiles of a random level around a random point, using
 * the preview URL for generated tiles it has not seen finished (as the viewer page does) and
 * the final URL otherwise; a tenth of its asks are final URLs of generated tiles (a DZI viewer
 * without previews), which wait for generation.
 */
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import { ROOT, spawnServe } from '../test/helpers.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const VIEWERS = Number(opt('viewers', '50')), SECONDS = Number(opt('seconds', '60')), FILL = Number(opt('fill-seconds', '6'));
const model = opt('model', join(ROOT, 'model/release/infdit-s4.json'));
const log = (s: string) => process.stderr.write(s + '\n');

const agent = new http.Agent({ keepAlive: true, maxSockets: 6 * VIEWERS });   // 6 per viewer, like a browser
function get(url: string): Promise<{ status: number; ms: number; kind: string; bytes: number }> {
  const t = performance.now();
  return new Promise(resolve => {
    const req = http.get(url, { agent }, res => {
      let n = 0; res.on('data', d => { n += d.length; });
      res.on('end', () => resolve({ status: res.statusCode!, ms: performance.now() - t, kind: String(res.headers['x-infdit-tile'] ?? ''), bytes: n }));
    });
    req.on('error', () => resolve({ status: 0, ms: performance.now() - t, kind: 'error', bytes: 0 }));
    req.setTimeout(120000, () => req.destroy());
  });
}
const pct = (a: number[], p: number) => { if (!a.length) return null; const s = [...a].sort((x, y) => x - y); return +s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))].toFixed(2); };

async function main() {
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-load-'));
  const { proc, base } = await spawnServe(['--data-dir', dataDir, '--model', model, '--tile-wait-ms', '20000'], ['--max-old-space-size=1024']);
  const list = JSON.parse((await (await fetch(`${base}/api/images`)).text()));
  const id = list.images[0].id;
  let st = await (await fetch(`${base}/api/images/${id}`)).json() as any;
  log(`image ${id}: ${st.width}×${st.height}, ${st.blocks.total} blocks; letting background fill run ${FILL} s…`);
  await new Promise(r => setTimeout(r, FILL * 1000));
  st = await (await fetch(`${base}/api/images/${id}`)).json() as any;
  log(`partly generated: ${st.blocks.done}/${st.blocks.total} blocks`);
  const M = st.maxLevel, S = st.sourceMaxLevel, T = st.tileSize;
  const finalSeen = new Set<string>();
  const lat: Record<string, number[]> = { cached: [], source: [], preview: [], generated: [] };
  let errors = 0, tiles = 0, bytes = 0, rss = 0;
  const rssTimer = setInterval(() => { try { rss = Math.max(rss, Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${proc.pid}/status`, 'utf8'))![1]) * 1024); } catch {} }, 200);
  const t0 = Date.now(), end = t0 + SECONDS * 1000;
  let seed = 12345;
  const rnd = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  async function viewer() {
    while (Date.now() < end) {
      const L = Math.min(M, Math.max(0, Math.round(S - 1 + rnd() * (M - S + 2))));
      const f = 2 ** (M - L), lw = Math.ceil(st.width / f), lh = Math.ceil(st.height / f);
      const cx = Math.floor(rnd() * Math.ceil(lw / T)), cy = Math.floor(rnd() * Math.ceil(lh / T));
      const key = `${L}/${cx}_${cy}`;
      const generated = L > S;
      const waitFinal = generated && rnd() < 0.1;
      const url = `${base}/images/${id}_files/${key}.jpeg${generated && !finalSeen.has(key) && !waitFinal ? '?preview=1' : ''}`;
      const r = await get(url);
      tiles++; bytes += r.bytes;
      if (r.status !== 200) { errors++; continue; }
      if (!generated) lat.source.push(r.ms);
      else if (r.kind === 'preview') lat.preview.push(r.ms);
      else if (finalSeen.has(key) || !waitFinal) { lat.cached.push(r.ms); finalSeen.add(key); }
      else { lat.generated.push(r.ms); finalSeen.add(key); }
    }
  }
  const upload = (async () => {
    await new Promise(r => setTimeout(r, SECONDS * 500));
    const fd = new FormData(); fd.append('image', new Blob([readFileSync(join(ROOT, 'test/fixtures/tiny.ref.bin')).subarray(0, 10)]), 'junk.bin');
    const bad = await fetch(`${base}/api/images`, { method: 'POST', body: fd });
    const fd2 = new FormData(); fd2.append('image', new Blob([readFileSync(join(ROOT, 'viewer/demo.jpg'))]), 'again.jpg');
    const t = performance.now(); const ok = await fetch(`${base}/api/images`, { method: 'POST', body: fd2 });
    return { rejectedJunk: bad.status, uploadStatus: ok.status, uploadMs: performance.now() - t };
  })();
  await Promise.all([...Array.from({ length: VIEWERS }, viewer), upload]);
  clearInterval(rssTimer);
  const after = await (await fetch(`${base}/api/images/${id}`)).json() as any;
  const health = await (await fetch(`${base}/api/health`)).json() as any;
  proc.kill('SIGTERM');
  const res = {
    date: new Date().toISOString(), viewers: VIEWERS, seconds: SECONDS, protocol: 'HTTP/1.1 (6 connections per viewer)', image: { id, width: st.width, height: st.height },
    blocksAtStart: st.blocks.done, blocksAtEnd: after.blocks.done, blocksTotal: st.blocks.total,
    tiles, tilesPerSecond: tiles / SECONDS, errors, megabytes: bytes / 1e6, upload: await upload, serverPeakRssMiB: Math.round(rss / 2 ** 20),
    serverMemoryAtEndMiB: health.memoryMiB,
    latencyMs: Object.fromEntries(Object.entries(lat).map(([k, v]) => [k, { n: v.length, p50: pct(v, 50), p95: pct(v, 95), p99: pct(v, 99) }])),
  };
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench/results', `load-${res.date.replace(/[:.]/g, '-')}.json`), JSON.stringify(res, null, 1));
  console.log(JSON.stringify(res, null, 1));
}
main();
