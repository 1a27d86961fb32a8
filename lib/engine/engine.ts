/**
 * The lazy block engine (DESIGN.md §2). A node is (block r, c, level), level = n·(L+1) + k:
 * evaluation n of the sampler, step k of it — k = 0 the input stage (tokens h and layer 0's
 * K/V), k = l+1 layer l (h after it and layer l+1's K/V; the last layer gives the denoised
 * block). UniBA's dependency is per layer: node (n, k ≥ 1) of a block needs its own state at
 * (n, k-1) and the layer-(k-1) K/V of its top, left and top-left neighbours, i.e. their state
 * at (n, k-1); node (n, 0) needs the block's own evaluation n-1. So a block wanted at level λ
 * needs its neighbours only to level der(λ) < λ, and the closure of a block is a cone: a block
 * d steps up/left is needed to depth L-d of the same evaluation, not the upper-left rectangle.
 *
 * Demand: a request raises its blocks to the top level; each raise propagates der(λ) to the
 * three upper/left neighbours unless their K/V at that level is already stored (a far tile
 * costs its cone, wherever it lies). Every state lives in the byte-bounded store (kvstore.ts):
 * pinned while a wanted node needs it, evictable while an unfinished block might, freed
 * otherwise; an evicted one is recomputed from the block's start, deterministically.
 *
 * Order: among ready nodes, higher request priority first, then the smallest r+c+level (the
 * wavefront: live state stays a band along it); a batch is nodes of one graph. A priority's whole
 * part is its class (a batch never mixes classes); its fraction orders requests inside the class
 * (the viewer's tiles nearest the view's centre first) without splitting their batches.
 */
import type { Model, Feeds, Arr } from './model.js';
import { KVStore, copyKV } from './kvstore.js';
import type { BlockStore } from './blockstore.js';
import { blockNoise } from './rng.js';
import { upsampleRegion } from './bicubic.js';
import type { BaseUp, PreviewGate } from './base.js';
import { SamplerPlan, advance, evalInput, type BlockSampleState } from './sampler.js';
import { toPlanar, fromPlanar } from './pixels.js';

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
  /** The JPEG condition (jpegLevel of this stage's LR file; 0: not a JPEG) when the model has one. */
  jq?: number;
  /** The transformer's up(LR) when the model was trained over a base (manifest "up": "base"); absent: bicubic. */
  base?: BaseUp;
  /** While a viewer's previews are being made, start no batch (base.ts PreviewGate). */
  gate?: PreviewGate;
}

/** nodes and calls run; modelMs: the model thread's time in them; jsMs: this thread's time
 *  assembling and unpacking batches; reruns: blocks run again for evicted state; byClass: nodes
 *  run per priority class (the whole part of the priority they ran for). */
export interface EngineStats { nodes: number; calls: number; modelMs: number; jsMs: number; reruns: number; byClass: Record<number, number> }

/** A priority's class: requests of one class share batches (Stage.choose). */
export const priorityClass = (p: number) => Math.floor(p);

interface Block {
  r: number; c: number;
  final: boolean;                // pixels are in the block store
  lvl: number;                   // last level done in the current run; -1: none
  need: number;                  // level some open request needs; -1: none
  prio: number;                  // highest priority among those requests; -1: none
  inflight: boolean;
  st?: BlockSampleState;         // sampler state while the block is active (parked in the store when idle)
  up?: Float32Array; ctx?: Float32Array;
  preparing?: Promise<void>;
  prepAbort?: AbortController;   // cancels the LR fetch (stage-1 work) when nobody wants the block
}

interface Request {
  blocks: [number, number][];
  priority: number;
  resolve: () => void; reject: (e: Error) => void;
  signal?: AbortSignal; onAbort?: () => void;
}

/** The slots of UniBA in the graphs' kv_nb order: top, left, top-left. */
const UP_LEFT = [[-1, 0], [0, -1], [-1, -1]] as const;
/** Who consumes a block's K/V: itself and the blocks below, right, below-right. */
const CONSUMERS = [[0, 0], [1, 0], [0, 1], [1, 1]] as const;

export class AbortError extends Error { constructor() { super('request cancelled'); this.name = 'AbortError'; } }

export class Stage {
  readonly R: number; readonly C: number; readonly N: number;
  readonly B: number; readonly lb: number;
  /** Levels per evaluation (input stage + one per layer), and the last level. */
  readonly S: number; readonly TOP: number;
  readonly stats: EngineStats = { nodes: 0, calls: 0, modelMs: 0, jsMs: 0, reruns: 0, byClass: {} };
  /** Every node run, as "r,c,level", in order (tests count and compare them). */
  nodeLog: string[] | null = null;
  private blocks = new Map<number, Block>();
  private planned = new Set<Block>();
  private requests = new Set<Request>();
  private candidates = new Set<Block>();
  private pumping = false;
  private listeners = new Set<(r: number, c: number) => void>();
  private readonly L: number; private readonly cross: boolean;
  private readonly half: boolean;

