/**
 * The K/V store. Entries that a waiting node still needs are pinned (held outside the LRU:
 * evicting them would only force a recomputation a moment later); everything else lives in
 * an lru-cache bounded in bytes, kept for later lazy requests and evicted when over budget.
 * The engine recomputes an evicted entry from its block's sampler chain, so eviction never
 * changes a result.
 */
import { LRUCache } from 'lru-cache';

export type KV = Float32Array | Uint16Array;

export class KVStore {
  private pinned = new Map<string, KV>();
  private pinnedBytes = 0;
  private lru: LRUCache<string, KV>;
  highWater = 0;
  evictions = 0;

  constructor(maxBytes: number) {
    this.lru = new LRUCache<string, KV>({
      maxSize: Math.max(1, maxBytes), sizeCalculation: v => Math.max(1, v.byteLength),
      dispose: (_v, _k, reason) => { if (reason === 'evict') this.evictions++; },
    });
  }

  get(key: string): KV | undefined { return this.pinned.get(key) ?? this.lru.get(key); }
  has(key: string): boolean { return this.pinned.has(key) || this.lru.has(key); }

  pin(key: string, v: KV) {
    if (this.lru.has(key)) this.lru.delete(key);
    const old = this.pinned.get(key);
    if (old) this.pinnedBytes -= old.byteLength;
    this.pinned.set(key, v); this.pinnedBytes += v.byteLength;
    this.track();
  }

  /** Keep for possible later use, evictable. */
  keep(key: string, v: KV) {
    const old = this.pinned.get(key);
    if (old) { this.pinned.delete(key); this.pinnedBytes -= old.byteLength; }
    if (v.byteLength <= this.lru.maxSize) this.lru.set(key, v);
    this.track();
  }

  unpin(key: string) { const v = this.pinned.get(key); if (v) this.keep(key, v); }
  isPinned(key: string) { return this.pinned.has(key); }
  pinnedKeys() { return [...this.pinned.keys()]; }

  delete(key: string) {
    const v = this.pinned.get(key);
    if (v) { this.pinned.delete(key); this.pinnedBytes -= v.byteLength; }
    this.lru.delete(key);
  }

  get bytes() { return this.pinnedBytes + this.lru.calculatedSize; }
  get entries() { return this.pinned.size + this.lru.size; }
  private track() { if (this.bytes > this.highWater) this.highWater = this.bytes; }
}
