/**
 * One full render in its own process (so its peak RSS is its own): prints one JSON line.
 *   render-child.ts ROOT MODEL LR_SIZE BATCH THREADS DIR [PRESET] [JPEG_QUALITY]
 * ROOT is the checkout whose engine runs (this one, or a baseline commit's worktree: the engine
 * API is the same since release 1). A small render first warms the model's arenas: their first
 * growth is page faults (seconds here), a cost of a process's first minute, not of throughput.
 * JPEG_QUALITY > 0 renders as if the photo came from a JPEG of that quality: a model with a restorer
 * then reads its LR through it (the pixels are the same; what is measured is the restorer's cost).
 */
import { join } from 'node:path';
import { mkdtempSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import sharp from 'sharp';

const [root, modelPath, size, batch, threads, dir, preset, jpegQuality] = process.argv.slice(2);
// release 1 kept lib/ flat; since the cone engine the engine's half is lib/engine/
const lib = (f: string) => join(root, existsSync(join(root, 'lib/engine')) ? 'lib/engine' : 'lib', f);
const { Model } = await import(lib('model.ts'));
const { Render } = await import(lib('render.ts'));
const { DiskBlockStore } = await import(lib('blockstore.ts'));
const model = await Model.load(modelPath, { threads: Number(threads) });
const photo = async (n: number) => {
  const { data, info } = await sharp(join(root, 'viewer/demo.jpg')).resize(n, n, { fit: 'fill', kernel: 'lanczos3' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { width: info.width, height: info.height, data: new Uint8Array(data) };
};
const render = async (n: number, d: string) => {
  const r = new Render({ model, image: await photo(n), scale: 4, seed: 0, preset: preset || undefined, jpegQuality: Number(jpegQuality ?? 0), batch: Number(batch), kvBytes: 4 << 30, store: new DiskBlockStore(d) });
  const s = r.last, all: [number, number][] = [];
  for (let i = 0; i < s.R; i++) for (let j = 0; j < s.C; j++) all.push([i, j]);
  const t0 = performance.now();
  await s.ensure(all);
  return { r, s, wall: performance.now() - t0 };
};
await render(64, mkdtempSync(join(tmpdir(), 'warm-')));
const f0 = process.resourceUsage().minorPageFault;
const n = Number(size);
const { r, s, wall } = await render(n, dir);
const st = s.stats, blockEvals = s.R * s.C * s.N;
const restorerTiles = (s.o.lr as { computed?: number }).computed ?? 0;   // a RestoredLR's count; 0 otherwise
console.log(JSON.stringify({ root, lr: n, jpegQuality: Number(jpegQuality ?? 0), restorerTiles, out: 4 * n, blocks: s.R * s.C, evaluations: s.N, blockEvals, nodes: st.nodes, calls: st.calls,
  wallS: wall / 1000, blocksPerS: s.R * s.C / (wall / 1000), msPerBlockEval: wall / blockEvals,
  // modelShare: how busy the model thread was (1 = never waiting for this thread); jsShare: this thread's batch work
  modelShare: (st.modelMs ?? st.onnxMs) / wall, jsShare: st.jsMs / wall,
  stateHighWaterBytes: r.kv.highWater, maxRssBytes: process.resourceUsage().maxRSS * 1024, minorPageFaultsInRender: process.resourceUsage().minorPageFault - f0 }));
await model.close?.();
process.exit(0);
