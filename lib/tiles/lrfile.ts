/**
 * The upload's pixels on disk, read a rectangle at a time, so that memory does not grow with the
 * photo (a 64 Mpx upload is 192 MB of RGB; its source pyramid another 64 MB).
 *
 * images/<id>/lr/0.v    the normalised photo (8-bit sRGB, upright, flattened): libvips' own
 *                       ".v" format, which sharp writes strip by strip (a raw buffer or stream
 *                       would be made whole first: measured 243 MB RSS for a 50 Mpx JPEG,
 *                       102 MB as .v); header 64 bytes, then HWC uint8 rows
 * images/<id>/lr/<k>.rgb  the photo halved k times with dzsave's rule: the pyramid's source levels
 * images/<id>/lr/ready  written last: the folder is complete
 */
import { openSync, readSync, closeSync, writeSync, renameSync, rmSync, mkdirSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as yieldNow } from 'node:timers/promises';
import sharp from 'sharp';
import { halve, type PixelSource } from '../engine/pixels.js';
import { DiskFullError } from '../engine/atomic.js';

const V_HEADER = 64;
const V_MAGICS = [0xb6a6f208, 0x08f2a6b6];

export class RawPixels implements PixelSource {
  private fd: number | null = null;
  constructor(readonly path: string, readonly width: number, readonly height: number, readonly offset = 0) {}

  private file() { return this.fd ??= openSync(this.path, 'r'); }

  /** Whole rows [y0, y0+n), inside the image; `into`: a buffer to reuse. */
  rows(y0: number, n: number, into?: Uint8Array): Uint8Array {
    const out = into ? into.subarray(0, n * this.width * 3) : new Uint8Array(n * this.width * 3);
    readFully(this.file(), out, this.offset + y0 * this.width * 3);
    return out;
  }

  regionSync(x0: number, y0: number, w: number, h: number): Uint8Array {
    const W = this.width, H = this.height, out = new Uint8Array(w * h * 3);
    // the part inside the image is read row by row; the rest replicates the nearest edge pixel
    const ix0 = Math.min(Math.max(x0, 0), W - 1), ix1 = Math.max(Math.min(x0 + w, W), ix0 + 1);
    const row = new Uint8Array((ix1 - ix0) * 3);
    let lastY = -1;
    for (let y = 0; y < h; y++) {
      const sy = Math.min(Math.max(y0 + y, 0), H - 1);
      if (sy !== lastY) { readFully(this.file(), row, this.offset + (sy * W + ix0) * 3); lastY = sy; }
      const d = y * w * 3;
      for (let x = 0; x < w; x++) {
        const sx = Math.min(Math.max(x0 + x, ix0), ix1 - 1) - ix0;
        out[d + 3 * x] = row[3 * sx]; out[d + 3 * x + 1] = row[3 * sx + 1]; out[d + 3 * x + 2] = row[3 * sx + 2];
      }
    }
    return out;
  }

  close() { if (this.fd !== null) { closeSync(this.fd); this.fd = null; } }
}

function readFully(fd: number, buf: Uint8Array, pos: number) {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, pos + got);
    if (n === 0) throw new Error('LR file is shorter than its size says (truncated?)');
    got += n;
  }
}

export class DecodeError extends Error {}

/** Level sizes of the source pyramid: the photo halved k times down to 1×1. */
export function halvings(width: number, height: number) {
  const out = [{ width, height }];
  while (out[out.length - 1].width > 1 || out[out.length - 1].height > 1) {
    const p = out[out.length - 1];
    out.push({ width: Math.ceil(p.width / 2), height: Math.ceil(p.height / 2) });
  }
  return out;
}

export interface LRFolder { width: number; height: number; levels: RawPixels[] }

/** Open a prepared folder, or null if it is not complete. */
export function openLR(dir: string): LRFolder | null {
  if (!existsSync(join(dir, 'ready'))) return null;
  const { width, height } = readVHeader(join(dir, '0.v'));
  const levels = halvings(width, height).map((s, k) =>
    k === 0 ? new RawPixels(join(dir, '0.v'), width, height, V_HEADER) : new RawPixels(join(dir, `${k}.rgb`), s.width, s.height));
  return { width, height, levels };
}

function readVHeader(path: string) {
  const fd = openSync(path, 'r');
  try {
    const h = Buffer.alloc(V_HEADER);
    readFully(fd, h, 0);
    if (!V_MAGICS.includes(h.readUInt32BE(0))) throw new Error(`${path} is not a libvips .v file`);
    const le = h.readUInt32BE(0) === 0xb6a6f208;
    const int = (o: number) => le ? h.readInt32LE(o) : h.readInt32BE(o);
    const width = int(4), height = int(8), bands = int(12), format = int(20), coding = int(24);
    if (bands !== 3 || format !== 0 || coding !== 0) throw new Error(`${path}: ${bands} bands, format ${format}, coding ${coding}; expected 3 uchar bands`);
    if (statSync(path).size < V_HEADER + width * height * 3) throw new Error(`${path} is truncated`);
    return { width, height };
  } finally { closeSync(fd); }
}

/**
 * Decode `source` (a file) into `dir` as above with bounded memory, the same pixels as decoding it
 * whole: EXIF-rotated, alpha flattened onto white, 8-bit sRGB. A photo rotated by EXIF 90° is the
 * exception libvips cannot stream (it holds the decoded image while turning it). `failOn`: what the
 * decoder may report before the file is refused ('warning' also refuses data that ends early).
 */
export async function prepareLR(source: string, dir: string, maxPixels: number, failOn: 'truncated' | 'warning' = 'truncated'): Promise<LRFolder> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  try {
    try {
      await sharp(source, { limitInputPixels: maxPixels, failOn, sequentialRead: true })
        .rotate().flatten({ background: '#ffffff' }).toColourspace('srgb').removeAlpha()
        .toFile(join(dir, '0.v'));
    } catch (e) {
      if (/no space left|ENOSPC/i.test((e as Error).message)) throw new DiskFullError(join(dir, '0.v'));
      throw new DecodeError(`image could not be decoded (${(e as Error).message}); it may be truncated or corrupt`);
    }
    const { width, height } = readVHeader(join(dir, '0.v'));
    const sizes = halvings(width, height);
    let prev = new RawPixels(join(dir, '0.v'), width, height, V_HEADER);
    for (let k = 1; k < sizes.length; k++) {
      const path = join(dir, `${k}.rgb`), tmp = `${path}.tmp`;
      const fd = openSync(tmp, 'w');
      try {
        // 64 source rows (even, so only the last strip can be odd and replicate its edge) → 32 rows,
        // through two buffers reused strip after strip (fresh ones were ~100 MB of garbage at 50 Mpx)
        const src = new Uint8Array(64 * prev.width * 3), dst = new Uint8Array(32 * Math.ceil(prev.width / 2) * 3);
        for (let y = 0; y < prev.height; y += 64) {
          const n = Math.min(64, prev.height - y);
          const half = halve({ width: prev.width, height: n, data: prev.rows(y, n, src) }, dst);
          writeSync(fd, half.data);
          await yieldNow();   // a 64 Mpx photo is ~1 s of halving: let HTTP answers through
        }
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new DiskFullError(path);
        throw e;
      } finally { closeSync(fd); prev.close(); }
      renameSync(tmp, path);
      prev = new RawPixels(path, sizes[k].width, sizes[k].height);
    }
    prev.close();
    writeFileSync(join(dir, 'ready'), `${width}x${height}\n`);
    return openLR(dir)!;
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
