/**
 * What viewers are looking at, and the work it commands (DESIGN.md §4: the viewer's attention
 * drives the engine).
 *
 * A viewer states its view — the level it draws and the rectangle it shows — and gets that
 * level's tiles under the rectangle generated above every other request, nearest the view's
 * centre first. A new statement replaces the viewer's last one: tiles that left the view are
 * withdrawn at once (their generation stops unless another viewer or request still wants
 * them), so panning across a gigapixel image leaves no trail of queued work. A view is a lease:
 * not stated again within `leaseMs` it lapses, so a closed tab costs nothing for long.
 *
 * Why a view statement rather than tile requests: OpenSeadragon asks each tile once and keeps
 * it, so the bundled viewer asks previews (answered at once) and swaps in final tiles when the
 * server's events say they are done; a request per tile would be held open for seconds each and
 * would not say which tiles matter most or when one left the view. One small POST per view
 * change says both. Third-party viewers keep the plain final URLs, where a request is interest
 * and a closed request withdraws it.
 */
import { AbortError } from '../engine/engine.js';
import { maxLevel, tileCount, type Geometry } from './pyramid.js';

/** Tiles in view outrank plain tile requests (10), downloads (5) and the background fill (0). */
export const VIEW_PRIORITY = 20;
/** The most tiles one view can command: a 4K screen at 256-px tiles is ~150 at its finest level. */
export const MAX_VIEW_TILES = 400;

export interface View { level: number; x: number; y: number; width: number; height: number }
export interface TileAt { L: number; c: number; r: number }

/**
 * The tiles of level `v.level` under the rectangle (x, y, width, height in the full image's
 * pixels), nearest the rectangle's centre first, at most `max`.
 */
export function viewTiles(g: Geometry, v: View, max = MAX_VIEW_TILES): TileAt[] {
  const M = maxLevel(g.width, g.height), L = v.level, k = 2 ** (M - L), T = g.tileSize;
  const { cols, rows } = tileCount(g, L);
  const x0 = Math.max(0, v.x) / k, y0 = Math.max(0, v.y) / k;
  const x1 = Math.min(g.width, v.x + v.width) / k, y1 = Math.min(g.height, v.y + v.height) / k;
  if (!(x1 > x0 && y1 > y0)) return [];
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, out: (TileAt & { d: number })[] = [];
  const r0 = Math.floor(y0 / T), r1 = Math.min(rows - 1, Math.ceil(y1 / T) - 1);
  const c0 = Math.floor(x0 / T), c1 = Math.min(cols - 1, Math.ceil(x1 / T) - 1);
  // only a window around the centre is listed (a rectangle over a whole gigapixel level would be
  // 100,000s of tiles on the HTTP thread): the smallest square window holding `max` of the view's
  // tiles, doubled so that the nearest ones by distance are all inside it
  const rc = Math.floor(cy / T), cc = Math.floor(cx / T), inside = (h: number) =>
    (Math.min(r1, rc + h) - Math.max(r0, rc - h) + 1) * (Math.min(c1, cc + h) - Math.max(c0, cc - h) + 1);
  let h = 1;
  while (inside(h) < max && (rc - h > r0 || rc + h < r1 || cc - h > c0 || cc + h < c1)) h *= 2;
  for (let r = Math.max(r0, rc - 2 * h); r <= Math.min(r1, rc + 2 * h); r++)
    for (let c = Math.max(c0, cc - 2 * h); c <= Math.min(c1, cc + 2 * h); c++)
      out.push({ L, c, r, d: Math.hypot((c + 0.5) * T - cx, (r + 0.5) * T - cy) });
  out.sort((a, b) => a.d - b.d || a.r - b.r || a.c - b.c);
  return out.slice(0, max).map(({ L, c, r }) => ({ L, c, r }));
}

/** Makes one tile at a priority until the signal withdraws it (the image service's tile()). */
export type MakeTile = (id: string, t: TileAt, o: { signal: AbortSignal; priority: number }) => Promise<unknown>;

interface Lease {
  id: string;
  /** the view's tiles, by key; an AbortController while its generation is wanted and running */
  tiles: Map<string, AbortController | null>;
  timer?: NodeJS.Timeout;
}

const key = (t: TileAt) => `${t.L}/${t.c}/${t.r}`;

export class Views {
  private leases = new Map<string, Lease>();
  constructor(private make: MakeTile, readonly o: { leaseMs: number; maxViewers: number; onError?: (e: Error) => void }) {}

  /**
   * Viewer `viewer` now looks at `tiles` of image `id` (most wanted first). Tiles new to its view
   * start at VIEW_PRIORITY plus a fraction by rank (the engine orders by it inside the class);
   * tiles no longer in view are withdrawn.
   */
  set(viewer: string, id: string, tiles: TileAt[]) {
    let lease = this.leases.get(viewer);
    if (lease && lease.id !== id) { this.withdraw(viewer); lease = undefined; }
    if (!lease) {
      lease = { id, tiles: new Map() };
      // the least recently stated view gives way when there are too many
      if (this.leases.size >= this.o.maxViewers) this.withdraw(this.leases.keys().next().value!);
    }
    this.leases.delete(viewer); this.leases.set(viewer, lease);   // most recent last
    clearTimeout(lease.timer);
    lease.timer = setTimeout(() => this.withdraw(viewer), this.o.leaseMs).unref();
    const wanted = new Set(tiles.map(key));
    for (const [k, ac] of lease.tiles) if (!wanted.has(k)) { ac?.abort(); lease.tiles.delete(k); }
    const n = tiles.length, l = lease;
    tiles.forEach((t, rank) => {
      const k = key(t);
      if (l.tiles.has(k)) return;
      const ac = new AbortController();
      l.tiles.set(k, ac);
      this.make(id, t, { signal: ac.signal, priority: VIEW_PRIORITY + (n - rank) / (n + 1) }).then(
        () => { if (l.tiles.get(k) === ac) l.tiles.set(k, null); },       // made: stays in view, costs nothing
        (e: Error) => {
          if (l.tiles.get(k) === ac) l.tiles.delete(k);                  // failed: the next statement tries again
          if (!(e instanceof AbortError)) this.o.onError?.(e);
        });
    });
  }

  /** The viewer's view ends (it said so, or its lease lapsed): its tiles' generation is withdrawn. */
  withdraw(viewer: string) {
    const lease = this.leases.get(viewer);
    if (!lease) return;
    clearTimeout(lease.timer);
    for (const ac of lease.tiles.values()) ac?.abort();
    this.leases.delete(viewer);
  }

  /** Every view of an image ends (the image was deleted). */
  forget(id: string) { for (const [v, l] of [...this.leases]) if (l.id === id) this.withdraw(v); }

  /** Viewers of an image and the tiles being made for them now (distinct keys "L/c/r"). */
  state(id: string) {
    let viewers = 0;
    const making = new Set<string>();
    for (const l of this.leases.values()) {
      if (l.id !== id) continue;
      viewers++;
      for (const [k, ac] of l.tiles) if (ac) making.add(k);
    }
    return { viewers, making: [...making] };
  }

  close() { for (const v of [...this.leases.keys()]) this.withdraw(v); }
}