  constructor(readonly o: StageOptions) {
    const m = o.model.manifest;
    this.B = m.block; this.lb = m.lr_block; this.N = o.plan.count;
    this.L = m.layers; this.S = m.layers + 1; this.TOP = this.N * this.S - 1;
    this.cross = m.config.lr_cross_attn; this.half = m.kv.dtype === 'float16';
    this.R = Math.ceil(o.lr.height / this.lb); this.C = Math.ceil(o.lr.width / this.lb);
    // a block evicted from the store (disk budget) is no longer final: asked again, it is made again
    o.store.onEvicted?.((st, r, c) => {
      if (st !== this.o.stage) return;
      const k = r * this.C + c;
      if (!this.finalMap?.[k]) return;
      this.forget(this.block(r, c));
      // an open request may be waiting for it (evicted before the request settled): plan again
      this.planDirty = true;
      this.pump();
    });
    o.gate?.onIdle(() => this.pump());
  }

  get outWidth() { return this.o.lr.width * this.o.model.manifest.scale; }
  get outHeight() { return this.o.lr.height * this.o.model.manifest.scale; }

  onBlockDone(fn: (r: number, c: number) => void) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  isFinal(r: number, c: number) { return this.finals()[r * this.C + c] === 1; }
  /** Finished blocks: one scan of the store, then counted as blocks finish (the progress events
   *  ask for it after every block, so it must not cost the whole grid each time). */
  private doneN = -1;
  doneCount() {
    if (this.doneN < 0) {
      let n = 0;
      for (const f of this.finals()) n += f;
      this.doneN = n;
    }
    return this.doneN;
  }

  /** One byte per block, 1 where its pixels are in the store: the blocks already there when this
   *  stage began (a restart's, listed once), then kept as blocks finish or are evicted. Block
   *  objects exist only for blocks being worked on (sweep()); this is all that lasts per block. */
  private finalMap: Uint8Array | null = null;
  private finals() {
    if (!this.finalMap) {
      this.finalMap = new Uint8Array(this.R * this.C);
      for (const [r, c] of this.o.store.list(this.o.stage)) if (r < this.R && c < this.C) this.finalMap[r * this.C + c] = 1;
    }
    return this.finalMap;
  }
  private setFinal(b: Block, f: boolean) { b.final = f; this.finals()[b.r * this.C + b.c] = f ? 1 : 0; }

  private block(r: number, c: number): Block {
    const k = r * this.C + c;
    let b = this.blocks.get(k);
    if (!b) {
      b = { r, c, final: this.finals()[k] === 1, lvl: -1, need: -1, prio: -1, inflight: false };
      this.blocks.set(k, b);
    }
    return b;
  }

  /** Drop the Block objects nobody refers to and that hold nothing the final map does not: idle
   *  and final, or idle and never started. Without this a background fill of a gigapixel image
   *  would keep an object per block (3 M of them for the 16× cascade's second stage). */
  private sweepAt = 4096;
  private sweep() {
    if (this.blocks.size < this.sweepAt) return;
    for (const [k, b] of this.blocks) {
      if (b.inflight || b.need >= 0 || b.prio >= 0 || b.st || b.preparing || this.planned.has(b) || this.candidates.has(b)) continue;
      if (b.final || b.lvl < 0) this.blocks.delete(k);
    }
    this.sweepAt = Math.max(4096, 2 * this.blocks.size);
  }

  private *upLeft(b: Block) {
    for (let slot = 0; slot < 3; slot++) {
      const r = b.r + UP_LEFT[slot][0], c = b.c + UP_LEFT[slot][1];
      if (r >= 0 && c >= 0) yield { nb: this.block(r, c), slot };
    }
  }

  // Store keys: K/V of a level (k < L), hidden state + cond after a level, parked sampler state at an evaluation's start.
  private kvKey(b: Block, lvl: number) { return `${this.o.stage}k:${b.r},${b.c},${lvl}`; }
  private hKey(b: Block, lvl: number) { return `${this.o.stage}h:${b.r},${b.c},${lvl}`; }
  private stKey(b: Block, n: number) { return `${this.o.stage}x:${b.r},${b.c},${n}`; }

  /** The neighbours' level that node `lvl` consumes: (n, k-1), or (n-1, L-1) for an input stage. */
  private der(lvl: number) { return lvl % this.S >= 1 ? lvl - 1 : lvl - 2; }

