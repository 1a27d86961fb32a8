/**
 * The lazy block engine (DESIGN.md §2). A node is (block r, c, evaluation n). Node (r,c,n)
 * needs the block's own state after evaluation n-1 and the K/V that (r-1,c,n), (r,c-1,n),
 * (r-1,c-1,n) produced. `ensure(blocks)` computes exactly the nodes in the blocks' upper-left
 * closure that are not done yet, in batches of independent nodes.
 *
 * Order: among ready nodes, higher request priority first, then the smallest r+c+n. Nodes
 * with equal r+c+n never depend on each other, so this pipelines the anti-diagonal wavefront
 * across evaluations: batches stay full and only the wavefront's K/V is alive.
 */
import type { Model } from './model.js';
import type { KV } from './kvstore.js';
import { KVStore, copyKV } from './kvstore.js';
import type { BlockStore } from './blockstore.js';
import { blockNoise } from './rng.js';
import { upsampleRegion } from './bicubic.js';
import { SamplerPlan, advance, evalInput, type BlockSampleState } from './sampler.js';

/** Where a stage reads its LR pixels: clamped to the LR image at the borders. */
export interface LRSource {
  width: number; height: number;
  /** HWC uint8 of [x0,x0+w)×[y0,y0+h), coordinates clamped into the image. */
  region(x0: number, y0: number, w: number, h: number, opt: RequestOptions): Promise<Uint8Array>;
  /** Where the pixels are at hand (the input image), the same synchronously: no scheduling gap. */
  regionSync?(x0: number, y0: number, w: number, h: number): Uint8Array;
}

export interface RequestOptions { priority?: number; signal?: AbortSignal }

export interface StageOptions {
  model: Model; lr: LRSource; seed: number; stage: number; plan: SamplerPlan;
  batch: number; kv: KVStore; store: BlockStore;
  /** Global-conditioning input (planar 3×t×t) when the model uses one: the same for every block. */
  thumb?: Float32Array;
}

export interface EngineStats { nodes: number; calls: number; onnxMs: number; jsMs: number; reruns: number }

interface Block {
  r: number; c: number;
  evals: number;                 // evaluations done in the current run
  final: boolean;                // pixels are in the block store
  rerun: boolean;                // final, but running again to regenerate evicted K/V
  rerunPrio: number;
  inflight: boolean;
  st?: BlockSampleState;
  up?: Float32Array; ctx?: Float32Array;
  preparing?: Promise<void>;
  prepAbort?: AbortController;   // cancels the LR fetch (stage-1 work) when nobody wants the block
  prio: number;                  // highest priority of an active request whose closure holds it; -1: none
}

interface Request {
  blocks: [number, number][];
  priority: number;
  resolve: () => void; reject: (e: Error) => void;
  signal?: AbortSignal; onAbort?: () => void;
}

/** The slots of UniBA in the graph's kv_nb order: top, left, top-left. */
const UP_LEFT = [[-1, 0], [0, -1], [-1, -1]] as const;

/** The existing upper/left neighbours of (r, c), with their kv_nb slot. */
function upLeft(r: number, c: number): { r: number; c: number; slot: number }[] {
  const out = [];
  for (let slot = 0; slot < 3; slot++) {
    const nr = r + UP_LEFT[slot][0], nc = c + UP_LEFT[slot][1];
    if (nr >= 0 && nc >= 0) out.push({ r: nr, c: nc, slot });
  }
  return out;
}

export class AbortError extends Error { constructor() { super('request cancelled'); this.name = 'AbortError'; } }

export class Stage {
  readonly R: number; readonly C: number; readonly N: number;
  readonly B: number; readonly lb: number;
  readonly stats: EngineStats = { nodes: 0, calls: 0, onnxMs: 0, jsMs: 0, reruns: 0 };
  /** Every node run, in order (tests count and compare them). */
  nodeLog: string[] | null = null;
  private blocks = new Map<number, Block>();
  private requests = new Set<Request>();
  private candidates = new Set<number>();
  private pumping = false;
  private listeners = new Set<(r: number, c: number) => void>();

  /** The global vector repeated for a full batch, made once (it is the same for every block). */
  private readonly thumbBatch?: Float32Array;

  constructor(readonly o: StageOptions) {
    const m = o.model.manifest;
    this.B = m.block; this.lb = m.lr_block; this.N = o.plan.count;
    this.R = Math.ceil(o.lr.height / this.lb); this.C = Math.ceil(o.lr.width / this.lb);
    if (o.thumb) {
      this.thumbBatch = new Float32Array(o.batch * o.thumb.length);
      for (let i = 0; i < o.batch; i++) this.thumbBatch.set(o.thumb, i * o.thumb.length);
    }
  }

