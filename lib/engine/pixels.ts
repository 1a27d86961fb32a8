/** Pixels as the engine and the pyramid pass them: HWC uint8, 3 channels; crops and dzsave's halving. */
export interface RGBImage { width: number; height: number; data: Uint8Array }

/** An image read a rectangle at a time (the input photo: in memory, or in a file so that a
 *  50 Mpx upload is never held whole). Coordinates outside the image are clamped. */
export interface PixelSource {
  readonly width: number; readonly height: number;
  regionSync(x0: number, y0: number, w: number, h: number): Uint8Array;
}

export class MemoryPixels implements PixelSource {
  constructor(readonly img: RGBImage) {}
  get width() { return this.img.width; }
  get height() { return this.img.height; }
  regionSync(x0: number, y0: number, w: number, h: number) { return cropClamped(this.img, x0, y0, w, h); }
}

export function asPixelSource(img: RGBImage | PixelSource): PixelSource {
  return 'regionSync' in img ? img : new MemoryPixels(img);
}

/** HWC uint8 -> planar CHW in [-1, 1], the network's pixels (manifest pixels.from_uint8). */
export function toPlanar(px: Uint8Array, out = new Float32Array(px.length)): Float32Array {
  const n = px.length / 3;
  for (let i = 0; i < n; i++) for (let ch = 0; ch < 3; ch++) out[ch * n + i] = px[i * 3 + ch] / 127.5 - 1;
  return out;
}

/** Planar CHW in [-1, 1] -> HWC uint8 (manifest pixels.to_uint8: rounded, clamped). */
export function fromPlanar(v: ArrayLike<number>): Uint8Array {
  const n = v.length / 3, px = new Uint8Array(v.length);
  for (let i = 0; i < n; i++) for (let ch = 0; ch < 3; ch++) px[i * 3 + ch] = Math.min(255, Math.max(0, Math.round((v[ch * n + i] + 1) * 127.5)));
  return px;
}

/** Crop with edge replication for coordinates outside the image. */
export function cropClamped(img: RGBImage, x0: number, y0: number, w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(Math.max(y0 + y, 0), img.height - 1);
    for (let x = 0; x < w; x++) {
      const sx = Math.min(Math.max(x0 + x, 0), img.width - 1);
      const s = (sy * img.width + sx) * 3, d = (y * w + x) * 3;
      out[d] = img.data[s]; out[d + 1] = img.data[s + 1]; out[d + 2] = img.data[s + 2];
    }
  }
  return out;
}

/** dzsave's 2×2 box reduction: (a+b+c+d+2)>>2, odd edges replicated; `into`: a buffer to reuse. */
export function halve(img: RGBImage, into?: Uint8Array): RGBImage {
  const w = Math.ceil(img.width / 2), h = Math.ceil(img.height / 2);
  const out = into ? into.subarray(0, w * h * 3) : new Uint8Array(w * h * 3);
  const W = img.width, H = img.height, d = img.data;
  for (let y = 0; y < h; y++) {
    const y0 = 2 * y, y1 = Math.min(2 * y + 1, H - 1);
    for (let x = 0; x < w; x++) {
      const x0 = 2 * x, x1 = Math.min(2 * x + 1, W - 1);
      for (let c = 0; c < 3; c++) {
        out[(y * w + x) * 3 + c] = (d[(y0 * W + x0) * 3 + c] + d[(y0 * W + x1) * 3 + c] + d[(y1 * W + x0) * 3 + c] + d[(y1 * W + x1) * 3 + c] + 2) >> 2;
      }
    }
  }
  return { width: w, height: h, data: out };
}
