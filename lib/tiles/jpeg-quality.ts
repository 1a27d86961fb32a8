/**
 * The JPEG quality an uploaded file was saved at, read from its luma quantisation table: what a
 * model trained with the JPEG condition (manifest `jpeg`) is told, so it need not guess whether a
 * sharp 8×8 edge is the photo's or the encoder's. Nothing is decoded; only the markers before the
 * first scan are read.
 *
 *   jpegQuality('photo.jpg')  // 75 for a file libjpeg/Pillow/sharp saved at quality 75; 0: not a JPEG
 */
import { openSync, readSync, closeSync } from 'node:fs';

/** The standard luminance table (ITU T.81 Annex K), in natural (row-major) order. */
const LUMA = [
  16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
  14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
  49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99];

/** zigzag index i → natural index: a DQT segment lists its 64 entries in zigzag order. */
const ZIGZAG = [
  0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
  35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63];

/** libjpeg's jpeg_quality_scaling + jpeg_add_quant_table (baseline: entries clamped to 1..255). */
function scaled(q: number): number[] {
  const s = q < 50 ? Math.floor(5000 / q) : 200 - 2 * q;
  return LUMA.map(v => Math.min(255, Math.max(1, Math.floor((v * s + 50) / 100))));
}
const TABLES = Array.from({ length: 100 }, (_, i) => scaled(i + 1));

/** The quality 1..100 whose scaled standard table is nearest (sum of |differences|; the lowest q
 *  on a tie) to a luma table in natural order. An encoder with its own tables (some cameras) gets
 *  the quality that quantises about as coarsely. */
function qualityOfTable(table: ArrayLike<number>): number {
  let best = 1, bestErr = Infinity;
  TABLES.forEach((t, i) => {
    let e = 0;
    for (let j = 0; j < 64; j++) e += Math.abs(t[j] - table[j]);
    if (e < bestErr) { bestErr = e; best = i + 1; }
  });
  return best;
}

/** Reads `n` bytes at `pos` (fewer at the end). */
type Reader = (pos: number, n: number) => Buffer;

/** The luma (table 0) quantisation table of a JPEG in natural order, or null: not a JPEG, or no
 *  table 0 before the first scan. Malformed segments end the search (null), never throw. */
export function lumaTable(read: Reader): number[] | null {
  const soi = read(0, 2);
  if (soi.length < 2 || soi[0] !== 0xff || soi[1] !== 0xd8) return null;
  let pos = 2;
  for (let guard = 0; guard < 4096; guard++) {
    const m = read(pos, 4);
    if (m.length < 4 || m[0] !== 0xff) return null;
    const marker = m[1];
    if (marker === 0xff) { pos += 1; continue; }                     // fill byte
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { pos += 2; continue; }
    if (marker === 0xda || marker === 0xd9) return null;              // first scan or end: no table 0 found
    const len = m.readUInt16BE(2);
    if (len < 2) return null;
    if (marker === 0xdb) {                                            // DQT: one or more tables
      const seg = read(pos + 4, len - 2);
      if (seg.length < len - 2) return null;
      for (let i = 0; i < seg.length;) {
        const precision = seg[i] >> 4, id = seg[i] & 15, size = precision ? 128 : 64;
        if (i + 1 + size > seg.length) return null;
        if (id === 0) {
          const t = new Array<number>(64);
          for (let k = 0; k < 64; k++) t[ZIGZAG[k]] = precision ? seg.readUInt16BE(i + 1 + 2 * k) : seg[i + 1 + k];
          return t;
        }
        i += 1 + size;
      }
    }
    pos += 2 + len;
  }
  return null;
}

/** A file's (or buffer's) JPEG quality 1..100; 0 when it is not a JPEG or has no luma table. */
export function jpegQuality(input: string | Buffer): number {
  if (Buffer.isBuffer(input)) {
    const t = lumaTable((pos, n) => input.subarray(pos, pos + n));
    return t ? qualityOfTable(t) : 0;
  }
  const fd = openSync(input, 'r');
  try {
    const t = lumaTable((pos, n) => { const b = Buffer.alloc(n); return b.subarray(0, readSync(fd, b, 0, n, pos)); });
    return t ? qualityOfTable(t) : 0;
  } finally { closeSync(fd); }
}
