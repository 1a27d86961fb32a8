/**
 * The tiles of a fixed grid, each made once by `make`: kept in an LRU bounded in bytes (an evicted tile
 * is made again, the same), and callers asking for a tile being made share its making. The JPEG
 * restorer's LR tiles (restore.ts) and the base's output tiles (base.ts) are both such grids.
 */
import { LRUCache } from 'lru-cache';

export class TileCache<T extends { byteLength: number }, A = void> {
  private cache: LRUCache<number, T>;
  private inflight = new Map<number, Promise<T>>();

  /** `make` is given the first asker's `arg` (e.g. its priority): the making is shared, so not its abort. */
  constructor(maxBytes: number, private readonly make: (r: number, c: number, arg: A) => Promise<T>) {
    this.cache = new LRUCache({ maxSize: maxBytes, sizeCalculation: v => v.byteLength });
  }

  get(r: number, c: number, arg: A): Promise<T> {
    const k = r * 65536 + c, hit = this.cache.get(k);
    if (hit) return Promise.resolve(hit);
    let p = this.inflight.get(k);
    if (!p) {
      p = this.make(r, c, arg).then(t => { this.cache.set(k, t); return t; }).finally(() => this.inflight.delete(k));
      this.inflight.set(k, p);
    }
    return p;
  }
}
