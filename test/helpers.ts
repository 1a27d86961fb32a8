import { readFileSync } from 'node:fs';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import sharp from 'sharp';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const FIXTURE = join(ROOT, 'test/fixtures/tiny');

/** Reference arrays written by model/infdit/export.py --fixture. */
export function loadRef() {
  const idx = JSON.parse(readFileSync(FIXTURE + '.ref.json', 'utf8'));
  const bin = readFileSync(FIXTURE + '.ref.bin');
  const get = (k: string) => {
    const e = idx.arrays[k];
    if (!e) throw new Error(`no reference array ${k}`);
    return { shape: e.shape as number[], data: new Float32Array(bin.buffer.slice(bin.byteOffset + e.offset, bin.byteOffset + e.offset + e.length * 4)) };
  };
  return { idx, get };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>) {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** A synthetic photo with detail in every block: colour waves, as PNG bytes. */
export async function wavePng(w: number, h: number) {
  const data = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++)
    data[(y * w + x) * 3 + c] = 128 + Math.round(90 * Math.sin(x / (3 + c) + y / 5));
  return sharp(data, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
}

/** Start `infdit serve` in its own process (port 0) and resolve once it says where it listens. */
export function spawnServe(args: string[], nodeArgs: string[] = []): Promise<{ proc: ChildProcess; base: string }> {
  const proc = spawn(process.execPath, [...nodeArgs, join(ROOT, 'bin/infdit.js'), 'serve', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', d => { out += d; const m = /viewer at (https?:\/\/[\d.]+:\d+)\//.exec(out); if (m) resolve({ proc, base: m[1] }); });
    proc.stderr!.on('data', d => { out += d; });
    proc.on('exit', c => reject(new Error(`server exited ${c}: ${out}`)));
  });
}

export function freePort(): Promise<number> {
  return new Promise(res => { const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as any).port; s.close(() => res(p)); }); });
}

/** A real redis-server of our own: a free port, a temp dir, no persistence; stop() removes it. */
export async function startRedis(port?: number) {
  const dir = mkdtempSync(join(tmpdir(), 'infdit-redis-'));
  port ??= await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (let i = 0; ; i++) {
    try { execFileSync('redis-cli', ['-p', String(port), 'ping'], { stdio: 'pipe' }); break; } catch {
      if (i > 50) throw new Error('redis-server did not start (is the redis-server package installed?)');
      await new Promise(r => setTimeout(r, 100));
    }
  }
  return { url: `redis://127.0.0.1:${port}`, port, stop() { proc.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); } };
}
