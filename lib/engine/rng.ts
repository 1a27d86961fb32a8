/**
 * Counter-based normal noise, keyed by (seed, stage, row, col, evaluation): no shared RNG
 * state, so a block's noise never depends on which blocks ran before it. Bit-for-bit the
 * generator of model/infdit/sample.py (MurmurHash3's fmix32 + Box–Muller).
 */
const GOLDEN = 0x9e3779b1;

export function fmix32(h: number): number {
  h >>>= 0;
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

export function blockKey(seed: number, stage: number, r: number, c: number, n: number): number {
  let k = seed >>> 0;
  for (const v of [stage, r, c, n]) k = fmix32((((k ^ v) >>> 0) + GOLDEN) >>> 0);
  return k;
}

/** `count` standard normals for one block, as float32. */
export function blockNoise(seed: number, stage: number, r: number, c: number, n: number, count: number): Float32Array {
  const key = blockKey(seed, stage, r, c, n);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const a = fmix32((key + Math.imul(2 * i + 1, GOLDEN)) >>> 0);
    const b = fmix32((key + Math.imul(2 * i + 2, GOLDEN)) >>> 0);
    const u1 = (a + 1) / 4294967297;
    const u2 = b / 4294967296;
    out[i] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  return out;
}
