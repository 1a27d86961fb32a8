/**
 * The probes an attacker would run against a server started with its defaults, through a real
 * `infdit serve` on this machine (loopback only): small JPEGs whose headers claim 8000×8000, and a
 * flood of distinct noise PNGs until the upload budget refuses. Prints bytes sent, bytes on disk
 * and the statuses (JSON, kept in bench/results/); never fails.
 *
 *   node --import tsx bench/abuse.ts [--budget-mb 256] [--files 400] [--px 1000]
 */
import { mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { spawnServe, FIXTURE } from '../test/helpers.js';
import { saveResult } from './common.js';

const arg = (name: string, d: number) => { const i = process.argv.indexOf(name); const v = i > 0 ? Number(process.argv[i + 1]) : d; if (!(v > 0)) throw new Error(`${name} takes a positive number`); return v; };
const budgetMb = arg('--budget-mb', 256), files = arg('--files', 400), px = arg('--px', 1000);
const du = (d: string): number => { try { return readdirSync(d, { withFileTypes: true }).reduce((a, e) => a + (e.isDirectory() ? du(join(d, e.name)) : statSync(join(d, e.name)).size), 0); } catch { return 0; } };

const dataDir = mkdtempSync(join(tmpdir(), 'infdit-abuse-'));
// the fixture model: the probes are about uploads, not generation; no rate limit, so the budget is what stops the flood
const { proc, base } = await spawnServe(['--model', FIXTURE + '.json', '--data-dir', dataDir, '--demo', 'false', '--no-background-fill',
  '--upload-budget-mb', String(budgetMb), '--upload-rate-limit', '0']);
const post = async (bytes: Buffer, name: string) => {
  const fd = new FormData();
  fd.append('image', new Blob([new Uint8Array(bytes)]), name);
  return (await fetch(`${base}/api/images`, { method: 'POST', body: fd })).status;
};
try {
  // 1. amplification (first: the budget is empty, so what refuses them is the decoder): 2.4 KB JPEGs whose headers claim 8000×8000 (data for 64×48)
  const amp: Record<number, number> = {};
  const before = du(join(dataDir, 'images'));
  let ampSent = 0;
  for (let i = 0; i < 10; i++) {
    const j = Buffer.from(await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 10 * i, g: 90, b: 60 } } }).jpeg({ quality: 75 }).toBuffer());
    const sof = j.indexOf(Buffer.from([0xff, 0xc0]));
    j.writeUInt16BE(8000, sof + 5); j.writeUInt16BE(8000, sof + 7);
    ampSent += j.length;
    const st = await post(j, `liar${i}.jpg`);
    amp[st] = (amp[st] ?? 0) + 1;
  }
  const amplification = { filesSent: 10, bytesSent: ampSent, bytesAddedOnDisk: du(join(dataDir, 'images')) - before, statuses: amp };
  // 2. flood: distinct noise PNGs (incompressible: each is what it costs)
  let sent = 0, s = 1;
  const statuses: Record<number, number> = {};
  const t0 = performance.now();
  for (let i = 0; i < files; i++) {
    const raw = Buffer.alloc(px * px * 3);
    for (let j = 0; j < raw.length; j++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; raw[j] = s >>> 24; }
    const png = await sharp(raw, { raw: { width: px, height: px, channels: 3 } }).png({ compressionLevel: 1 }).toBuffer();
    sent += png.length;
    const st = await post(png, `noise${i}.png`);
    statuses[st] = (statuses[st] ?? 0) + 1;
    if ((statuses[507] ?? 0) >= 5) break;
  }
  const flood = { filesSent: Object.values(statuses).reduce((a, b) => a + b, 0), bytesSent: sent, bytesOnDisk: du(join(dataDir, 'images')),
    budgetBytes: budgetMb * 2 ** 20, statuses, seconds: +((performance.now() - t0) / 1000).toFixed(1) };
  console.error(JSON.stringify({ flood }));

  saveResult('abuse', { date: new Date().toISOString(), flood, amplification });
} finally { proc.kill('SIGTERM'); }
