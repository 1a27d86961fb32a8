/**
 * The global-conditioning input (manifest `global`): the whole input image in [-1,1],
 * average-pooled to n×n with PyTorch's adaptive bins (rows floor(i·H/n) … ceil((i+1)·H/n)),
 * as model/network.py `thumbnail` does. Planar (3, n, n).
 */
import type { RGBImage } from '../tiles/image.js';

export function thumbnail(img: RGBImage, n: number): Float32Array {
  const out = new Float32Array(3 * n * n);
  for (let i = 0; i < n; i++) {
    const y0 = Math.floor((i * img.height) / n), y1 = Math.ceil(((i + 1) * img.height) / n);
    for (let j = 0; j < n; j++) {
      const x0 = Math.floor((j * img.width) / n), x1 = Math.ceil(((j + 1) * img.width) / n);
      for (let c = 0; c < 3; c++) {
        let s = 0;
        for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) s += img.data[(y * img.width + x) * 3 + c] / 127.5 - 1;
        out[c * n * n + i * n + j] = s / ((y1 - y0) * (x1 - x0));
      }
    }
  }
  return out;
}
