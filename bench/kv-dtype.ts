/**
 * fp32 vs fp16 K/V: the same render with two exports of one model; prints pixel differences,
 * K/V high-water bytes and time.   node --import tsx bench/kv-dtype.ts FP32.onnx FP16.onnx [LR_SIZE]
 */
import { join } from 'node:path';
import sharp from 'sharp';
import { Model } from '../lib/engine/model.js';
import { Render } from '../lib/engine/render.js';
import { MemoryBlockStore } from '../lib/engine/blockstore.js';
import { ROOT } from '../test/helpers.js';

const [a, b, size] = process.argv.slice(2);
const n = Number(size ?? 96);
const { data, info } = await sharp(join(ROOT, 'viewer/demo.jpg')).extract({ left: 100, top: 60, width: n, height: n }).raw().toBuffer({ resolveWithObject: true });
const image = { width: info.width, height: info.height, data: new Uint8Array(data) };
const out: any = {};
const pix: Record<string, Uint8Array> = {};
for (const [name, path] of [['fp32', a], ['fp16', b]]) {
  for (const preset of ['fidelity', 'detail']) {
    const model = await Model.load(path, { threads: 0 });
    const r = new Render({ model, image, scale: 4, seed: 0, preset, batch: 8, kvBytes: 1 << 30, store: new MemoryBlockStore() });
    const t = performance.now();
    const px = (await r.region(0, 0, r.width, r.height)).data;
    out[`${name}.${preset}`] = { seconds: (performance.now() - t) / 1000, kvHighWaterMiB: r.kv.highWater / 2 ** 20, kvBytesPerBlock: model.kvFloats * (model.manifest.kv.dtype === 'float16' ? 2 : 4) };
    pix[`${name}.${preset}`] = px;
  }
}
for (const preset of ['fidelity', 'detail']) {
  const p = pix[`fp32.${preset}`], q = pix[`fp16.${preset}`];
  let max = 0, sum = 0, changed = 0;
  for (let i = 0; i < p.length; i++) { const d = Math.abs(p[i] - q[i]); max = Math.max(max, d); sum += d; if (d) changed++; }
  out[`diff.${preset}`] = { maxAbs: max, meanAbs: sum / p.length, changedShare: changed / p.length };
}
console.log(JSON.stringify(out, null, 1));
