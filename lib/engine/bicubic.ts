/**
 * PyTorch's bicubic upsample (F.interpolate mode='bicubic', align_corners=False: a = -0.75,
 * half-pixel centres, edge-clamped), which the model was trained against. Computed here per
 * block from its LR context, so no full-size upsampled image is ever held in memory.
 */
const A = -0.75;

function cubicWeights(t: number): [number, number, number, number] {
  const w0 = ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A;
  const w1 = ((A + 2) * t - (A + 3)) * t * t + 1;
  const s = 1 - t;
  const w2 = ((A + 2) * s - (A + 3)) * s * s + 1;
  const w3 = 1 - w0 - w1 - w2;
  return [Math.fround(w0), Math.fround(w1), Math.fround(w2), Math.fround(w3)];
}

/**
 * Upsample the centre of a context image. src: planar CHW float32 of size ch×sh×sw (the LR
 * context, already edge-replicated around the part that matters); the output covers source
 * pixels [oy, oy+oh/scale) × [ox, ox+ow/scale) and is planar ch×oh×ow.
 */
export function upsampleRegion(src: Float32Array, ch: number, sh: number, sw: number, scale: number,
  oy: number, ox: number, oh: number, ow: number): Float32Array {
  const out = new Float32Array(ch * oh * ow);
  const taps = (n: number, o: number, size: number) => {
    const idx = new Int32Array(n * 4), w = new Float32Array(n * 4);
    for (let i = 0; i < n; i++) {
      const real = Math.fround(Math.fround((i + 0.5) / scale) - 0.5) + o;
      const f = Math.floor(real);
      const ws = cubicWeights(Math.fround(real - f));
      for (let k = 0; k < 4; k++) {
        idx[i * 4 + k] = Math.min(Math.max(f - 1 + k, 0), size - 1);
        w[i * 4 + k] = ws[k];
      }
    }
    return { idx, w };
  };
  const ty = taps(oh, oy, sh), tx = taps(ow, ox, sw);
  const row = new Float32Array(4);
  for (let c = 0; c < ch; c++) {
    const plane = c * sh * sw;
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        for (let k = 0; k < 4; k++) {
          const base = plane + ty.idx[y * 4 + k] * sw;
          let v = 0;
          for (let j = 0; j < 4; j++) v += src[base + tx.idx[x * 4 + j]] * tx.w[x * 4 + j];
          row[k] = v;
        }
        out[c * oh * ow + y * ow + x] = row[0] * ty.w[y * 4] + row[1] * ty.w[y * 4 + 1] + row[2] * ty.w[y * 4 + 2] + row[3] * ty.w[y * 4 + 3];
      }
    }
  }
  return out;
}