  get outWidth() { return this.o.lr.width * this.o.model.manifest.scale; }
  get outHeight() { return this.o.lr.height * this.o.model.manifest.scale; }

  onBlockDone(fn: (r: number, c: number) => void) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  isFinal(r: number, c: number) { return this.block(r, c).final; }
  /** Finished blocks: one scan of the store, then counted as blocks finish (the progress events
   *  ask for it after every block, so it must not cost the whole grid each time). */
  private doneN = -1;
  doneCount() {
    if (this.doneN < 0) {
      let n = 0;
      for (let r = 0; r < this.R; r++) for (let c = 0; c < this.C; c++) if (this.block(r, c).final) n++;
      this.doneN = n;
    }
    return this.doneN;
  }

  private block(r: number, c: number): Block {
    const k = r * this.C + c;
    let b = this.blocks.get(k);
    if (!b) {
      b = { r, c, evals: 0, final: this.o.store.has(this.o.stage, r, c), rerun: false, rerunPrio: -1, inflight: false, prio: -1 };
      this.blocks.set(k, b);
    }
    return b;
  }

  private kvKey(r: number, c: number, n: number) { return `${this.o.stage}:${r},${c},${n}`; }

  /** Ensure the blocks' final pixels exist (in the block store). */
  ensure(blocks: [number, number][], opt: RequestOptions = {}): Promise<void> {
    for (const [r, c] of blocks)
      if (!(r >= 0 && c >= 0 && r < this.R && c < this.C)) return Promise.reject(new RangeError(`block (${r},${c}) outside the ${this.R}×${this.C} grid`));
    if (blocks.every(([r, c]) => this.block(r, c).final)) return Promise.resolve();
    if (opt.signal?.aborted) return Promise.reject(new AbortError());
    return new Promise<void>((resolve, reject) => {
      const req: Request = { blocks, priority: opt.priority ?? 0, resolve, reject, signal: opt.signal };
      if (opt.signal) {
        req.onAbort = () => { this.drop(req, true); reject(new AbortError()); };
        opt.signal.addEventListener('abort', req.onAbort, { once: true });
      }
      this.requests.add(req);
      this.applyRequest(req);
      this.pump();
    });
  }

  /** Final pixels of a block (HWC uint8, B×B). */
  read(r: number, c: number): Uint8Array {
    const px = this.o.store.get(this.o.stage, r, c);
    if (!px) throw new Error(`block (${r},${c}) of stage ${this.o.stage} is not generated`);
    return px;
  }

