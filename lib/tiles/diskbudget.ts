/**
 * A byte budget over the generated files of the data folder (blocks and tiles): least recently
 * used first out. Everything generated is regenerable byte for byte, so eviction loses nothing;
 * uploads (source, meta.json) are never registered here, so never evicted.
 */
import { LRUCache } from 'lru-cache';
import { readdirSync, statSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite, DiskFullError } from '../engine/atomic.js';

export class DiskBudget {
  private lru: LRUCache<string, { bytes: number; onEvict?: () => void }>;
  evictions = 0;

  constructor(readonly maxBytes: number) {
    this.lru = new LRUCache({
      maxSize: Math.max(1, Math.floor(maxBytes)), sizeCalculation: v => Math.max(1, v.bytes),
      dispose: (v, path, reason) => {
        if (reason !== 'evict') return;
        this.evictions++;
        rmSync(path, { force: true });
        v.onEvict?.();
      },
    });
  }

  /** Write a generated file atomically and count it. A full disk first gives up the least recently
   *  used generated files (room for a few like it), then one more try, then a DiskFullError. */
  write(path: string, data: Uint8Array, onEvict?: () => void) {
    try { atomicWrite(path, data); } catch (e) {
      if (!(e instanceof DiskFullError) || !this.free(4 * data.length + (1 << 20))) throw e;
      atomicWrite(path, data);
    }
    this.add(path, data.length, onEvict);
  }

  /** A file just written (or found at start); `onEvict` runs after it is deleted. */
  add(path: string, bytes: number, onEvict?: () => void) {
    if (bytes > this.lru.maxSize) { rmSync(path, { force: true }); onEvict?.(); return; }
    this.lru.set(path, { bytes, onEvict });
  }

  /** A file just read: it becomes the most recently used. */
  touch(path: string) { this.lru.get(path); }

  /** Set what happens when a file found at start is evicted (its owner registers late). */
  onEvict(path: string, f: () => void) { const v = this.lru.peek(path); if (v) v.onEvict = f; }

  get bytes() { return this.lru.calculatedSize; }

  /** Stop counting the files under `dir` (it is being deleted whole): nothing is evicted or removed. */
  forgetUnder(dir: string) {
    for (const p of [...this.lru.keys()]) if (p.startsWith(dir + '/')) { const v = this.lru.peek(p); if (v) v.onEvict = undefined; this.lru.delete(p); }
  }

  /** Make room for `bytes` more (a write failed for lack of space): evict the least recently used. */
  free(bytes: number) {
    let freed = 0;
    while (freed < bytes && this.lru.size) {
      const last = this.lru.rkeys().next().value!;     // the least recently used, without listing them all
      const v = this.lru.peek(last)!;
      freed += v.bytes;
      this.lru.delete(last);
      this.evictions++;
      rmSync(last, { force: true });
      v.onEvict?.();
    }
    return freed;
  }

  /** Register the files under `dir` that `keep` accepts, oldest first (so the LRU order starts as the files' ages). */
  scan(dir: string, keep: (path: string) => boolean) {
    const found: { path: string; bytes: number; t: number }[] = [];
    const walk = (d: string) => {
      let entries;
      try { entries = readdirSync(d, { withFileTypes: true }); } catch { return; }
      for (const e of entries) {
        const p = join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (keep(p)) { const s = statSync(p); found.push({ path: p, bytes: s.size, t: s.atimeMs }); }
      }
    };
    walk(dir);
    found.sort((a, b) => a.t - b.t);
    for (const f of found) this.add(f.path, f.bytes);
  }
}
