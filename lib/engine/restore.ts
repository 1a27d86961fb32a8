/**
 * The JPEG restorer (model/infdit/restore.py): stage 1 of a JPEG upload reads its LR through it, so the
 * diffusion model sees the clean LR it was trained on instead of sharpening 8×8 blocks into a grid.
 *
 * The LR is restored lazily, a tile at a time, on the fixed grid the manifest gives (tile×tile LR
 * pixels from `offset` px above and left of the top-left corner, each computed from its window of halo
 * more pixels on every side, edge-replicated outside the image). A pixel therefore always comes from the same call on the same
 * window, one tile per call: the bytes do not depend on which region asked first, on batching or on
 * what was evicted. Restored tiles live in an LRU bounded in bytes; an evicted one is recomputed.
 */
import { TileCache } from './tilecache.js';
import { AbortError, type LRSource, type RequestOptions } from './engine.js';
import type { Model } from './model.js';
import { toPlanar, fromPlanar, type PixelSource } from './pixels.js';

/** The restored tiles a region needs, as a rectangle of tile indices (inclusive). Tile (r, c) covers x from
 *  c·tile − offset, y from r·tile − offset (the grid starts `offset` px above and left of the image). */
export function tilesUnder(x0: number, y0: number, w: number, h: number, width: number, height: number, tile: number, offset = 0) {
  const clamp = (v: number, n: number) => Math.min(Math.max(v, 0), n - 1);
  const at = (v: number, n: number) => Math.floor((clamp(v, n) + offset) / tile);
  return { c0: at(x0, width), c1: at(x0 + w - 1, width), r0: at(y0, height), r1: at(y0 + h - 1, height) };
}

/** The raw LR rectangle the tiles under a region read (windows included), clipped to the image: what a
 *  queue job must carry for its worker to compute them itself (the restorer's tiles, or the base's windows). */
export function restorerReach(x0: number, y0: number, w: number, h: number, width: number, height: number, tile: number, halo: number, offset = 0) {
  const t = tilesUnder(x0, y0, w, h, width, height, tile, offset);
  const x = Math.max(0, t.c0 * tile - offset - halo), y = Math.max(0, t.r0 * tile - offset - halo);
  return { x, y, w: Math.min(width, (t.c1 + 1) * tile - offset + halo) - x, h: Math.min(height, (t.r1 + 1) * tile - offset + halo) - y };
}

export class RestoredLR implements LRSource {
  private readonly tile: number;
  private readonly halo: number;
  private readonly offset: number;
  private readonly gi: number;
  private tiles: TileCache<Uint8Array>;
  /** Tiles computed (a recomputed evicted tile counts again), and the model thread's time in them (ms). */
  computed = 0;
  ms = 0;

  /** `jq`: jpegLevel of the file's quality (> 0: a restorer is only for JPEGs). */
  constructor(readonly model: Model, readonly src: PixelSource, readonly jq: number, cacheBytes = 64 << 20) {
    const r = model.manifest.restorer;
    if (!r?.enabled) throw new RangeError(`model ${model.manifest.name} has no JPEG restorer`);
    if (!(jq > 0 && jq <= 1)) throw new RangeError(`the restorer's jq must be in (0, 1] (a JPEG's level), got ${jq}`);
    this.tile = r.tile; this.halo = r.halo; this.offset = r.offset ?? 0;
    this.gi = model.manifest.graphs.findIndex(g => g.name === r.graph);
    this.tiles = new TileCache(Math.max(cacheBytes, 3 * r.tile * r.tile), (tr, tc) => this.compute(tr, tc));
  }

  get width() { return this.src.width; }
  get height() { return this.src.height; }

  async region(x0: number, y0: number, w: number, h: number, opt: RequestOptions = {}): Promise<Uint8Array> {
    const W = this.width, H = this.height, T = this.tile, off = this.offset;
    const t = tilesUnder(x0, y0, w, h, W, H, T, off);
    const got = new Map<number, Uint8Array>();
    const keys: number[] = [];
    for (let r = t.r0; r <= t.r1; r++) for (let c = t.c0; c <= t.c1; c++) keys.push(r * 65536 + c);
    await Promise.all(keys.map(async k => { got.set(k, await this.tiles.get(Math.floor(k / 65536), k % 65536, undefined)); }));
    if (opt.signal?.aborted) throw new AbortError();
    const out = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++) {
      const sy = Math.min(Math.max(y0 + y, 0), H - 1), tr = Math.floor((sy + off) / T);
      for (let x = 0; x < w; x++) {
        const sx = Math.min(Math.max(x0 + x, 0), W - 1), tc = Math.floor((sx + off) / T);
        const px = got.get(tr * 65536 + tc)!, s = ((sy + off - tr * T) * T + (sx + off - tc * T)) * 3, d = (y * w + x) * 3;
        out[d] = px[s]; out[d + 1] = px[s + 1]; out[d + 2] = px[s + 2];
      }
    }
    return out;
  }

  /** HWC uint8 of tile (r, c), TILE×TILE (past the image's edge: what the edge-replicated window gives). */
  private async compute(r: number, c: number) {
    const T = this.tile, S = T + 2 * this.halo;
    const win = this.src.regionSync(c * T - this.offset - this.halo, r * T - this.offset - this.halo, S, S);
    const { out, ms } = await this.model.run(this.gi, 1, { lr: toPlanar(win), jq: new Float32Array([this.jq]) });
    this.computed++; this.ms += ms;
    return fromPlanar(out.restored as Float32Array);
  }
}
