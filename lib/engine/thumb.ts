/**
 * The global-conditioning input (manifest `global`): the whole input image in [-1,1],
 * average-pooled to n×n with PyTorch's adaptive bins (rows floor(i·H/n) … ceil((i+1)·H/n)),
 * as model/infdit/network.py `thumbnail` does. Planar (3, n, n).
 */
import { asPixelSource, type PixelSource, type RGBImage } from './pixels.js';

/** Reads the image one band of rows at a time (a 64 Mpx upload is never whole in memory). */
export function thumbnail(image: RGBImage | PixelSource, n: number): Float32Array {
  const out = new Float32Array(3 * n * n);
  const src = asPixelSource(image), W = src.width, H = src.height;
  for (let i = 0; i < n; i++) {
    const y0 = Math.floor((i * H) / n), y1 = Math.ceil(((i + 1) * H) / n);
    const band = src.regionSync(0, y0, W, y1 - y0);
    for (let j = 0; j < n; j++) {
      const x0 = Math.floor((j * W) / n), x1 = Math.ceil(((j + 1) * W) / n);
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let y = 0; y < y1 - y0; y++) for (let x = x0; x < x1; x++) s += band[(y * W + x) * 3 + c] / 127.5 - 1;
        out[c * n * n + i * n + j] = s / ((y1 - y0) * (x1 - x0));
      }
    }
  }
  return out;
}
