/** One full render in its own process (so its peak RSS is its own): prints one JSON line. */
import { join } from 'node:path';
import sharp from 'sharp';
import { Model } from '../lib/model.js';
import { Render } from '../lib/render.js';
import { DiskBlockStore } from '../lib/blockstore.js';
import { ROOT } from '../test/helpers.js';

const [modelPath, size, batch, threads, dir] = process.argv.slice(2);
const n = Number(size);
const model = await Model.load(modelPath, { threads: Number(threads) });
const { data, info } = await sharp(join(ROOT, 'viewer/demo.jpg')).resize(n, n, { fit: 'fill', kernel: 'lanczos3' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
const r = new Render({ model, image: { width: info.width, height: info.height, data: new Uint8Array(data) }, scale: 4, seed: 0,
  batch: Number(batch), kvBytes: 4 << 30, store: new DiskBlockStore(dir) });
const t0 = performance.now();
await r.last.ensure([[r.last.R - 1, r.last.C - 1]]);
const wall = performance.now() - t0;
const st = r.last.stats;
console.log(JSON.stringify({ lr: n, out: 4 * n, blocks: r.last.R * r.last.C, evaluations: r.plan.count, nodes: st.nodes, calls: st.calls,
  wallS: wall / 1000, msPerNode: wall / st.nodes, onnxShare: st.onnxMs / wall, jsShare: (wall - st.onnxMs) / wall, jsMsInBatches: st.jsMs,
  kvHighWaterBytes: r.kv.highWater, kvBytesPerBlock: model.kvFloats * (model.manifest.kv.dtype === 'float16' ? 2 : 4),
  kvHighWaterBlocks: r.kv.highWater / (model.kvFloats * (model.manifest.kv.dtype === 'float16' ? 2 : 4)),
  maxRssBytes: process.resourceUsage().maxRSS * 1024 }));
