/**
 * Progress in answers of bounded size. A status answer carries counts and a coarse map (at most
 * MAP_SIDE × MAP_SIDE cells, each the done fraction of its blocks as one byte), whatever the
 * image's size; the exact per-block state is a separate answer, run-length coded (a few bytes
 * while generation sweeps in bands or cones, 1 bit a block at worst).
 */
export const MAP_SIDE = 128;

/** Done flags (1 byte a block, row-major) → cells of k×k blocks, k the smallest that fits MAP_SIDE. */
export function coarseMap(done: Uint8Array, rows: number, cols: number) {
  const k = Math.max(1, Math.ceil(Math.max(rows, cols) / MAP_SIDE));
  const mr = Math.ceil(rows / k), mc = Math.ceil(cols / k);
  const sum = new Uint32Array(mr * mc), n = new Uint32Array(mr * mc);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
    const i = Math.floor(r / k) * mc + Math.floor(c / k);
    n[i]++; sum[i] += done[r * cols + c];
  }
  const cells = new Uint8Array(mr * mc);
  for (let i = 0; i < cells.length; i++) cells[i] = Math.round((255 * sum[i]) / n[i]);
  return { rows: mr, cols: mc, blocksPerCell: k, encoding: 'uint8-base64: done fraction × 255, row-major', data: Buffer.from(cells).toString('base64') };
}

/** Run lengths of alternating not-done / done blocks (row-major, starting with not-done), as LEB128 varints. */
export function encodeRuns(done: Uint8Array): string {
  const out: number[] = [];
  let cur = 0, run = 0;
  const push = (v: number) => { while (v >= 0x80) { out.push((v & 0x7f) | 0x80); v = Math.floor(v / 128); } out.push(v); };
  for (let i = 0; i < done.length; i++) {
    if (done[i] === cur) { run++; continue; }
    push(run); cur = done[i]; run = 1;
  }
  push(run);
  return Buffer.from(out).toString('base64');
}

/** The inverse of encodeRuns (the viewer has its own copy in viewer/app.js). */
export function decodeRuns(b64: string, total: number): Uint8Array {
  const bytes = Buffer.from(b64, 'base64'), done = new Uint8Array(total);
  let at = 0, cur = 0;
  for (let i = 0; i < bytes.length;) {
    let v = 0, mul = 1, b;
    do { b = bytes[i++]; v += (b & 0x7f) * mul; mul *= 128; } while (b & 0x80);
    if (cur) done.fill(1, at, at + v);
    at += v; cur ^= 1;
  }
  return done;
}
