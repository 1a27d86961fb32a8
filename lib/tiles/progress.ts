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

/**
 * A time-left estimate that runs down with the clock. Blocks finish in bursts (a tile's cone, a band
 * of the fill, a viewer's tiles overtaking the fill), so the rate of the last few dozen blocks swung
 * the ETA from minutes to seconds and back, and even a minute's window smoothed towards its figure
 * swung 7 → 17 → 9 min over one 5-minute image (issue 40). Here the rate is the whole run's (blocks
 * since the first over the time since), which bursts and pauses barely move, and the figure shown
 * only falls: it runs down with the clock, drops to a lower estimate at once, and rises only when the
 * estimate is well over it (`riseOver`, e.g. new work: another image's demand, or a slower phase),
 * never for the small wobble of a steady render.
 */
export class EtaMeter {
  private first = -1;
  private n = 0;
  private eta: number | null = null;
  private at = 0;
  constructor(readonly riseOver = 1.3) {}

  /** One block finished at `now`. */
  tick(now = Date.now()) {
    if (this.first < 0) this.first = now;
    this.n++;
  }

  /** Seconds until `remaining` more blocks are done; null until there is a rate to go by. */
  estimate(remaining: number, now = Date.now()): number | null {
    if (remaining <= 0) return 0;
    if (this.n < 2 || now <= this.first) return this.eta === null ? null : Math.round(this.eta);
    const raw = remaining / ((this.n - 1) / ((now - this.first) / 1000));
    if (this.eta === null) this.eta = raw;
    else {
      const ran = Math.max(0, this.eta - Math.max(0, now - this.at) / 1000);
      this.eta = raw < ran || raw > this.riseOver * ran + 10 ? raw : ran;
    }
    this.at = now;
    return Math.round(this.eta);
  }
}
