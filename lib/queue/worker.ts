/**
 * `infdit worker --queue redis://HOST:PORT`: a stateless BullMQ worker. It loads the model once,
 * takes region jobs one at a time, computes the region's blocks with the cone engine over the
 * job's LR crop, and returns the pixels through Redis. Nothing is kept between jobs.
 */
import { Worker, UnrecoverableError, type Job } from 'bullmq';
import { Stage, type LRSource } from '../engine/engine.js';
import { KVStore } from '../engine/kvstore.js';
import { MemoryBlockStore } from '../engine/blockstore.js';
import { SamplerPlan } from '../engine/sampler.js';
import type { Model } from '../engine/model.js';
import { cropClamped, type RGBImage } from '../engine/pixels.js';
import { RestoredLR } from '../engine/restore.js';
import { BaseUp } from '../engine/base.js';
import { JobData, PROTOCOL, QUEUE_NAME, fromPng, toPng, redisConnection, type JobResult } from './protocol.js';

/** The stage's LR image at its full size, of which only the job's crop is at hand: asked for a
 *  pixel outside it, it throws (the cone would have left the halo, a bug, not a silent difference). */
class CropLR implements LRSource {
  private img: RGBImage;
  constructor(readonly width: number, readonly height: number, readonly x: number, readonly y: number, w: number, h: number, px: Uint8Array) {
    this.img = { width: w, height: h, data: px };
  }
  async region(x0: number, y0: number, w: number, h: number) { return this.regionSync(x0, y0, w, h); }
  regionSync(x0: number, y0: number, w: number, h: number) {
    // clamped into the image, the rectangle must lie in the crop; then clamping to the crop's edges
    // is clamping to the image's (the crop reaches an image edge wherever a request passes it)
    const clamp = (v: number, n: number) => Math.min(Math.max(v, 0), n - 1);
    const ix0 = clamp(x0, this.width), ix1 = clamp(x0 + w - 1, this.width), iy0 = clamp(y0, this.height), iy1 = clamp(y0 + h - 1, this.height);
    if (ix0 < this.x || iy0 < this.y || ix1 >= this.x + this.img.width || iy1 >= this.y + this.img.height)
      throw new Error(`LR pixels ${ix0}..${ix1}×${iy0}..${iy1} are outside the job's crop: the region's cone is larger than its halo`);
    return cropClamped(this.img, x0 - this.x, y0 - this.y, w, h);
  }
}

export interface WorkerOptions { batch: number; kvBytes: number; lockMs: number; log?: (s: string) => void }

/** Compute one job (exported for tests and the halo benchmark: no Redis involved). */
export async function runJob(model: Model, data: JobData, o: { batch: number; kvBytes: number }): Promise<JobResult> {
  const t0 = performance.now();
  const m = model.manifest;
  const lrPx = await fromPng(data.lr.png, data.lr.w, data.lr.h, 'job LR crop');
  const crop = new CropLR(data.lr.width, data.lr.height, data.lr.x, data.lr.y, data.lr.w, data.lr.h, lrPx);
  if (data.restore !== undefined && !m.restorer) throw new UnrecoverableError('the job asks for the JPEG restorer; this model has none');
  const lr: LRSource = data.restore !== undefined ? new RestoredLR(model, crop, data.restore) : crop;
  const p = data.plan;
  const plan = new SamplerPlan(p.method, p.steps, p.sigmaMin, p.sigmaMax, p.rho);
  let thumb: Float32Array | undefined;
  if (m.global.enabled) {
    if (!data.thumb) throw new UnrecoverableError('this model uses global conditioning; the job has no thumbnail');
    const b = Buffer.from(data.thumb, 'base64');
    thumb = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
    if (thumb.length !== 3 * m.global.thumb! ** 2) throw new UnrecoverableError(`thumbnail has ${thumb.length} values, the model wants ${3 * m.global.thumb! ** 2}`);
  }
  if ((m.jpeg.enabled || m.base?.jq) && data.jq === undefined)
    throw new UnrecoverableError(`this model ${m.jpeg.enabled ? 'uses the JPEG condition' : 'has a JPEG-aware base'}; the job has no jq`);
  const store = new MemoryBlockStore();
  // a model over the base computes it here from the job's LR, on the image's grid (the crop holds its windows)
  const base = m.up === 'base' ? new BaseUp(model, lr, undefined, undefined, m.base!.jq ? data.jq : 0) : undefined;
  const stage = new Stage({ model, lr, seed: data.seed, stage: data.stage, plan, batch: o.batch, kv: new KVStore(o.kvBytes), store, thumb, jq: data.jq, base });
  const { r0, c0, r1, c1 } = data.region;
  if (r1 > stage.R || c1 > stage.C) throw new UnrecoverableError(`region ${r0}..${r1}×${c0}..${c1} is outside the ${stage.R}×${stage.C} block grid`);
  const blocks: [number, number][] = [];
  for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) blocks.push([r, c]);
  await stage.ensure(blocks, { priority: 1 });
  // whole blocks, edge blocks included past the image's edge: the master stores them as they are
  const B = stage.B, w = (c1 - c0) * B, h = (r1 - r0) * B, px = new Uint8Array(w * h * 3);
  for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) {
    const b = store.get(data.stage, r, c)!;
    for (let y = 0; y < B; y++) px.set(b.subarray(y * B * 3, (y + 1) * B * 3), (((r - r0) * B + y) * w + (c - c0) * B) * 3);
  }
  return { protocol: PROTOCOL, png: await toPng(px, w, h), width: w, height: h, nodes: stage.stats.nodes, ms: Math.round(performance.now() - t0) };
}

export async function startWorker(url: string, model: Model, o: WorkerOptions) {
  const log = o.log ?? (() => {});
  const worker = new Worker<JobData, JobResult>(QUEUE_NAME, async (job: Job) => {
    const parsed = JobData.safeParse(job.data);
    // a malformed payload will not get better on another try
    if (!parsed.success) throw new UnrecoverableError(`invalid job payload: ${parsed.error.issues.map(i => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    const d = parsed.data;
    log(`job ${job.id} started (attempt ${job.attemptsStarted ?? job.attemptsMade + 1})`);
    if (d.model.id !== model.id)
      throw new UnrecoverableError(`this worker has model ${model.manifest.name} (${model.id}); the job wants ${d.model.name} (${d.model.id}): start workers with --model pointing at the same files as the render or server`);
    const res = await runJob(model, d, o);
    log(`job ${job.id}: stage ${d.stage} blocks ${d.region.r0}..${d.region.r1 - 1}×${d.region.c0}..${d.region.c1 - 1}, ${res.nodes} layer-steps, ${res.ms} ms${d.jq !== undefined ? `, jq ${d.jq}` : ''}${d.restore !== undefined ? `, restored at ${d.restore}` : ''}`);
    return res;
  }, {
    connection: redisConnection(url), concurrency: 1,
    // the model runs in its own thread, so the lock is renewed while a job computes; a worker that
    // dies stops renewing it, and after lockMs another worker's stalled check puts the job back
    lockDuration: o.lockMs, stalledInterval: o.lockMs, maxStalledCount: 5,
  });
  worker.on('failed', (job, err) => log(`job ${job?.id} failed: ${err.message}`));
  worker.on('error', err => log(`queue: ${err.message}`));
  await worker.waitUntilReady();
  return worker;
}