  /** Output pixels of a rectangle, coordinates clamped into the output image. */
  async region(x0: number, y0: number, w: number, h: number, opt: RequestOptions = {}): Promise<Uint8Array> {
    const W = this.outWidth, H = this.outHeight, B = this.B;
    const cx0 = Math.min(Math.max(x0, 0), W - 1), cx1 = Math.min(Math.max(x0 + w - 1, 0), W - 1);
    const cy0 = Math.min(Math.max(y0, 0), H - 1), cy1 = Math.min(Math.max(y0 + h - 1, 0), H - 1);
    const need: [number, number][] = [];
    for (let r = Math.floor(cy0 / B); r <= Math.floor(cy1 / B); r++)
      for (let c = Math.floor(cx0 / B); c <= Math.floor(cx1 / B); c++) need.push([r, c]);
    await this.ensure(need, opt);
    const out = new Uint8Array(w * h * 3);
    let cache: { k: number; px: Uint8Array } | null = null;
    for (let y = 0; y < h; y++) {
      const sy = Math.min(Math.max(y0 + y, 0), H - 1), br = Math.floor(sy / B), iy = sy - br * B;
      for (let x = 0; x < w; x++) {
        const sx = Math.min(Math.max(x0 + x, 0), W - 1), bc = Math.floor(sx / B), ix = sx - bc * B;
        const k = br * this.C + bc;
        if (!cache || cache.k !== k) cache = { k, px: this.read(br, bc) };
        const s = (iy * B + ix) * 3, d = (y * w + x) * 3;
        out[d] = cache.px[s]; out[d + 1] = cache.px[s + 1]; out[d + 2] = cache.px[s + 2];
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- planning

  /**
   * A request leaves. Answered ones change nothing (their closure is final); a cancelled one may
   * lower priorities, which are recomputed once before the next batch however many left.
   */
  private drop(req: Request, cancelled = false) {
    if (!this.requests.delete(req)) return;
    if (req.signal && req.onAbort) req.signal.removeEventListener('abort', req.onAbort);
    if (cancelled) { this.planDirty = true; this.pump(); }
  }

  private planDirty = false;

  /** The request's closure as a staircase: maxCol[r] = the largest wanted column at rows ≥ r. */
  private staircase(req: Request): Int32Array {
    let maxR = -1;
    for (const [r] of req.blocks) maxR = Math.max(maxR, r);
    const maxCol = new Int32Array(maxR + 1).fill(-1);
    for (const [r, c] of req.blocks) maxCol[r] = Math.max(maxCol[r], c);
    for (let r = maxR - 1; r >= 0; r--) maxCol[r] = Math.max(maxCol[r], maxCol[r + 1]);
    return maxCol;
  }

  /** A new request can only raise priorities: apply its closure alone. */
  private applyRequest(req: Request) {
    const maxCol = this.staircase(req);
    for (let r = 0; r < maxCol.length; r++)
      for (let c = 0; c <= maxCol[r]; c++) {
        const b = this.block(r, c);
        if (b.final && !b.rerun) continue;
        if (b.prio < req.priority) b.prio = req.priority;
        this.addCandidate(r * this.C + c);
      }
  }

  /** Recompute each block's active priority from the open requests' closures. */
  private replan() {
    this.planDirty = false;
    const prio = new Map<number, number>();
    for (const req of this.requests) {
      const maxCol = this.staircase(req);
      for (let r = 0; r < maxCol.length; r++)
        for (let c = 0; c <= maxCol[r]; c++) {
          const k = r * this.C + c;
          if ((prio.get(k) ?? -1) < req.priority) prio.set(k, req.priority);
        }
    }
    for (const [k, b] of this.blocks) if (!prio.has(k)) {
      b.prio = -1;
      // its LR context may be a lower stage's work in flight: stop that too
      if (b.preparing && !this.wants(b)) b.prepAbort?.abort();
    }
    for (const [k, p] of prio) {
      const b = this.block(Math.floor(k / this.C), k % this.C);
      b.prio = p;
      if (!b.final || b.rerun) this.addCandidate(k);
    }
    // K/V pinned for consumers nobody waits for any more goes back to the evictable cache.
    for (const key of this.o.kv.pinnedKeys()) {
      const [st, rest] = key.split(':');
      if (Number(st) !== this.o.stage) continue;
      const [r, c, n] = rest.split(',').map(Number);
      this.placeKV(r, c, n);
    }
  }

  private effPrio(b: Block) { return Math.max(b.prio, b.rerun ? b.rerunPrio : -1); }
  private wants(b: Block) { return this.effPrio(b) >= 0 && (!b.final || b.rerun) && b.evals < this.N; }

  /** Decide where K/V (r,c,n) lives: pinned while a wanted dependent still needs it,
   *  evictable while any unfinished dependent may need it later, else gone. */
  private placeKV(r: number, c: number, n: number, v?: KV) {
    const key = this.kvKey(r, c, n);
    let activeNeed = false, laterNeed = false;
    for (const [dr, dc] of [[1, 0], [0, 1], [1, 1]]) {
      const rr = r + dr, cc = c + dc;
      if (rr >= this.R || cc >= this.C) continue;
      const d = this.block(rr, cc);
      const pending = (!d.final || d.rerun) && d.evals <= n;
      if (pending && this.wants(d)) activeNeed = true;
      if (pending) laterNeed = true;
    }
    const val = v ?? this.o.kv.get(key);
    if (!val) return false;
    if (activeNeed) this.o.kv.pin(key, val);
    else if (laterNeed) this.o.kv.keep(key, val);
    else { this.o.kv.delete(key); return false; }
    return true;
  }

  /** Is node (b, b.evals) ready? Starts preparation and schedules reruns as side effects. */
  private ready(b: Block): boolean {
    if (!this.wants(b) || b.inflight) return false;
    const n = b.evals;
    let ok = true;
    for (const { r, c } of upLeft(b.r, b.c)) {
      if (this.o.kv.has(this.kvKey(r, c, n))) { this.placeKV(r, c, n); continue; }
      ok = false;
      const nb = this.block(r, c);
      if ((nb.final && !nb.rerun) || nb.evals > n) {
        // Its K/V at n was evicted (or never kept): run the neighbour again from the start.
        // Its sampler chain is deterministic, so the regenerated K/V is the same.
        if (!nb.inflight) {
          nb.rerun = nb.final; nb.evals = 0; nb.st = undefined; this.stats.reruns++;
          nb.rerunPrio = Math.max(nb.rerunPrio, this.effPrio(b));
          if (!nb.final) nb.prio = Math.max(nb.prio, this.effPrio(b));
          this.addCandidate(r * this.C + c);
        }
      } else if (nb.rerun && nb.rerunPrio < this.effPrio(b)) {
        nb.rerunPrio = this.effPrio(b);
      }
    }
    if (!ok) return false;
    // LR context and up(LR) are made only once the node could run: holding them for the whole
    // closure would make memory grow with the area.
    return !!b.ctx || this.prepare(b);
  }

  /** Cut the block's 3×3 LR context and its bicubic up(LR). True when done synchronously. */
  private prepare(b: Block): boolean {
    if (b.preparing) return false;
    const lb = this.lb, s = 3 * lb;
    const fill = (px: Uint8Array) => {
      const ctx = new Float32Array(3 * s * s);
      for (let i = 0; i < s * s; i++) for (let ch = 0; ch < 3; ch++) ctx[ch * s * s + i] = px[i * 3 + ch] / 127.5 - 1;
      b.ctx = ctx;
      b.up = upsampleRegion(ctx, 3, s, s, this.o.model.manifest.scale, lb, lb, this.B, this.B);
    };
    if (this.o.lr.regionSync) { fill(this.o.lr.regionSync((b.c - 1) * lb, (b.r - 1) * lb, s, s)); return true; }
    b.prepAbort = new AbortController();
    b.preparing = this.o.lr.region((b.c - 1) * lb, (b.r - 1) * lb, s, s, { priority: this.effPrio(b), signal: b.prepAbort.signal })
      .then(fill)
      .catch(e => { if (!(e instanceof AbortError)) this.fail(e); })
      .finally(() => { b.preparing = undefined; b.prepAbort = undefined; this.addCandidate(b.r * this.C + b.c); this.pump(); });
    return false;
  }

  private dirty = false;
  private addCandidate(k: number) { this.candidates.add(k); this.dirty = true; }

  /** Ready nodes, best first. Checking readiness can schedule reruns (new candidates): then
   *  look again, or the loop would stop with runnable work left. */
  private pickBatch(): Block[] {
    if (this.planDirty) this.replan();
    for (;;) {
      this.dirty = false;
      const b = this.scan();
      if (b.length || !this.dirty) return b;
    }
  }

  private scan(): Block[] {
    const ready: Block[] = [];
    for (const k of [...this.candidates]) {
      const b = this.blocks.get(k)!;
      // A block that is not ready leaves the set: whatever makes it ready (a neighbour's or its
      // own node finishing, its LR context, a new request) puts it back, so a scan costs the
      // frontier, not the closure.
      if (this.ready(b)) ready.push(b);
      else this.candidates.delete(k);
    }
    ready.sort((a, b) => this.effPrio(b) - this.effPrio(a) || (a.r + a.c + a.evals) - (b.r + b.c + b.evals) || a.r - b.r || a.c - b.c);
    return ready.slice(0, this.o.batch);
  }

  // ---------------------------------------------------------------- running

  private pump() {
    if (this.pumping) return;
    this.pumping = true;
    (async () => {
      try {
        for (;;) {
          const batch = this.pickBatch();
          if (!batch.length) break;
          await this.runBatch(batch);
          this.settle();
        }
      } catch (e) {
        this.fail(e as Error);
      } finally {
        this.pumping = false;
      }
      this.settle();
    })();
  }

  /** A failed ONNX call fails the requests waiting now; later requests try again. */
  private fail(e: Error) {
    for (const req of [...this.requests]) { this.drop(req, true); req.reject(e); }
  }

  private settle() {
    for (const req of [...this.requests])
      if (req.blocks.every(([r, c]) => this.block(r, c).final)) { this.drop(req); req.resolve(); }
  }

  /** The neighbours' K/V input is the largest buffer of a call (3 blocks' K/V per node). It is
   *  made once, for a full batch: allocating it per call (or growing it with the wavefront)
   *  paid page faults on every first touch. */
  private kvBuf: Float32Array | Uint16Array | null = null;
  private kvInput(len: number): Float32Array | Uint16Array {
    const full = this.o.batch * 3 * this.o.model.kvFloats;
    this.kvBuf ??= this.o.model.manifest.kv.dtype === 'float16' ? new Uint16Array(full) : new Float32Array(full);
    return this.kvBuf.subarray(0, len);
  }

  /** All inputs of node (b, b.evals) at hand. Checking a later block's readiness can restart an
   *  earlier one (a rerun), so the batch is checked again right before it is assembled. */
  private runnable(b: Block) {
    if (!b.ctx || !this.wants(b)) return false;
    return upLeft(b.r, b.c).every(({ r, c }) => this.o.kv.has(this.kvKey(r, c, b.evals)));
  }

  private async runBatch(all: Block[]) {
    const batch = all.filter(b => this.runnable(b));
    if (!batch.length) return;
    const t0 = performance.now();
    const { model, plan, seed, stage } = this.o;
    const m = model.manifest, nb = batch.length, BF = model.blockFloats, KF = model.kvFloats;
    const s = 3 * this.lb;
    const x = new Float32Array(nb * BF), up = new Float32Array(nb * BF), ctx = new Float32Array(nb * 3 * s * s);
    const sigma = new Float32Array(nb), pos = new Float32Array(nb * 2), present = new Float32Array(nb * 3);
    const kvNb = this.kvInput(nb * 3 * KF);
    batch.forEach((b, i) => {
      b.inflight = true;
      const n = b.evals;
      if (n === 0 || !b.st) {
        const eps = blockNoise(seed, stage, b.r, b.c, 0, BF);
        const x0 = new Float32Array(BF), s0 = plan.sigmas[0];
        for (let j = 0; j < BF; j++) x0[j] = b.up![j] + s0 * eps[j];
        b.st = { x: x0 };
      }
      x.set(evalInput(plan, n, b.st), i * BF);
      up.set(b.up!, i * BF); ctx.set(b.ctx!, i * 3 * s * s);
      sigma[i] = plan.evals[n].sigma;
      pos[2 * i] = b.r * m.grid; pos[2 * i + 1] = b.c * m.grid;
      for (const { r, c, slot } of upLeft(b.r, b.c)) {
        copyKV(kvNb, (i * 3 + slot) * KF, this.o.kv.get(this.kvKey(r, c, n))!);
        present[i * 3 + slot] = 1;
      }
      // a masked slot's values are ignored, but must be finite (0 × NaN is NaN): zero it
      for (let slot = 0; slot < 3; slot++) if (!present[i * 3 + slot]) kvNb.fill(0, (i * 3 + slot) * KF, (i * 3 + slot + 1) * KF);
    });
    const t1 = performance.now();
    const thumbs = this.thumbBatch?.subarray(0, nb * this.o.thumb!.length);
    let out;
    try {
      out = await model.run(nb, x, up, ctx, sigma, pos, kvNb, present, thumbs);
    } catch (e) {
      for (const b of batch) b.inflight = false;   // the nodes can run again on a later request
      throw e;
    }
    const t2 = performance.now();
    this.stats.calls++; this.stats.nodes += nb; this.stats.onnxMs += t2 - t1;
    batch.forEach((b, i) => {
      const n = b.evals;
      this.nodeLog?.push(`${b.r},${b.c},${n}`);
      advance(plan, n, b.st!, out.denoised.subarray(i * BF, (i + 1) * BF));
      b.evals = n + 1; b.inflight = false;
      const own = this.o.kv.acquire();
      copyKV(own, 0, out.kv.subarray(i * KF, (i + 1) * KF));
      if (!this.placeKV(b.r, b.c, n, own)) this.o.kv.release(own);
      if (b.evals === this.N) this.finish(b);
      for (const nb of upLeft(b.r, b.c)) this.placeKV(nb.r, nb.c, n);
      for (const [dr, dc] of [[0, 0], [1, 0], [0, 1], [1, 1]])
        if (b.r + dr < this.R && b.c + dc < this.C) this.addCandidate((b.r + dr) * this.C + b.c + dc);
    });
    this.stats.jsMs += (t1 - t0) + (performance.now() - t2);
  }

  private finish(b: Block) {
    const B = this.B, x = b.st!.x, px = new Uint8Array(B * B * 3), P = B * B;
    for (let i = 0; i < P; i++)
      for (let ch = 0; ch < 3; ch++) px[i * 3 + ch] = Math.min(255, Math.max(0, Math.round((x[ch * P + i] + 1) * 127.5)));
    if (!b.final) this.o.store.put(this.o.stage, b.r, b.c, px);
    const wasFinal = b.final;
    b.final = true; b.rerun = false; b.rerunPrio = -1;
    b.st = undefined; b.up = undefined; b.ctx = undefined;
    if (!wasFinal) {
      if (this.doneN >= 0) this.doneN++;
      for (const fn of this.listeners) fn(b.r, b.c);
    }
  }
}
