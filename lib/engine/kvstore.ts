/**
 * The state store: K/V of a block at one layer, hidden states, parked sampler states. Entries
 * that a waiting node still needs are pinned (held outside the LRU: evicting them would only
 * force a recomputation a moment later); everything else lives in an lru-cache, kept for later
 * lazy requests. The bound is on both together: pinned entries push the oldest kept ones out
 * (a full-width background fill of a 32000-px image pinned ~0.8 GB of wavefront on top of a full
 * LRU, and the server passed 2 GiB). The engine recomputes an
 * evicted entry from its block's sampler chain, so eviction never changes a result.
 */
import { LRUCache } from 'lru-cache';

export type KV = Float32Array | Uint16Array;

/**
 * Copy one entry into a batch input at element `at`. A byte copy through Buffer: typed-array
 * `set` from an onnxruntime output buffer ran element by element here (4.6 ms vs 0.1 ms per
 * 1.5 MB entry, measured), and this copy runs for three neighbours of every node.
 */
export function copyKV(dst: KV, at: number, src: KV, srcAt = 0, len = src.length - srcAt) {
  const b = dst.BYTES_PER_ELEMENT;
  Buffer.from(src.buffer, src.byteOffset + srcAt * b, len * b).copy(Buffer.from(dst.buffer, dst.byteOffset, dst.byteLength), at * b);
}

export class KVStore {
  private pinned = new Map<string, KV>();
  private pinnedBytes = 0;
  private lru: LRUCache<string, KV>;
  highWater = 0;
  evictions = 0;

  /** Arrays of dropped entries by kind, reused for new ones: a fresh multi-megabyte array costs
   *  page faults on every first touch, which on this machine outweighed the copy itself. */
  private pools = new Map<string, KV[]>();

  constructor(maxBytes: number) {
    this.lru = new LRUCache<string, KV>({
      maxSize: Math.max(1, maxBytes), sizeCalculation: v => Math.max(1, v.byteLength),
      // only an eviction ends an array's life here: moving an entry to the pinned map (delete)
      // or re-setting it keeps the array in use; `delete()` below recycles explicitly
      dispose: (v, _k, reason) => { if (reason === 'evict') { this.evictions++; this.release(v); } },
    });
  }

  /** An array of `len` elements (float16 bits when `half`), recycled when possible. */
  acquire(len: number, half = false): KV {
    return this.pools.get(`${half}:${len}`)?.pop() ?? (half ? new Uint16Array(len) : new Float32Array(len));
  }

  /** Give back an array nobody references any more. */
  release(v: KV) {
    const k = `${v instanceof Uint16Array}:${v.length}`;
    let p = this.pools.get(k);
    if (!p) this.pools.set(k, p = []);
    if (p.length < 64) p.push(v);
  }

  get(key: string): KV | undefined { return this.pinned.get(key) ?? this.lru.get(key); }
  has(key: string): boolean { return this.pinned.has(key) || this.lru.has(key); }

  pin(key: string, v: KV) {
    this.lru.delete(key);
    const old = this.pinned.get(key);
    if (old) this.pinnedBytes -= old.byteLength;
    if (old && old !== v) this.release(old);
    this.pinned.set(key, v); this.pinnedBytes += v.byteLength;
    this.trim();
    this.track();
  }

  /** Keep for possible later use, evictable. */
  keep(key: string, v: KV) {
    const old = this.pinned.get(key);
    if (old) { this.pinned.delete(key); this.pinnedBytes -= old.byteLength; if (old !== v) this.release(old); }
    if (v.byteLength <= this.lru.maxSize) this.lru.set(key, v);
    else { this.lru.delete(key); this.release(v); }
    this.trim();
    this.track();
  }

  /** Remove and return an entry (its array now belongs to the caller). */
  take(key: string): KV | undefined {
    const v = this.pinned.get(key);
    if (v) { this.pinned.delete(key); this.pinnedBytes -= v.byteLength; return v; }
    const w = this.lru.peek(key);
    if (w) this.lru.delete(key);
    return w;
  }

  pinnedKeys() { return [...this.pinned.keys()]; }

  delete(key: string) { const v = this.take(key); if (v) this.release(v); }

  get bytes() { return this.pinnedBytes + this.lru.calculatedSize; }
  /** Kept entries out, oldest first, until pinned + kept fit the bound (pinned ones never go). */
  private trim() { while (this.bytes > this.lru.maxSize && this.lru.size > 0) this.lru.pop(); }
  private track() { if (this.bytes > this.highWater) this.highWater = this.bytes; }
}
