/** Finished blocks (uint8 HWC pixels) behind a small interface; the disk one writes atomically. */
import { mkdirSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from './atomic.js';

export interface BlockStore {
  has(stage: number, r: number, c: number): boolean;
  get(stage: number, r: number, c: number): Uint8Array | undefined;
  put(stage: number, r: number, c: number, px: Uint8Array): void;
  /** Every stored block of a stage as [r, c]: one listing, where asking `has` block by block
   *  cost a file-system call each (seconds for a 200,000-block image's first status). */
  list(stage: number): [number, number][];
}

export class MemoryBlockStore implements BlockStore {
  private m = new Map<string, Uint8Array>();
  has(s: number, r: number, c: number) { return this.m.has(`${s}/${r}/${c}`); }
  get(s: number, r: number, c: number) { return this.m.get(`${s}/${r}/${c}`); }
  put(s: number, r: number, c: number, px: Uint8Array) { this.m.set(`${s}/${r}/${c}`, px); }
  list(s: number) {
    const out: [number, number][] = [];
    for (const k of this.m.keys()) { const [ks, r, c] = k.split('/').map(Number); if (ks === s) out.push([r, c]); }
    return out;
  }
}

/** dir/s{stage}/{r}_{c}.rgb; temp file + rename, so a crash never leaves half a block. */
export class DiskBlockStore implements BlockStore {
  constructor(readonly dir: string) { mkdirSync(dir, { recursive: true }); }
  private path(s: number, r: number, c: number) { return join(this.dir, `s${s}`, `${r}_${c}.rgb`); }
  has(s: number, r: number, c: number) { return existsSync(this.path(s, r, c)); }
  get(s: number, r: number, c: number) {
    try { const b = readFileSync(this.path(s, r, c)); return new Uint8Array(b.buffer, b.byteOffset, b.length); } catch { return undefined; }
  }
  put(s: number, r: number, c: number, px: Uint8Array) {
    mkdirSync(join(this.dir, `s${s}`), { recursive: true });
    atomicWrite(this.path(s, r, c), px);
  }
  list(s: number) {
    let names: string[];
    try { names = readdirSync(join(this.dir, `s${s}`)); } catch { return []; }
    const out: [number, number][] = [];
    for (const n of names) { const m = /^(\d+)_(\d+)\.rgb$/.exec(n); if (m) out.push([Number(m[1]), Number(m[2])]); }   // temp files are not blocks
    return out;
  }
}
