/** One full render in its own process (so its peak RSS is its own): prints one JSON line.
 *  render-child.ts MODEL LR_SIZE BATCH THREADS DIR [PRESET] */
import { join } from 'node:path';
import sharp from 'sharp';
import { Model } from '../lib/model.js';
import { Render } from '../lib/render.js';
import { DiskBlockStore } from '../lib/blockstore.js';
import { ROOT } from '../test/helpers.js';

const [modelPath, size, batch, threads, dir, preset] = process.argv.slice(2);
const n = Number(size);
const model = await Model.load(modelPath, { threads: Number(threads) });
const { data, info } = await sharp(join(ROOT, 'viewer/demo.jpg')).resize(n, n, { fit: 'fill', kernel: 'lanczos3' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
const r = new Render({ model, image: { width: info.width, height: info.height, data: new Uint8Array(data) }, scale: 4, seed: 0, preset,
  batch: Number(batch), kvBytes: 4 << 30, store: new DiskBlockStore(dir) });
const s = r.last, all: [number, number][] = [];
for (let i = 0; i < s.R; i++) for (let j = 0; j < s.C; j++) all.push([i, j]);
const t0 = performance.now();
await s.ensure(all);
const wall = performance.now() - t0;
const st = s.stats, blockEvals = s.R * s.C * s.N;
console.log(JSON.stringify({ engine: 'layer graphs (cone)', lr: n, out: 4 * n, blocks: s.R * s.C, evaluations: s.N, blockEvals, nodes: st.nodes, calls: st.calls,
  wallS: wall / 1000, blocksPerS: s.R * s.C / (wall / 1000), msPerBlockEval: wall / blockEvals,
  modelShare: st.onnxMs / wall, jsShare: (wall - st.onnxMs) / wall, jsMsInBatches: st.jsMs,
  stateHighWaterBytes: r.kv.highWater, maxRssBytes: process.resourceUsage().maxRSS * 1024 }));
await model.close();