  /** Ensure the blocks' final pixels exist (in the block store). */
  ensure(blocks: [number, number][], opt: RequestOptions = {}): Promise<void> {
    for (const [r, c] of blocks)
      if (!(r >= 0 && c >= 0 && r < this.R && c < this.C)) return Promise.reject(new RangeError(`block (${r},${c}) outside the ${this.R}×${this.C} grid`));
    if (blocks.every(([r, c]) => this.isFinal(r, c))) return Promise.resolve();
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

  /** The open requests at or above a priority, and the distinct unfinished blocks they still
   *  name: the work still wanted at that priority (what a withdrawn view must bring to zero). */
  demand(minPriority: number) {
    let requests = 0;
    const blocks = new Set<number>();
    for (const req of this.requests) {
      if (req.priority < minPriority) continue;
      requests++;
      for (const [r, c] of req.blocks) if (!this.isFinal(r, c)) blocks.add(r * this.C + c);
    }
    return { requests, blocks: blocks.size };
  }

  /** Final pixels of a block (HWC uint8, B×B). */
  read(r: number, c: number): Uint8Array {
    const px = this.o.store.get(this.o.stage, r, c);
    if (!px) throw new Error(`block (${r},${c}) of stage ${this.o.stage} is not generated`);
    return px;
  }

  /** Output pixels of a rectangle, coordinates clamped into the output image. */
  /** The blocks under an output rectangle, coordinates clamped into the output image. */
  blocksIn(x0: number, y0: number, w: number, h: number): [number, number][] {
    const W = this.outWidth, H = this.outHeight, B = this.B;
    const cx0 = Math.min(Math.max(x0, 0), W - 1), cx1 = Math.min(Math.max(x0 + w - 1, 0), W - 1);
    const cy0 = Math.min(Math.max(y0, 0), H - 1), cy1 = Math.min(Math.max(y0 + h - 1, 0), H - 1);
    const need: [number, number][] = [];
    for (let r = Math.floor(cy0 / B); r <= Math.floor(cy1 / B); r++)
      for (let c = Math.floor(cx0 / B); c <= Math.floor(cx1 / B); c++) need.push([r, c]);
    return need;
  }

  async region(x0: number, y0: number, w: number, h: number, opt: RequestOptions = {}): Promise<Uint8Array> {
    const need = this.blocksIn(x0, y0, w, h);
    // The blocks are read once ensured; one evicted in between (disk budget) is made again.
    for (let attempt = 0; ; attempt++) {
      await this.ensure(need, opt);
      const px = new Map<number, Uint8Array>();
      for (const [r, c] of need) {
        const p = this.o.store.get(this.o.stage, r, c);
        if (p) px.set(r * this.C + c, p);
      }
      if (px.size === need.length) return this.assemble(x0, y0, w, h, px);
      if (attempt >= 3) throw new Error(`blocks of stage ${this.o.stage} keep disappearing from the block store (a disk budget far too small?)`);
      for (const [r, c] of need) if (!px.has(r * this.C + c)) { const b = this.block(r, c); if (b.final) this.forget(b); }
    }
  }

  /** Blocks put into the store by someone else (a queue worker's region): final from now on,
   *  and announced as if finished here. */
  adopt(r: number, c: number) {
    if (this.isFinal(r, c)) return;
    if (!this.o.store.has(this.o.stage, r, c)) throw new Error(`block (${r},${c}) of stage ${this.o.stage} is not in the store`);
    const b = this.block(r, c);
    this.setFinal(b, true);
    if (this.doneN >= 0) this.doneN++;
    for (const fn of this.listeners) fn(r, c);
  }

  /** A final block whose pixels left the store: not final any more, to be made again from its start. */
  private forget(b: Block) {
    this.setFinal(b, false);
    if (this.doneN >= 0) this.doneN--;
    if (!b.inflight && b.lvl >= this.TOP) { b.lvl = -1; b.st = undefined; }
  }

  private assemble(x0: number, y0: number, w: number, h: number, px: Map<number, Uint8Array>) {
    const W = this.outWidth, H = this.outHeight, B = this.B;
    const out = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++) {
      const sy = Math.min(Math.max(y0 + y, 0), H - 1), br = Math.floor(sy / B), iy = sy - br * B;
      for (let x = 0; x < w; x++) {
        const sx = Math.min(Math.max(x0 + x, 0), W - 1), bc = Math.floor(sx / B), ix = sx - bc * B;
        const p = px.get(br * this.C + bc)!, s = (iy * B + ix) * 3, d = (y * w + x) * 3;
        out[d] = p[s]; out[d + 1] = p[s + 1]; out[d + 2] = p[s + 2];
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- planning

  /** A request leaves. Its demand is recomputed away once before the next batch, however many left. */
  private drop(req: Request, cancelled = false) {
    if (!this.requests.delete(req)) return;
    if (req.signal && req.onAbort) req.signal.removeEventListener('abort', req.onAbort);
    this.planDirty = true;
    if (cancelled) this.pump();
  }

  private planDirty = false;

  private applyRequest(req: Request) {
    for (const [r, c] of req.blocks) this.raise(this.block(r, c), this.TOP, req.priority, true);
  }

  /**
   * Block `start` is needed at level `lvl` (as a target: its final pixels; else: its K/V at
   * that level). Propagates the cone: each neighbour is needed at der(level), unless its K/V
   * there is stored already.
   */
  private raise(start: Block, lvl: number, prio: number, target = false) {
    const work: [Block, number, boolean][] = [[start, lvl, target]];
    while (work.length) {
      const [b, l, tgt] = work.pop()!;
      if (tgt ? b.final : this.o.kv.has(this.kvKey(b, l))) continue;
      if (!tgt && b.lvl >= l) {
        // past that level, but its K/V there is gone (evicted): run the block again from its start
        if (b.inflight) continue;   // re-checked when its node lands
        this.reset(b);
      }
      if (b.need >= l && b.prio >= prio) continue;
      b.need = Math.max(b.need, l); b.prio = Math.max(b.prio, prio);
      this.planned.add(b);
      this.addCandidate(b);
      const d = this.der(l);
      if (d >= 0) for (const { nb } of this.upLeft(b)) work.push([nb, d, false]);
    }
  }

  /** Forget a block's run (its states are gone or stale); its sampler chain gives the same values again. */
  private reset(b: Block) {
    if (b.lvl >= 0) {
      this.o.kv.delete(this.hKey(b, b.lvl));
      if (b.lvl % this.S < this.L) { const l = b.lvl; b.lvl = -1; this.placeKV(b, l); }
    }
    b.lvl = -1; b.st = undefined;
    this.stats.reruns++;
    this.addCandidate(b);
  }

  /** Recompute every block's demand from the open requests (after a cancellation or an answer). */
  private replan() {
    this.planDirty = false;
    const before = [...this.planned];
    for (const b of before) { b.need = -1; b.prio = -1; }
    this.planned.clear();
    for (const req of this.requests) this.applyRequest(req);
    for (const b of before) if (!this.active(b)) {
      // its LR context may be a lower stage's work in flight: stop that too
      if (b.preparing) b.prepAbort?.abort();
      this.park(b);
    }
    // states pinned for consumers nobody waits for any more go back to the evictable cache
    for (const key of this.o.kv.pinnedKeys()) {
      const m = /^(\d+)([khx]):(\d+),(\d+),(\d+)$/.exec(key)!;
      if (Number(m[1]) !== this.o.stage) continue;
      const b = this.block(Number(m[3]), Number(m[4])), l = Number(m[5]);
      if (m[2] === 'k') this.placeKV(b, l); else if (m[2] === 'h') this.placeH(b, l);
    }
  }

  private active(b: Block) { return b.need > b.lvl; }

  /**
   * Decide where the K/V of (b, lvl) lives: pinned while a wanted consumer still needs it,
   * evictable while any consumer has not consumed it yet, else gone.
   */
  private placeKV(b: Block, lvl: number, v?: Arr) {
    const key = this.kvKey(b, lvl), use = lvl + 1;
    let activeNeed = false, laterNeed = false;
    for (const [dr, dc] of CONSUMERS) {
      const r = b.r + dr, c = b.c + dc;
      if (r >= this.R || c >= this.C) continue;
      const z = this.block(r, c);
      if (dr === 0 && dc === 0 ? z.lvl !== lvl : z.lvl >= use) continue;   // consumed already (or, for itself, not next)
      if (z.need >= use) activeNeed = true;
      // not consumed yet: kept while the byte bound allows, even for a final consumer (a restart's
      // final blocks are run again for their own neighbours' K/V; dropping these made each of them
      // reset its upper neighbours, and those theirs: 31,000 reruns on a 165-block image)
      else laterNeed = true;
    }
    const val = v ?? this.o.kv.get(key);
    if (!val) return false;
    if (activeNeed) this.o.kv.pin(key, val);
    else if (laterNeed) this.o.kv.keep(key, val);
    else { if (v) this.o.kv.release(v); this.o.kv.delete(key); return false; }
    return true;
  }

  /** A hidden state is consumed only by the block's own next node. */
  private placeH(b: Block, lvl: number, v?: Arr) {
    const key = this.hKey(b, lvl);
    const val = v ?? this.o.kv.get(key);
    if (!val) return;
    if (b.lvl !== lvl) { if (v) this.o.kv.release(v); this.o.kv.delete(key); }
    else if (b.need > lvl) this.o.kv.pin(key, val);
    else this.o.kv.keep(key, val);
  }

  /** An idle block gives back what it can rebuild (its LR context) and parks its sampler state. */
  private park(b: Block) {
    if (b.inflight || this.active(b)) return;
    b.up = undefined; b.ctx = undefined;
    if (b.lvl >= 0 && b.lvl % this.S < this.L) this.placeH(b, b.lvl);
    if (!b.st) return;
    const n = Math.floor((b.lvl + 1) / this.S);         // the evaluation whose start b.st is
    if (n > 0 && b.lvl < this.TOP) this.o.kv.keep(this.stKey(b, n), this.packState(b.st, n));
    b.st = undefined;                                  // evaluation 0's start is the noise: rebuilt
  }

  private packState(st: BlockSampleState, n: number): Float32Array {
    const BF = this.o.model.blockFloats, corr = this.o.plan.evals[n].corrector;
    const out = this.o.kv.acquire(corr ? 3 * BF : BF) as Float32Array;
    out.set(st.x);
    if (corr) { out.set(st.xPred!, BF); out.set(st.d!, 2 * BF); }
    return out;
  }

  private unpackState(v: Float32Array, n: number): BlockSampleState {
    const BF = this.o.model.blockFloats;
    const st: BlockSampleState = { x: v.slice(0, BF) };
    if (this.o.plan.evals[n].corrector) { st.xPred = v.slice(BF, 2 * BF); st.d = v.slice(2 * BF, 3 * BF); }
    this.o.kv.release(v);
    return st;
  }

  /** Is b's next node ready? Starts LR preparation, unparks state and raises neighbours as side effects. */
  private ready(b: Block): boolean {
    if (b.inflight || !this.active(b)) return false;
    const l = b.lvl + 1, n = Math.floor(l / this.S), k = l % this.S;
    if (k >= 1 && !(this.o.kv.has(this.hKey(b, l - 1)) && this.o.kv.has(this.kvKey(b, l - 1)))) { this.reset(b); return this.ready(b); }
    if ((k === 0 || k === this.L) && !b.st && n > 0) {
      const v = this.o.kv.take(this.stKey(b, n));
      if (!v) { this.reset(b); return this.ready(b); }
      b.st = this.unpackState(v as Float32Array, n);
    }
    let ok = true;
    if (k >= 1) {
      this.placeH(b, l - 1); this.placeKV(b, l - 1);
      for (const { nb } of this.upLeft(b)) {
        if (this.o.kv.has(this.kvKey(nb, l - 1))) { this.placeKV(nb, l - 1); continue; }
        ok = false;
        this.raise(nb, l - 1, b.prio);
      }
    }
    if (!ok) return false;
    // LR context and up(LR) are made only for a node chosen into a batch (from the image at hand)
    // or fetched once a node that reads them could run (from a lower stage), and given back when
    // the block goes idle: holding them for every touched block would grow with the area, and
    // making them for every ready block in one scan held the HTTP thread for 0.2 s (a band of 128).
    if (!this.needsLR(l) || b.up || this.syncPrep) return true;
    return this.prepare(b);
  }

  private needsLR(l: number) { const k = l % this.S; return k === 0 || k === this.L || (k === 1 && this.cross); }

  /** All inputs of b's next node at hand, without side effects (a later readiness check can reset an earlier block). */
  private runnable(b: Block, l: number) {
    if (b.inflight || b.lvl + 1 !== l || !this.active(b)) return false;
    const n = Math.floor(l / this.S), k = l % this.S;
    if (this.needsLR(l) && !b.up && !this.syncPrep) return false;
    if ((k === 0 || k === this.L) && !b.st && n > 0) return false;
    if (k === 0) return true;
    if (!this.o.kv.has(this.hKey(b, l - 1)) || !this.o.kv.has(this.kvKey(b, l - 1))) return false;
    for (const { nb } of this.upLeft(b)) if (!this.o.kv.has(this.kvKey(nb, l - 1))) return false;
    return true;
  }

  /** A block's LR context and bicubic up(LR) are made in this thread from pixels at hand; the
   *  base's come from the model thread. */
  private get syncPrep() { return !!this.o.lr.regionSync && !this.o.base; }

  /** Cut the block's 3×3 LR context and its up(LR) (bicubic, or the base's). True when done synchronously. */
  private prepare(b: Block): boolean {
    if (b.preparing) return false;
    const lb = this.lb, s = 3 * lb, base = this.o.base;
    const fill = ([px, up]: [Uint8Array, Float32Array?]) => {
      const ctx = toPlanar(px);
      b.ctx = ctx;
      b.up = up ?? upsampleRegion(ctx, 3, s, s, this.o.model.manifest.scale, lb, lb, this.B, this.B);
    };
    if (this.syncPrep) { fill([this.o.lr.regionSync!((b.c - 1) * lb, (b.r - 1) * lb, s, s)]); return true; }
    b.prepAbort = new AbortController();
    const opt = { priority: b.prio, signal: b.prepAbort.signal };
    const ctx = this.o.lr.regionSync ? Promise.resolve(this.o.lr.regionSync((b.c - 1) * lb, (b.r - 1) * lb, s, s))
      : this.o.lr.region((b.c - 1) * lb, (b.r - 1) * lb, s, s, opt);
    b.preparing = Promise.all([ctx, base ? base.region(b.c * this.B, b.r * this.B, this.B, this.B, opt) : undefined])
      .then(fill)
      .catch(e => { if (!(e instanceof AbortError)) this.fail(e); })
      .finally(() => { b.preparing = undefined; b.prepAbort = undefined; this.addCandidate(b); this.pump(); });
    return false;
  }

  private dirty = false;
  private addCandidate(b: Block) { this.candidates.add(b); this.dirty = true; }

  /** Ready nodes of one graph, best first. Checking readiness can raise or restart blocks (new
   *  candidates): then look again, or the loop would stop with runnable work left. */
  private pickBatch(): { batch: Block[]; k: number } {
    if (this.planDirty) this.replan();
    for (;;) {
      this.dirty = false;
      const ready = this.scan();
      if (ready.length) return this.choose(ready);
      if (!this.dirty) return { batch: [], k: 0 };
    }
  }

  /**
   * One graph's batch from the ready nodes (best first). Among the top priority class's nodes, grouped
   * by graph: of the groups that fill a whole batch, the one whose first node has the highest
   * priority, then the one nearest the wavefront (the smallest r+c+level of its batch-th node); if
   * none can, the group of the very first node. Within a tile's cone this
   * runs layer by layer in full batches; in a raster render each layer keeps only as far ahead of
   * the next as a full batch needs, so live state stays a band.
   */
  private choose(ready: Block[]): { batch: Block[]; k: number } {
    const top = priorityClass(ready[0].prio), n = this.o.batch, groups = new Map<number, Block[]>();
    for (const b of ready) {
      if (priorityClass(b.prio) !== top) break;
      const k = (b.lvl + 1) % this.S;
      let g = groups.get(k);
      if (!g) groups.set(k, g = []);
      if (g.length < n) g.push(b);
    }
    // among full groups: the one led by the most wanted node (a fraction of the class: the view's
    // centre first), then the one nearest the wavefront
    let k = (ready[0].lvl + 1) % this.S, bestP = -Infinity, best = Infinity;
    for (const [gk, g] of groups) {
      if (g.length < n) continue;
      const p = g[0].prio, t = g[n - 1].r + g[n - 1].c + g[n - 1].lvl;
      if (p > bestP || (p === bestP && t < best)) { bestP = p; best = t; k = gk; }
    }
    return { batch: groups.get(k)!, k };
  }

  private scan(): Block[] {
    const ready: Block[] = [];
    for (const b of [...this.candidates]) {
      // A block that is not ready leaves the set: whatever makes it ready (a neighbour's or its
      // own node finishing, its LR context, a new request) puts it back, so a scan costs the
      // frontier, not the closure.
      if (this.ready(b)) ready.push(b);
      else this.candidates.delete(b);
    }
    const t = (b: Block) => b.r + b.c + b.lvl;
    ready.sort((a, b) => b.prio - a.prio || t(a) - t(b) || a.r - b.r || a.c - b.c);
    return ready;
  }

  // ---------------------------------------------------------------- running

  /**
   * Runs batches, one more in flight than the model has threads (Model.parallel): while the model
   * computes, this thread picks and assembles the next (its nodes cannot depend on the running ones:
   * those are not done), so the model never waits for JavaScript. A model thread takes calls in order.
   */
  private pump() {
    if (this.pumping) return;
    this.pumping = true;
    (async () => {
      const running = new Set<Promise<void>>();
      try {
        for (;;) {
          while (running.size < this.o.model.parallel + 1 && !this.o.gate?.busy) {
            const { batch, k } = this.pickBatch();
            if (!batch.length) break;
            const p: Promise<void> = this.runBatch(batch, k).then(() => { running.delete(p); this.settle(); });
            running.add(p);
          }
          if (!running.size) break;
          await Promise.race(running);
        }
      } catch (e) {
        await Promise.allSettled(running);
        this.fail(e as Error);
      } finally {
        this.pumping = false;
      }
      this.settle();
    })();
  }

  /** Every open request is cancelled (the image is going away): what waits for it gets an AbortError. */
  cancelAll() { this.fail(new AbortError()); }

  /** A failed model call fails the requests waiting now; later requests try again. */
  private fail(e: Error) {
    for (const req of [...this.requests]) { this.drop(req, true); req.reject(e); }
  }

  private settle() {
    for (const req of [...this.requests])
      if (req.blocks.every(([r, c]) => this.isFinal(r, c))) { this.drop(req); req.resolve(); }
  }

  /** Input and output buffers by graph and name, sized for a full batch once and reused: they
   *  travel to the model thread and come back with the answer. */
  private bufs = new Map<string, ArrayBuffer[]>();
  private feed(gi: number, name: string, per: number, nb: number, half = false): Arr {
    const el = half ? 2 : 4, key = `${gi}:${name}`;
    let buf = this.bufs.get(key)?.pop();              // in flight until it comes back
    if (!buf || buf.byteLength < per * el * this.o.batch) buf = new ArrayBuffer(per * el * this.o.batch);
    return half ? new Uint16Array(buf, 0, per * nb) : new Float32Array(buf, 0, per * nb);
  }
  private giveBack(gi: number, prefix: string, arrays: Feeds) {
    for (const [name, a] of Object.entries(arrays)) {
      const key = `${gi}:${prefix}${name}`;
      let l = this.bufs.get(key);
      if (!l) this.bufs.set(key, l = []);
      l.push(a.buffer as ArrayBuffer);
    }
  }

  private async runBatch(picked: Block[], k: number) {
    const levels = picked.map(b => b.lvl + 1);
    const batch = picked.filter((b, i) => this.runnable(b, levels[i]));
    if (!batch.length) return;
    const { model, plan, seed, stage } = this.o;
    const m = model.manifest, nb = batch.length, BF = model.blockFloats, KF = model.kvFloats, HF = model.hFloats, D = m.config.dim;
    const gi = k === 0 ? 0 : k, last = k === this.L, s = 3 * this.lb;
    for (const b of batch) b.inflight = true;
    // A block's LR context, up(LR) and starting noise cost ~2 ms of this thread: made one block at
    // a time with a yield between, so preparing a batch never holds the HTTP thread longer than
    // that (the model thread meanwhile runs the batch before this one).
    let prepMs = 0;
    for (let i = 0; i < batch.length; i++) {
      const b = batch[i];
      const lr = this.needsLR(levels[i]) && !b.up, noise = (k === 0 || last) && !b.st;
      if (!lr && !noise) continue;
      const tp = performance.now();
      if (lr) this.prepare(b);
      if (noise) {   // evaluation 0's start: up(LR) plus σ_max-scaled noise keyed by the block
        const eps = blockNoise(seed, stage, b.r, b.c, 0, BF), x0 = new Float32Array(BF), s0 = plan.sigmas[0];
        for (let j = 0; j < BF; j++) x0[j] = b.up![j] + s0 * eps[j];
        b.st = { x: x0 };
      }
      prepMs += performance.now() - tp;
      await new Promise(r => setImmediate(r));
    }
    const t0 = performance.now();
    const feeds: Feeds = {};
    const f = (name: string, per: number, half = false) => (feeds[name] = this.feed(gi, name, per, nb, half));
    const pos = f('pos', 2) as Float32Array;
    batch.forEach((b, i) => { pos[2 * i] = b.r * m.grid; pos[2 * i + 1] = b.c * m.grid; });
    if (k === 0 || last) {
      const x = f('x', BF), up = f('up', BF), sigma = f('sigma', 1);
      batch.forEach((b, i) => {
        const n = Math.floor(levels[i] / this.S);
        x.set(evalInput(plan, n, b.st!), i * BF); up.set(b.up!, i * BF);
        sigma[i] = plan.evals[n].sigma;
      });
      if (k === 0 && m.global.enabled) {
        const th = this.o.thumb!, t = f('thumb', th.length) as Float32Array;
        for (let i = 0; i < nb; i++) t.set(th, i * th.length);
      }
      if (k === 0 && m.jpeg.enabled) f('jq', 1).fill(this.o.jq ?? 0);
    }
    if (k >= 1) {
      // keys and values of the block and its three neighbours side by side, per head:
      // k4/v4[i][head][slot·T … (slot+1)·T) = that slot's (T × dh) rows; a stored K/V is [k, v] × head
      const h = f('h', HF), cond = f('cond', D), k4 = f('k4', 2 * KF, this.half), v4 = f('v4', 2 * KF, this.half), present = f('present', 3);
      const TD = m.tokens_per_block * m.head_dim, H = m.heads;
      const place = (i: number, slot: number, src: Arr | undefined) => {
        for (let hd = 0; hd < H; hd++) {
          const at = ((i * H + hd) * 4 + slot) * TD;
          // a masked slot's values are ignored, but must be finite (0 × NaN is NaN): zeros
          if (!src) { k4.fill(0, at, at + TD); v4.fill(0, at, at + TD); continue; }
          copyKV(k4, at, src, hd * TD, TD); copyKV(v4, at, src, (H + hd) * TD, TD);
        }
      };
      present.fill(0);
      batch.forEach((b, i) => {
        const l = levels[i] - 1, hs = this.o.kv.get(this.hKey(b, l))!;
        copyKV(h, i * HF, hs, 0, HF); copyKV(cond, i * D, hs, HF, D);
        place(i, 0, this.o.kv.get(this.kvKey(b, l))!);
        const nbs: (Arr | undefined)[] = [undefined, undefined, undefined];
        for (const { nb: y, slot } of this.upLeft(b)) { nbs[slot] = this.o.kv.get(this.kvKey(y, l))!; present[i * 3 + slot] = 1; }
        nbs.forEach((src, slot) => place(i, slot + 1, src));
      });
      if (k === 1 && this.cross) {
        const ctx = f('lr_ctx', 3 * s * s);
        batch.forEach((b, i) => ctx.set(b.ctx!, i * 3 * s * s));
      }
    }
    const outs: Feeds = {};
    for (const o of m.graphs[gi].outputs)
      outs[o.name] = this.feed(gi, 'out:' + o.name, o.shape.slice(1).reduce<number>((a, v) => a * (v as number), 1), nb, o.dtype === 'float16');
    const t1 = performance.now();
    let res: Awaited<ReturnType<Model['run']>> | undefined;
    try {
      res = await model.run(gi, nb, feeds, outs);
    } catch (e) {
      for (const b of batch) b.inflight = false;   // the nodes can run again on a later request
      throw e;
    }
    this.giveBack(gi, '', res.feeds);
    const t2 = performance.now();
    this.stats.calls++; this.stats.nodes += nb; this.stats.modelMs += res.ms;
    for (const b of batch) { const c = priorityClass(b.prio); this.stats.byClass[c] = (this.stats.byClass[c] ?? 0) + 1; }
    const { out, feeds: back } = res!;
    let failed: Error | undefined;
    batch.forEach((b, i) => {
      const l = levels[i], n = Math.floor(l / this.S);
      this.nodeLog?.push(`${b.r},${b.c},${l}`);
      b.inflight = false;
      b.lvl = l;
      if (last) {
        advance(plan, n, b.st!, (out.denoised as Float32Array).subarray(i * BF, (i + 1) * BF));
      } else {
        const hs = this.o.kv.acquire(HF + D) as Float32Array;
        copyKV(hs, 0, k === 0 ? out.h : out.h_next, i * HF, HF);
        copyKV(hs, HF, k === 0 ? out.cond : back.cond, i * D, D);
        const kv = this.o.kv.acquire(KF, this.half);
        copyKV(kv, 0, k === 0 ? out.kv : out.kv_next, i * KF, KF);
        this.placeH(b, l, hs);
        this.placeKV(b, l, kv);
      }
      if (k >= 1) {
        this.o.kv.delete(this.hKey(b, l - 1));
        this.placeKV(b, l - 1);
        for (const { nb: y } of this.upLeft(b)) this.placeKV(y, l - 1);
      }
      if (l === this.TOP) {
        // a block that cannot be stored (a full disk) stays not final: the error fails the waiting
        // requests after this batch's other blocks are settled, and a later request tries again
        try { this.finish(b); } catch (e) { failed ??= e as Error; b.st = undefined; b.lvl = -1; }
      }
      this.park(b);
      for (const [dr, dc] of CONSUMERS)
        if (b.r + dr < this.R && b.c + dc < this.C) this.addCandidate(this.block(b.r + dr, b.c + dc));
    });
    this.giveBack(gi, 'out:', out);
    this.sweep();
    this.stats.jsMs += prepMs + (t1 - t0) + (performance.now() - t2);
    if (failed) throw failed;
  }

  private finish(b: Block) {
    const px = fromPlanar(b.st!.x);
    b.st = undefined;
    if (b.final) return;
    this.o.store.put(this.o.stage, b.r, b.c, px);
    this.setFinal(b, true);
    if (this.doneN >= 0) this.doneN++;
    for (const fn of this.listeners) fn(b.r, b.c);
  }
}
