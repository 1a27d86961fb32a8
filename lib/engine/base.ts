/**
 * The base super-resolver (model/infdit/base.py; DESIGN.md §1 "The base under the residual"): a small
 * convolutional network whose output is what a viewer sees before a tile is final, and, for a
 * model trained over it (manifest "up": "base"), the transformer's up(LR).
 *
 * Its pooling reaches across the image, so it is defined, and computed, on a fixed grid: LR tiles
 * of `tile` px from the top-left corner, each from a window of `halo` more pixels on every side
 * (edge-replicated outside the image, as LRSource gives them). An output pixel therefore always
 * comes from the same call on the same window: the bytes do not depend on which block or preview
 * asked first, on what was evicted, or on the batch. Computed lazily, a tile at a time, in the
 * model thread; the tiles live in an LRU bounded in bytes, an evicted one is made again.
 */
import { TileCache } from './tilecache.js';
import type { LRSource, RequestOptions } from './engine.js';
import { ModelError, type Model, type Feeds } from './model.js';
import { toPlanar, fromPlanar } from './pixels.js';

/**
 * Previews being made (BaseUp.pixels calls in flight) in one render: while any is, the render's stages start
 * no new transformer batch (those running finish). The model thread already takes a waiting base window
 * before a waiting batch, but a JPEG's base window is asked only once its restorer tiles are back, and in
 * that gap the thread took a batch: with the view stated a screenful's previews came in 4.5 s (PNG) and 6.6 s
 * (JPEG) instead of 2.8 and 4.4 (bench/previews.ts). A preview never waits for the transformer (the base reads
 * the file's LR, restored or not), so holding the transformer back cannot stall it.
 */
export class PreviewGate {
  private n = 0;
  private readonly idle = new Set<() => void>();
  get busy() { return this.n > 0; }
  /** `fn` runs whenever the last preview in flight is done (a stage starts its batches again). */
  onIdle(fn: () => void) { this.idle.add(fn); }
  async during<T>(work: () => Promise<T>): Promise<T> {
    this.n++;
    try { return await work(); } finally { if (--this.n === 0) for (const fn of this.idle) fn(); }
  }
}

export class BaseUp {
  readonly tile: number; readonly halo: number; readonly scale: number;
  private readonly gi: number;
  private tiles: TileCache<Float32Array, number | undefined>;
  /** Tiles computed (an evicted tile made again counts again), and the model thread's time in them (ms). */
  computed = 0;
  ms = 0;

  // 128 MiB: 42 windows of 3 MiB (512² px × 3 × float32). A screenful at the deepest zoom needs 20 (its view) to 30 (an
  // 8-layer model's cone too); at 64 MiB (21) an 8-layer model made 9 of them twice (bench/screen.ts: 39 windows, not 30)
  /** `jq`: jpegLevel of the LR's file (stage 1 of a JPEG upload; 0 otherwise), which a JPEG-aware base reads
   *  with it (manifest base.jq); the other bases are never given one. */
  constructor(readonly model: Model, readonly src: LRSource, cacheBytes = 128 << 20, readonly gate?: PreviewGate, readonly jq = 0) {
    const b = model.manifest.base;
    if (!b?.enabled) throw new ModelError(`model ${model.manifest.name} has no base super-resolver`);
    if (!(jq >= 0 && jq <= 1)) throw new RangeError(`the base's jq must be a JPEG level in [0, 1], got ${jq}`);
    if (jq > 0 && !b.jq) throw new RangeError(`model ${model.manifest.name}'s base is not JPEG-aware: a JPEG's LR reaches it restored, with no level`);
    this.tile = b.tile; this.halo = b.halo; this.scale = model.manifest.scale;
    this.gi = model.manifest.graphs.findIndex(g => g.name === b.graph);
    const tileBytes = 3 * (this.scale * this.tile) ** 2 * 4;
    // the tile is shared by whoever asks next: its making reads the LR at the first asker's priority, never
    // with its abort
    this.tiles = new TileCache(Math.max(cacheBytes, 4 * tileBytes), (r, c, priority) => this.compute(r, c, { priority }));
  }

