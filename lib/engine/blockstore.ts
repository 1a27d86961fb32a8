/** Finished blocks (uint8 HWC pixels) behind a small interface; the disk one writes atomically. */
import { mkdirSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from './atomic.js';

export interface BlockStore {
  has(stage: number, r: number, c: number): boolean;
  get(stage: number, r: number, c: number): Uint8Array | undefined;
  put(stage: number, r: number, c: number, px: Uint8Array): void;
}

export class MemoryBlockStore implements BlockStore {
  private m = new Map<string, Uint8Array>();
  has(s: number, r: number, c: number) { return this.m.has(`${s}/${r}/${c}`); }
  get(s: number, r: number, c: number) { return this.m.get(`${s}/${r}/${c}`); }
  put(s: number, r: number, c: number, px: Uint8Array) { this.m.set(`${s}/${r}/${c}`, px); }
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
}
