/**
 * The master's side of the queue (`render --queue`, `serve --queue`): blocks wanted from a render's
 * stage become region jobs on a fixed grid of cells, enqueued once (the job id names the image,
 * settings and cell, so a restart finds its jobs again), and each finished region's blocks go into
 * the render's block store, where the tile pipeline reads them as if made here.
 *
 * A second stage's job (16×) carries LR pixels that are the first stage's output: those cells are
 * ensured first, the same way. Redis being away is a wait with retries, announced on stderr; a
 * result is checked (size, PNG) before a block is stored, and a block is written atomically.
 */
import { createHash } from 'node:crypto';
import { Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import type { Render } from '../engine/render.js';
import type { Model } from '../engine/model.js';
import type { BlockStore } from '../engine/blockstore.js';
import type { PixelSource } from '../engine/pixels.js';
import { thumbnail } from '../engine/thumb.js';
import { SharedCancellable } from '../tiles/shared-promise.js';
import { AbortError } from '../engine/engine.js';
import { RestoredLR, restorerReach } from '../engine/restore.js';
import { JobData, JobResult, PROTOCOL, QUEUE_NAME, cellOf, cellRegion, fromPng, lrCrop, reach, redact, redisConnection, toPng } from './protocol.js';

/** One image's render as the master sees it. */
export interface RemoteRender { key: string; render: Render; store: BlockStore; lr: PixelSource; seed: number }

/** regionBlocks: cells for whole renders and background fill (halo work falls as they grow: 59% at
 *  16, 27% at 32, bench/queue.ts); viewerBlocks: cells for a viewer's tile (a 256-px tile is 4 blocks:
 *  its cone, no more, so the first tile comes as fast as it does locally). */
export interface RemoteOptions { regionBlocks: number; viewerBlocks: number; window: number; log?: (s: string) => void }

export interface RemoteStats { jobs: number; payloadBytes: number; resultBytes: number; workerNodes: number; blocks: number }

/** Can Redis be reached at all? A clear error at start instead of endless reconnecting. */
export async function checkRedis(url: string, timeoutMs = 5000) {
  const c = new Redis({ ...redisConnection(url), lazyConnect: true, retryStrategy: () => null, connectTimeout: timeoutMs, maxRetriesPerRequest: 1 });
  let first: Error | undefined;   // the socket's own error (ECONNREFUSED …); connect() only says "closed"
  c.on('error', (e: Error) => { first ??= e; });
  try {
    await c.connect();
    await c.ping();
  } catch (e) {
    throw new Error(`cannot reach Redis at ${redact(url)} (${(first ?? e as Error).message}); start redis-server there or fix --queue`);
  } finally { c.disconnect(); }
}

export class RemoteGenerator {
  readonly stats: RemoteStats = { jobs: 0, payloadBytes: 0, resultBytes: 0, workerNodes: 0, blocks: 0 };
  private queue: Queue; private events: QueueEvents;
  private waiting = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void; add: () => Promise<unknown> }>();
  private cells = new SharedCancellable<void>();
  private active = 0; private slots: { go: () => void; stop: () => void }[] = [];
  private poller: NodeJS.Timeout;
  private lastWarn = 0;
  private thumbs = new WeakMap<Render, string>();

  private constructor(readonly url: string, readonly model: Model, readonly o: RemoteOptions) {
    const connection = redisConnection(url);
    this.queue = new Queue(QUEUE_NAME, { connection });
    this.events = new QueueEvents(QUEUE_NAME, { connection });
    const warn = (e: Error) => {
      if (Date.now() - this.lastWarn < 10_000) return;
      this.lastWarn = Date.now();
      (o.log ?? console.error)(`infdit: Redis at ${redact(url)}: ${e.message}; waiting for it (retrying)`);
    };
    this.queue.on('error', warn); this.events.on('error', warn);
    this.events.on('completed', ({ jobId, returnvalue }) => this.settle(jobId, null, returnvalue));
    this.events.on('failed', ({ jobId }) => { void this.check(jobId); });
    // events can be missed while Redis is away: now and then, ask for the state of what we wait for
    this.poller = setInterval(() => { for (const id of this.waiting.keys()) void this.check(id); }, 5000);
    this.poller.unref();
  }

  static async open(url: string, model: Model, o: RemoteOptions) {
    await checkRedis(url);
    const g = new RemoteGenerator(url, model, o);
    await Promise.all([g.queue.waitUntilReady(), g.events.waitUntilReady()]);
    return g;
  }

  async close() {
    clearInterval(this.poller);
    for (const w of this.waiting.values()) w.reject(new Error('queue closed'));
    await Promise.all([this.events.close(), this.queue.close()]);
  }

  private settle(id: string, err: Error | null, value?: unknown) {
    const w = this.waiting.get(id);
    if (!w) return;
    this.waiting.delete(id);
    if (err) w.reject(err); else w.resolve(value);
  }

  /** No one wants this job's blocks any more: off the queue if no worker has it. A job a worker
   *  already runs (locked) is left to finish; its blocks are stored as usual. */
  private async withdraw(id: string) {
    const w = this.waiting.get(id);
    if (!w) return;
    this.waiting.delete(id);   // first: the poller must not see it gone and add it again
    let removed = 0;
    try { removed = await this.queue.remove(id); } catch { /* Redis away: treat as not removed */ }
    if (removed) { w.reject(new AbortError()); return; }
    this.waiting.set(id, w);
    void this.check(id);   // an event may have passed while it was out of `waiting`
  }

  private async check(id: string) {
    try {
      const state = await this.queue.getJobState(id);
      if (state === 'completed') { const j = await this.queue.getJob(id); this.settle(id, null, j?.returnvalue); }
      else if (state === 'failed') { const j = await this.queue.getJob(id); this.settle(id, new Error(`region job ${id} failed: ${j?.failedReason}`)); }
      // gone: a Redis restarted without its data (or flushed) lost it; it is deterministic, so ask again
      else if (state === 'unknown') await this.waiting.get(id)?.add();
    } catch { /* Redis away: the next poll asks again */ }
  }

  /** Make sure these blocks of stage `s` (0-based) are in the store, through the workers. `signal`: the
   *  caller's interest; a cell no one waits for any more has its job withdrawn if no worker took it yet. */
  async ensure(rr: RemoteRender, s: number, blocks: Iterable<[number, number]>, priority: number, size = this.o.regionBlocks, signal?: AbortSignal) {
    const st = rr.render.stages[s];
    const cells = new Map<string, { cr: number; cc: number }>();
    for (const [r, c] of blocks) if (!st.isFinal(r, c)) { const cell = cellOf(r, c, size); cells.set(`${cell.cr},${cell.cc}`, cell); }
    await Promise.all([...cells.values()].map(({ cr, cc }) => this.runCell(rr, s, cr, cc, priority, size, signal)));
  }

  /** Every block of the last stage (render --queue): every cell's job at once, the window bounding
   *  how many are on the queue. */
  async ensureAll(rr: RemoteRender, priority: number) {
    const s = rr.render.stages.length - 1, st = rr.render.stages[s], size = this.o.regionBlocks;
    const jobs: Promise<void>[] = [];
    for (let cr = 0; cr * size < st.R; cr++) for (let cc = 0; cc * size < st.C; cc++) jobs.push(this.runCell(rr, s, cr, cc, priority, size));
    await Promise.all(jobs);
  }

  /** One cell, coalesced with anyone else asking for it; called off when all of them have gone. */
  private runCell(rr: RemoteRender, s: number, cr: number, cc: number, priority: number, size: number, signal?: AbortSignal) {
    return this.cells.run(`${rr.key}/${s}/${size}/${cr},${cc}`, (sig) => this.cell(rr, s, cr, cc, priority, size, sig), signal);
  }

  private async slot(signal: AbortSignal) {
    if (signal.aborted) throw new AbortError();
    if (this.active < this.o.window) { this.active++; return; }
    await new Promise<void>((resolve, reject) => {
      const w = { go: () => { signal.removeEventListener('abort', w.stop); resolve(); },
        stop: () => { this.slots.splice(this.slots.indexOf(w), 1); reject(new AbortError()); } };
      signal.addEventListener('abort', w.stop, { once: true });
      this.slots.push(w);
    });
  }
  private release() { const n = this.slots.shift(); if (n) n.go(); else this.active--; }

  private async cell(rr: RemoteRender, s: number, cr: number, cc: number, priority: number, size: number, signal: AbortSignal) {
    const st = rr.render.stages[s];
    const region = cellRegion(cr, cc, size, st.R, st.C);
    let all = true;
    for (let r = region.r0; r < region.r1 && all; r++) for (let c = region.c0; c < region.c1; c++) if (!st.isFinal(r, c)) { all = false; break; }
    if (all) return;
    const plan = rr.render.plan, m = this.model.manifest;
    const lrW = st.o.lr.width, lrH = st.o.lr.height;
    const cone = lrCrop(region, st.lb, lrW, lrH, reach(plan.count, m.layers));
    // a model over the base reads it for every block: the job carries the LR of every base window
    // under the cone (the worker computes the base itself, on the same grid)
    const crop = m.up === 'base' && m.base ? restorerReach(cone.x, cone.y, cone.w, cone.h, lrW, lrH, m.base.tile, m.base.halo) : cone;
    if (s > 0) {
      // the LR of stage s is stage s-1's output: its blocks under the crop first (no slot held
      // while waiting for them: they need slots of their own)
      const B = rr.render.stages[s - 1].B, need: [number, number][] = [];
      for (let r = Math.floor(crop.y / B); r <= Math.floor((crop.y + crop.h - 1) / B); r++)
        for (let c = Math.floor(crop.x / B); c <= Math.floor((crop.x + crop.w - 1) / B); c++) need.push([r, c]);
      await this.ensure(rr, s - 1, need, priority, size, signal);
    }
    const id = createHash('sha256').update(JSON.stringify([PROTOCOL, this.model.id, rr.key, s, region])).digest('hex').slice(0, 24);
    // the slot first, then the pixels: a render's thousands of waiting cells hold no LR crops
    await this.slot(signal);
    let res: JobResult;
    try {
      // a JPEG's stage 1 is restored by the worker (this process may hold no graphs): the job carries
      // the raw LR under every restorer tile its crop touches, windows included
      const restored = st.o.lr instanceof RestoredLR ? st.o.lr : null;
      const raw = restored ? restorerReach(crop.x, crop.y, crop.w, crop.h, lrW, lrH, m.restorer!.tile, m.restorer!.halo, m.restorer!.offset ?? 0) : crop;
      const lrPx = s === 0 ? rr.lr.regionSync(raw.x, raw.y, raw.w, raw.h) : await rr.render.stages[s - 1].region(crop.x, crop.y, crop.w, crop.h);
      const data: JobData = {
        protocol: PROTOCOL, model: { id: this.model.id, name: m.name }, stage: s + 1, seed: rr.seed,
        plan: { method: plan.method, steps: plan.steps, sigmaMin: plan.sMin, sigmaMax: plan.sMax, rho: plan.rho },
        lr: { width: lrW, height: lrH, ...raw, png: await toPng(lrPx, raw.w, raw.h) }, region, thumb: this.thumb(rr),
        ...(m.jpeg.enabled || m.base?.jq ? { jq: st.o.jq ?? 0 } : {}),
        ...(restored ? { restore: restored.jq } : {}),
      };
      JobData.parse(data);
      res = await this.submit(id, data, priority, signal);
    } finally { this.release(); }
    const B = st.B, w = (region.c1 - region.c0) * B, h = (region.r1 - region.r0) * B;
    const px = await fromPng(res.png, w, h, `result of region job ${id}`);
    for (let r = region.r0; r < region.r1; r++) for (let c = region.c0; c < region.c1; c++) {
      if (st.isFinal(r, c)) continue;
      const b = new Uint8Array(B * B * 3);
      for (let y = 0; y < B; y++) b.set(px.subarray((((r - region.r0) * B + y) * w + (c - region.c0) * B) * 3, (((r - region.r0) * B + y) * w + (c - region.c0 + 1) * B) * 3), y * B * 3);
      rr.store.put(s + 1, r, c, b);
      st.adopt(r, c);
      this.stats.blocks++;
    }
    this.stats.workerNodes += res.nodes;
  }

  private thumb(rr: RemoteRender) {
    const m = this.model.manifest;
    if (!m.global.enabled) return undefined;
    let t = this.thumbs.get(rr.render);
    if (!t) { const f = thumbnail(rr.lr, m.global.thumb!); t = Buffer.from(f.buffer, f.byteOffset, f.byteLength).toString('base64'); this.thumbs.set(rr.render, t); }
    return t;
  }

  private async submit(id: string, data: JobData, priority: number, signal: AbortSignal): Promise<JobResult> {
    // removed by us once its blocks are stored; the ages only clean up after a master that died first
    const add = () => this.queue.add('region', data, { jobId: id, priority, attempts: 3, backoff: { type: 'exponential', delay: 2000 }, removeOnComplete: { age: 86400 }, removeOnFail: { age: 7 * 86400 } });
    const done = new Promise<unknown>((resolve, reject) => this.waiting.set(id, { resolve, reject, add }));
    const payload = JSON.stringify(data).length;
    await add();
    this.stats.jobs++; this.stats.payloadBytes += payload;
    void this.check(id);   // already finished (a restart finding its job done): no event will come
    const onAbort = () => { void this.withdraw(id); };
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    const raw = await done.finally(() => signal.removeEventListener('abort', onAbort));
    const parsed = JobResult.safeParse(typeof raw === 'string' ? JSON.parse(raw) : raw);
    if (!parsed.success) throw new Error(`region job ${id} returned an invalid result: ${parsed.error.issues.map(i => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    this.stats.resultBytes += parsed.data.png.length;
    await this.queue.remove(id).catch(() => {});   // its pixels are in the block store now
    return parsed.data;
  }
}