  /** Output width and height: the LR's times the scale. */
  get width() { return this.src.width * this.scale; }
  get height() { return this.src.height * this.scale; }

  /** Planar CHW float32 in [-1,1] of the base over output pixels [x0,x0+w)×[y0,y0+h), inside the
   *  grid of tiles (a block or tile of the output; the last tile row and column reach past the image). */
  async region(x0: number, y0: number, w: number, h: number, opt: RequestOptions = {}): Promise<Float32Array> {
    const T = this.tile * this.scale, { r0, r1, c0, c1 } = this.under(x0, y0, w, h);
    const tiles = new Map<number, Float32Array>();
    const keys: number[] = [];
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) keys.push(r * 65536 + c);
    await Promise.all(keys.map(async k => { tiles.set(k, await this.tiles.get(Math.floor(k / 65536), k % 65536, opt.priority)); }));
    const out = new Float32Array(3 * w * h), TT = T * T;
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) {
      const t = tiles.get(r * 65536 + c)!;
      const ya = Math.max(y0, r * T), yb = Math.min(y0 + h, (r + 1) * T), xa = Math.max(x0, c * T), xb = Math.min(x0 + w, (c + 1) * T);
      for (let ch = 0; ch < 3; ch++) for (let y = ya; y < yb; y++) {
        const s = ch * TT + (y - r * T) * T + (xa - c * T);
        out.set(t.subarray(s, s + xb - xa), ch * w * h + (y - y0) * w + (xa - x0));
      }
    }
    return out;
  }

  /** HWC uint8 of the same (the pixels a preview shows), rounded as every final pixel is; the render's
   *  transformer waits while they are made (`gate`). */
  async pixels(x0: number, y0: number, w: number, h: number, opt: RequestOptions = {}): Promise<Uint8Array> {
    const make = async () => fromPlanar(await this.region(x0, y0, w, h, opt));
    return this.gate ? this.gate.during(make) : make();
  }

  /** Make the windows under these output rectangles, each once, as a preview's are made (the render's transformer
   *  waits): what a view stated at the base's level will show first. */
  async warm(rects: { x: number; y: number; w: number; h: number }[], opt: RequestOptions = {}): Promise<void> {
    const keys = new Set<number>();
    for (const rc of rects) {
      const { r0, r1, c0, c1 } = this.under(rc.x, rc.y, rc.w, rc.h);
      for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) keys.add(r * 65536 + c);
    }
    const make = async () => { await Promise.all([...keys].map(k => this.tiles.get(Math.floor(k / 65536), k % 65536, opt.priority))); };
    await (this.gate ? this.gate.during(make) : make());
  }

  /** The grid's tiles under output pixels [x0,x0+w)×[y0,y0+h) (inclusive index ranges); outside the grid: refused. */
  private under(x0: number, y0: number, w: number, h: number) {
    const T = this.tile * this.scale;
    const r0 = Math.floor(y0 / T), r1 = Math.floor((y0 + h - 1) / T), c0 = Math.floor(x0 / T), c1 = Math.floor((x0 + w - 1) / T);
    const rows = Math.ceil(this.src.height / this.tile), cols = Math.ceil(this.src.width / this.tile);
    if (x0 < 0 || y0 < 0 || r1 >= rows || c1 >= cols)
      throw new RangeError(`base region ${w}x${h}+${x0}+${y0} is outside the tile grid (${cols}x${rows} tiles of ${T} px)`);
    return { r0, r1, c0, c1 };
  }

  private async compute(r: number, c: number, opt: RequestOptions) {
    const T = this.tile, S = T + 2 * this.halo;
    const win = await this.src.region(c * T - this.halo, r * T - this.halo, S, S, opt);
    const feeds: Feeds = { lr: toPlanar(win) };
    if (this.model.manifest.base!.jq) feeds.jq = new Float32Array([this.jq]);
    const { out, ms } = await this.model.run(this.gi, 1, feeds);
    this.computed++; this.ms += ms;
    return out.up as Float32Array;
  }
}
