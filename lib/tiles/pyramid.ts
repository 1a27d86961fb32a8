/**
 * Deep Zoom geometry exactly as libvips dzsave (sharp `.tile()`) writes it, and the rule that
 * fills each level: levels at or below the LR resolution are the LR image's own 2×2
 * reductions; the top level is the generated image; each level between is the 2×2 mean of
 * the one above (dzsave's (a+b+c+d+2)>>2, odd edges replicated), so any tile can be made
 * lazily from the tiles above it and equals what a whole-image dzsave would write.
 */
import { halve, type RGBImage, type PixelSource } from '../engine/pixels.js';

export type TileFormat = 'jpeg' | 'png' | 'webp';
export const FORMATS: TileFormat[] = ['jpeg', 'png', 'webp'];

export interface Geometry { width: number; height: number; tileSize: number; overlap: number }

export function maxLevel(w: number, h: number) { return Math.ceil(Math.log2(Math.max(w, h))); }

export function levelSize(g: Geometry, L: number) {
  const k = maxLevel(g.width, g.height) - L;
  return { width: Math.ceil(g.width / 2 ** k), height: Math.ceil(g.height / 2 ** k) };
}

export function tileCount(g: Geometry, L: number) {
  const s = levelSize(g, L);
  return { cols: Math.ceil(s.width / g.tileSize), rows: Math.ceil(s.height / g.tileSize) };
}

/** Every tile of the pyramid, top level first (lower generated levels then reuse its blocks). */
export function* allTiles(g: Geometry): Generator<{ L: number; c: number; r: number }> {
  for (let L = maxLevel(g.width, g.height); L >= 0; L--) {
    const t = tileCount(g, L);
    for (let r = 0; r < t.rows; r++) for (let c = 0; c < t.cols; c++) yield { L, c, r };
  }
}

/** Pixel rectangle of tile (L, col, row), overlap on interior edges only. */
export function tileRect(g: Geometry, L: number, col: number, row: number) {
  const s = levelSize(g, L), T = g.tileSize, O = g.overlap;
  const x0 = Math.max(0, col * T - O), y0 = Math.max(0, row * T - O);
  const x1 = Math.min(s.width, (col + 1) * T + O), y1 = Math.min(s.height, (row + 1) * T + O);
  return { x: x0, y: y0, w: x1 - x0, h: y1 - y0 };
}

export function validTile(g: Geometry, L: number, col: number, row: number) {
  if (!Number.isInteger(L) || L < 0 || L > maxLevel(g.width, g.height)) return false;
  const t = tileCount(g, L);
  return Number.isInteger(col) && Number.isInteger(row) && col >= 0 && row >= 0 && col < t.cols && row < t.rows;
}

export function dziXml(g: Geometry, format: TileFormat) {
  return `<?xml version="1.0" encoding="UTF-8"?>
<Image xmlns="http://schemas.microsoft.com/deepzoom/2008"
  Format="${format}"
  Overlap="${g.overlap}"
  TileSize="${g.tileSize}"
  >
  <Size 
    Height="${g.height}"
    Width="${g.width}"
  />
</Image>
`;
}

/** Pixels of a rectangle of one level. `top(x,y,w,h)` gives the top level's pixels;
 *  `sourceLevel(L)` the whole level for levels that come from the source (or null). */
export class LevelSampler {
  constructor(readonly g: Geometry,
    readonly top: (x: number, y: number, w: number, h: number) => Promise<RGBImage>,
    readonly sourceLevel: (L: number) => PixelSource | null) {}

  async region(L: number, x: number, y: number, w: number, h: number): Promise<RGBImage> {
    const src = this.sourceLevel(L);
    if (src) return { width: w, height: h, data: src.regionSync(x, y, w, h) };
    const M = maxLevel(this.g.width, this.g.height);
    if (L === M) return this.top(x, y, w, h);
    const up = levelSize(this.g, L + 1);
    const uw = Math.min(2 * w, up.width - 2 * x), uh = Math.min(2 * h, up.height - 2 * y);
    return halve(await this.region(L + 1, 2 * x, 2 * y, uw, uh));
  }
}
