/**
 * The K/V store. Entries that a waiting node still needs are pinned (held outside the LRU:
 * evicting them would only force a recomputation a moment later); everything else lives in
 * an lru-cache bounded in bytes, kept for later lazy requests and evicted when over budget.
 * The engine recomputes an evicted entry from its block's sampler chain, so eviction never
 * changes a result.
 */
import { LRUCache } from 'lru-cache';

export type KV = Float32Array | Uint16Array;

/**
 * Copy one K/V entry into a batch input at element `at`. A byte copy through Buffer: typed-array
 * `set` from an onnxruntime output buffer ran element by element here (4.6 ms vs 0.1 ms per
 * 1.5 MB entry, measured), and this copy runs for three neighbours of every node.
 */
export function copyKV(dst: KV, at: number, src: KV) {
  const b = dst.BYTES_PER_ELEMENT;
  Buffer.from(src.buffer, src.byteOffset, src.byteLength).copy(Buffer.from(dst.buffer, dst.byteOffset, dst.byteLength), at * b);
}

export class KVStore {
  private pinned = new Map<string, KV>();
  private pinnedBytes = 0;
  private lru: LRUCache<string, KV>;
  highWater = 0;
  evictions = 0;

  /** Arrays of dropped entries, reused for new ones: a fresh multi-megabyte array costs page
   *  faults on every first touch, which on this machine outweighed the copy itself. */
  private pool: KV[] = [];

  constructor(maxBytes: number, private readonly make?: () => KV) {
    this.lru = new LRUCache<string, KV>({
      maxSize: Math.max(1, maxBytes), sizeCalculation: v => Math.max(1, v.byteLength),
      // only an eviction ends an array's life here: moving an entry to the pinned map (delete)
      // or re-setting it keeps the array in use; `delete()` below recycles explicitly
      dispose: (v, _k, reason) => { if (reason === 'evict') { this.evictions++; this.release(v); } },
    });
  }

  /** An array for a new entry (recycled when possible). */
  acquire(): KV {
    if (!this.make) throw new Error('KVStore made without an array factory');
    return this.pool.pop() ?? this.make();
  }

  /** Give back an array nobody references any more. */
  release(v: KV) { if (this.make && this.pool.length < 64) this.pool.push(v); }

  get(key: string): KV | undefined { return this.pinned.get(key) ?? this.lru.get(key); }
  has(key: string): boolean { return this.pinned.has(key) || this.lru.has(key); }

  pin(key: string, v: KV) {
    this.lru.delete(key);
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
    else this.release(v);
    this.track();
  }

  unpin(key: string) { const v = this.pinned.get(key); if (v) this.keep(key, v); }
  isPinned(key: string) { return this.pinned.has(key); }
  pinnedKeys() { return [...this.pinned.keys()]; }

  delete(key: string) {
    const v = this.pinned.get(key);
    if (v) { this.pinned.delete(key); this.pinnedBytes -= v.byteLength; this.release(v); }
    const w = this.lru.peek(key);
    if (w) { this.lru.delete(key); this.release(w); }
  }

  get bytes() { return this.pinnedBytes + this.lru.calculatedSize; }
  private track() { if (this.bytes > this.highWater) this.highWater = this.bytes; }
}
