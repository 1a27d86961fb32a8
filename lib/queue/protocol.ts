/**
 * Region jobs on a BullMQ queue: what a job carries, what it returns, and how a stage's block grid
 * is cut into regions. Engine-level only (no tiles, no HTTP).
 *
 * A region is a rectangle of blocks of one stage. With its cone (the blocks up and left within the
 * sampler's reach, at partial depth) it is self-contained: a worker given the LR pixels under the
 * cone plus a one-block ring (each block reads its 3×3 LR neighbourhood) computes exactly the
 * blocks a whole-image render would, since the engine keys noise and masks on absolute block
 * coordinates. The job carries the image's full size, so edges are the image's edges.
 */
import sharp from 'sharp';
import { z } from 'zod';

export const QUEUE_NAME = 'infdit-regions';
export const PROTOCOL = 2;   // 2: stage-1 jobs of a JPEG may carry `restore` (an older worker would drop it)

/** Job priorities (BullMQ: 1 is the highest). */
export const PRIORITY = { viewer: 1, render: 5, fill: 10 } as const;

const int = (min: number, max: number) => z.number().int().min(min).max(max);

export const JobData = z.object({
  protocol: z.literal(PROTOCOL),
  model: z.object({ id: z.string().regex(/^[0-9a-f]{16}$/), name: z.string().max(200) }),
  stage: int(1, 8), seed: int(0, 2 ** 32 - 1),
  plan: z.object({ method: z.enum(['euler', 'heun']), steps: int(1, 1000), sigmaMin: z.number().positive(), sigmaMax: z.number().positive(), rho: z.number().positive() }),
  /** The stage's LR image: its full size, and the crop this job needs (PNG, lossless). */
  lr: z.object({ width: int(1, 2 ** 24), height: int(1, 2 ** 24), x: int(0, 2 ** 24), y: int(0, 2 ** 24), w: int(1, 2 ** 16), h: int(1, 2 ** 16), png: z.string().min(1) }),
  /** Blocks [r0, r1) × [c0, c1) of the stage's grid. */
  region: z.object({ r0: int(0, 2 ** 24), c0: int(0, 2 ** 24), r1: int(1, 2 ** 24), c1: int(1, 2 ** 24) }),
  /** Global-conditioning vector (base64 float32), for models that use one. */
  thumb: z.string().optional(),
  /** The stage's JPEG level (stage 1: jpegLevel of the uploaded file; later stages 0), for models that read one: the
   *  JPEG condition, or a JPEG-aware base. */
  jq: z.number().min(0).max(1).optional(),
  /** Restore the crop with the model's JPEG restorer at this level (lib/engine/restore.ts): stage 1 of a
   *  JPEG, for a model that has one; the crop then reaches every restorer tile's window under the region. */
  restore: z.number().gt(0).max(1).optional(),
}).refine(d => d.region.r1 > d.region.r0 && d.region.c1 > d.region.c0, 'empty region')
  .refine(d => d.lr.x + d.lr.w <= d.lr.width && d.lr.y + d.lr.h <= d.lr.height, 'LR crop outside the LR image');
export type JobData = z.infer<typeof JobData>;

export const JobResult = z.object({
  protocol: z.literal(PROTOCOL),
  /** The region's blocks side by side, PNG (edge blocks whole, past the image's edge too). */
  png: z.string().min(1), width: int(1, 2 ** 16), height: int(1, 2 ** 16),
  /** Block layer-steps the worker ran (the region's own plus its cone's: the halo's cost). */
  nodes: z.number().int().nonnegative(), ms: z.number().nonnegative(),
});
export type JobResult = z.infer<typeof JobResult>;

/** How far up and left a block's cone reaches, in blocks: one per level that reads neighbours. */
export function reach(evals: number, layers: number) { return evals * (layers + 1); }

/** The LR rectangle a region's job must carry: its cone plus a one-block ring, clamped. */
export function lrCrop(region: { r0: number; c0: number; r1: number; c1: number }, lb: number, lrW: number, lrH: number, reachBlocks: number) {
  const x = Math.max(0, (region.c0 - reachBlocks - 1) * lb), y = Math.max(0, (region.r0 - reachBlocks - 1) * lb);
  const x1 = Math.min(lrW, (region.c1 + 1) * lb), y1 = Math.min(lrH, (region.r1 + 1) * lb);
  return { x, y, w: x1 - x, h: y1 - y };
}

/** The region cell (fixed grid of `size`×`size` blocks) holding block (r, c). */
export function cellOf(r: number, c: number, size: number) { return { cr: Math.floor(r / size), cc: Math.floor(c / size) }; }
export function cellRegion(cr: number, cc: number, size: number, R: number, C: number) {
  return { r0: cr * size, c0: cc * size, r1: Math.min(R, (cr + 1) * size), c1: Math.min(C, (cc + 1) * size) };
}

export async function toPng(px: Uint8Array, width: number, height: number): Promise<string> {
  return (await sharp(Buffer.from(px.buffer, px.byteOffset, px.length), { raw: { width, height, channels: 3 } }).png({ compressionLevel: 6 }).toBuffer()).toString('base64');
}

export async function fromPng(b64: string, width: number, height: number, what: string): Promise<Uint8Array> {
  let out;
  try { out = await sharp(Buffer.from(b64, 'base64')).raw().toBuffer({ resolveWithObject: true }); } catch (e) {
    throw new Error(`${what}: not a PNG (${(e as Error).message})`);
  }
  if (out.info.width !== width || out.info.height !== height || out.info.channels !== 3)
    throw new Error(`${what}: ${out.info.width}×${out.info.height}×${out.info.channels}, expected ${width}×${height}×3`);
  return new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.length);
}

/** The URL as it may be printed: the password hidden. */
export function redact(url: string) {
  try { const u = new URL(url); if (u.password) u.password = '***'; return u.toString().replace(/\/$/, ''); } catch { return url; }
}

/** Redis URL check, before any connection: what --queue accepts. */
export function redisConnection(url: string) {
  let u: URL;
  try { u = new URL(url); } catch { throw new Error(`--queue ${redact(url)}: not a URL; expected redis://HOST:PORT (or rediss:// for TLS)`); }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new Error(`--queue ${redact(url)}: expected redis://HOST:PORT (or rediss://), got ${u.protocol}`);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  if (!Number.isInteger(db) || db < 0) throw new Error(`--queue ${redact(url)}: the path must be a database number, got ${u.pathname}`);
  return {
    host: u.hostname || '127.0.0.1', port: Number(u.port || 6379), db,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}), ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    maxRetriesPerRequest: null,   // BullMQ's requirement: commands wait through a reconnect
  };
}
