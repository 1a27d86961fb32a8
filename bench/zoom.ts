/**
 * How many tiles per second a zooming viewer receives over HTTP/1.1 (6 connections, as a
 * browser allows per host) vs HTTP/2 (one connection, every request in flight), from the same
 * `infdit serve --http2` process on loopback. Tiles are pre-rendered, so this measures serving.
 *   node --import tsx bench/zoom.ts [--model FILE] [--rounds 3] [--rtt-ms 40]
 * --rtt-ms puts a relay that delays every chunk by half that each way between client and server:
 * on loopback alone there is no latency for HTTP/2's multiplexing to hide.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import https from 'node:https';
import http2 from 'node:http2';
import net from 'node:net';
import { ROOT, spawnServe } from '../test/helpers.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const model = opt('model', join(ROOT, 'model/release/infdit-s4.json')), ROUNDS = Number(opt('rounds', '3')), RTT = Number(opt('rtt-ms', '0'));
/** A TCP relay that holds every chunk RTT/2 in each direction: a network round trip on
 *  loopback (this kernel has no netem). TLS passes through untouched. */
async function delayProxy(target: URL, rtt: number): Promise<string> {
  const half = rtt / 2;
  const srv = net.createServer(client => {
    const up = net.connect(Number(target.port), target.hostname);
    client.setNoDelay(true); up.setNoDelay(true);   // Nagle would add its own waits to the relay's
    const relay = (from: net.Socket, to: net.Socket) => {
      from.on('data', d => setTimeout(() => to.write(d), half));
      from.on('end', () => setTimeout(() => to.end(), half));
      from.on('error', () => to.destroy());
    };
    relay(client, up); relay(up, client);
  });
  await new Promise<void>(r => srv.listen(0, '127.0.0.1', r));
  srv.unref();
  return `https://127.0.0.1:${(srv.address() as net.AddressInfo).port}`;
}
const log = (s: string) => process.stderr.write(s + '\n');

async function main() {
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-zoom-'));
  log('pre-rendering the demo photo…');
  execFileSync(process.execPath, [join(ROOT, 'bin/infdit.js'), 'render', join(ROOT, 'viewer/demo.jpg'), '--out', join(dataDir, 'out'), '--data-dir', dataDir, '--model', model], { stdio: 'pipe' });
  const { proc, base: direct } = await spawnServe(['--http2', '--data-dir', dataDir, '--model', model, '--no-background-fill']);
  const base = RTT ? await delayProxy(new URL(direct), RTT) : direct;
  const agent = new https.Agent({ keepAlive: true, maxSockets: 6, rejectUnauthorized: false });
  const h1 = (path: string) => new Promise<number>((resolve, reject) => https.get(base + path, { agent }, r => { let n = 0; r.on('data', d => { n += d.length; }); r.on('end', () => resolve(n)); }).on('error', reject));
  // flow-control windows like Chrome's (6 MB per stream, 15 MB per connection): with Node's
  // 64 KB default, a 40 ms round trip caps HTTP/2 at ~1.6 MB/s and it loses to 6 HTTP/1.1 sockets
  const client = http2.connect(base, { rejectUnauthorized: false, settings: { initialWindowSize: 6 << 20 } });
  client.on('connect', () => client.setLocalWindowSize(15 << 20));
  const h2 = (path: string) => new Promise<number>((resolve, reject) => { const s = client.request({ ':path': path }); let n = 0; s.on('data', (d: Buffer) => { n += d.length; }); s.on('end', () => resolve(n)); s.on('error', reject); });
  const images = JSON.parse(await new Promise<string>(res => https.get(base + '/api/images', { agent }, r => { let o = ''; r.on('data', d => { o += d; }); r.on('end', () => res(o)); })));
  const id = images.images[0].id, W = images.images[0].width, H = images.images[0].height, T = images.images[0].tileSize;
  const M = Math.ceil(Math.log2(Math.max(W, H)));
  // a zoom from the whole image to full resolution, viewport 1920×1080 around the centre: every level's visible tiles
  const zoom: string[][] = [];
  for (let L = 0; L <= M; L++) {
    const f = 2 ** (M - L), lw = Math.ceil(W / f), lh = Math.ceil(H / f);
    const cx = lw / 2, cy = lh / 2, c0 = Math.max(0, Math.floor((cx - 960) / T)), c1 = Math.min(Math.ceil(lw / T) - 1, Math.floor((cx + 960) / T));
    const r0 = Math.max(0, Math.floor((cy - 540) / T)), r1 = Math.min(Math.ceil(lh / T) - 1, Math.floor((cy + 540) / T));
    const level: string[] = [];
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) level.push(`/images/${id}_files/${L}/${c}_${r}.jpeg`);
    zoom.push(level);
  }
  const tiles = zoom.flat().length;

  const result: Record<string, number[]> = { 'HTTP/1.1': [], 'HTTP/2': [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, get] of (round % 2 ? [['HTTP/2', h2], ['HTTP/1.1', h1]] : [['HTTP/1.1', h1], ['HTTP/2', h2]]) as [string, (p: string) => Promise<number>][]) {
      const t = performance.now();
      for (const level of zoom) await Promise.all(level.map(get));   // a viewer asks a level's tiles together
      result[name].push(tiles / ((performance.now() - t) / 1000));
    }
  }
  client.close(); proc.kill('SIGTERM');
  const res = { date: new Date().toISOString(), rttMs: RTT, image: { width: W, height: H, tileSize: T }, tilesPerZoom: tiles, levels: M + 1, rounds: ROUNDS,
    tilesPerSecond: Object.fromEntries(Object.entries(result).map(([k, v]) => [k, { median: [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)], all: v.map(x => Math.round(x)) }])) };
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench/results', `zoom-${res.date.replace(/[:.]/g, '-')}.json`), JSON.stringify(res, null, 1));
  console.log(JSON.stringify(res, null, 1));
}
main();
