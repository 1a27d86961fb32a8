/** Finished blocks (uint8 HWC pixels) behind a small interface; the disk one writes atomically. */
import { mkdirSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite } from './atomic.js';

/** Where a disk store reports its files (the data folder's byte budget, lib/tiles/diskbudget.ts). */
export interface FileBudget {
  /** Write a generated file atomically (a full disk first gives up the oldest files) and count it. */
  write(path: string, data: Uint8Array, onEvict?: () => void): void;
  touch(path: string): void;
  onEvict(path: string, f: () => void): void;
}

export interface BlockStore {
  has(stage: number, r: number, c: number): boolean;
  get(stage: number, r: number, c: number): Uint8Array | undefined;
  put(stage: number, r: number, c: number, px: Uint8Array): void;
  /** Every stored block of a stage as [r, c]: one listing, where asking `has` block by block
   *  cost a file-system call each (seconds for a 200,000-block image's first status). */
  list(stage: number): [number, number][];
  /** Called when a stored block is removed behind the engine's back (evicted for the disk budget). */
  onEvicted?(f: (stage: number, r: number, c: number) => void): void;
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

/** dir/s{stage}/{r}_{c}.rgb; temp file + rename, so a crash never leaves half a block. With a
 *  budget, every block written or read is reported to it, and its evictions to the engine. */
export class DiskBlockStore implements BlockStore {
  private evicted = new Set<(stage: number, r: number, c: number) => void>();
  private closed = false;
  constructor(readonly dir: string, private readonly budget?: FileBudget) { mkdirSync(dir, { recursive: true }); }
  /** The folder is going away (its image was deleted): blocks that batches in flight still finish
   *  are not written (they would make the folder again). */
  close() { this.closed = true; }
  private path(s: number, r: number, c: number) { return join(this.dir, `s${s}`, `${r}_${c}.rgb`); }
  private gone(s: number, r: number, c: number) { return () => { for (const f of this.evicted) f(s, r, c); }; }
  has(s: number, r: number, c: number) { return existsSync(this.path(s, r, c)); }
  get(s: number, r: number, c: number) {
    try {
      const p = this.path(s, r, c), b = readFileSync(p);
      this.budget?.touch(p);
      return new Uint8Array(b.buffer, b.byteOffset, b.length);
    } catch { return undefined; }
  }
  put(s: number, r: number, c: number, px: Uint8Array) {
    if (this.closed) return;
    mkdirSync(join(this.dir, `s${s}`), { recursive: true });
    if (this.budget) this.budget.write(this.path(s, r, c), px, this.gone(s, r, c));
    else atomicWrite(this.path(s, r, c), px);
  }
  list(s: number) {
    let names: string[];
    try { names = readdirSync(join(this.dir, `s${s}`)); } catch { return []; }
    const out: [number, number][] = [];
    for (const n of names) {
      const m = /^(\d+)_(\d+)\.rgb$/.exec(n);          // temp files are not blocks
      if (!m) continue;
      const r = Number(m[1]), c = Number(m[2]);
      out.push([r, c]);
      this.budget?.onEvict(this.path(s, r, c), this.gone(s, r, c));   // found at start: its eviction is reported too
    }
    return out;
  }
  onEvicted(f: (stage: number, r: number, c: number) => void) { this.evicted.add(f); }
}
