/**
 * Any tile in bounded time: the cold cost of one top-level tile at the top-left, the bottom-right
 * and random positions, through the image service with `npm start` settings (tile 256, batch 8,
 * all cores), each in a fresh data folder (nothing cached). Prints JSON, writes
 * bench/results/tiles-<time>.json; never fails on time.
 *   node --import tsx bench/tiles.ts [--sizes 1024x768,4096x4096] [--random 3] [--detail 1024x768] [--models a.json,b.json]
 * --detail SIZES: also the detail preset (its reach is N·L blocks) at those sizes, corners only.
 * --models: each model's tiles in turn, the same run (default: the release); the same photos and positions.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { tmpdir, cpus } from 'node:os';
import sharp from 'sharp';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { maxLevel } from '../lib/tiles/pyramid.js';
import { ROOT } from '../test/helpers.js';
import { saveResult } from './common.js';

const args = process.argv.slice(2);
const opt = (k: string, d: string) => { const i = args.indexOf('--' + k); return i >= 0 ? args[i + 1] : d; };
const parse = (s: string) => s ? s.split(',').map(x => x.split('x').map(Number) as [number, number]) : [];
const sizes = parse(opt('sizes', '1024x768,4096x4096'));
const detail = parse(opt('detail', '1024x768'));
const nRandom = Number(opt('random', '3'));
const models = opt('models', join(ROOT, 'model/release/infdit-s4.json')).split(',').map(m => resolve(m));
const log = (s: string) => process.stderr.write(s + '\n');

/** The demo photo at w×h; `variant` changes one pixel, so each measurement is a new image (nothing cached). */
async function photo(w: number, h: number, variant: number) {
  const { data, info } = await sharp(join(ROOT, 'viewer/demo.jpg')).resize(w, h, { fit: 'fill', kernel: 'lanczos3' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  data[0] = variant & 255; data[1] = (variant >> 8) & 255;
  return sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } }).png({ compressionLevel: 1 }).toBuffer();
}

/** One cold top-level tile of a new image, on a running service (its model threads warm). */
async function oneTile(service: ImageService, bytes: Buffer, pos: (cols: number, rows: number) => [number, number]) {
  const meta = await service.add(bytes, 'bench.png');
  const st0 = await service.status(meta.id);          // decodes the source and makes the source levels: not the tile's cost
  const L = maxLevel(st0.width, st0.height), cols = Math.ceil(st0.width / st0.tileSize), rows = Math.ceil(st0.height / st0.tileSize);
  const [c, r] = pos(cols, rows);
  const t0 = performance.now();
  await service.tile(meta.id, L, c, r, { priority: 10 });
  const s = (performance.now() - t0) / 1000;
  const st = await service.status(meta.id);
  return { level: L, col: c, row: r, seconds: s, nodes: st.engine.nodes, calls: st.engine.calls, blockEvalsEquivalent: st.engine.nodes / (service.model.layers + 1),
    blocksFinal: st.blocks.done, blocksTotal: st.blocks.total };
}

async function main() {
  const out: any[] = [];
  const runs: [number, number, string, number][] = [];
  for (const [w, h] of sizes) runs.push([w, h, 'fidelity', nRandom]);
  for (const [w, h] of detail) runs.push([w, h, 'detail', 0]);
  for (const model of models) {
    let seed = 7, variant = 0;   // each model gets the same photos and positions
    const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    for (const [w, h, preset, nr] of runs) {
      const dataDir = mkdtempSync(join(tmpdir(), 'tiles-'));
      const service = await ImageService.open(loadConfig({ model, dataDir, demo: false, backgroundFill: false, preset, uploadMaxPixels: 64_000_000, uploadMaxBytes: 2 ** 31 - 1 }));
      // warm-up on a throwaway image: the model's first calls at each batch size grow onnxruntime's
      // arenas (page faults, 10× a warm call here), a cost of the server's first minute, not of a tile
      await oneTile(service, await photo(w, h, ++variant), (c, r) => [c - 1, r - 1]);
      const positions: [string, (c: number, r: number) => [number, number]][] = [
        ['top-left', () => [0, 0]], ['bottom-right', (c, r) => [c - 1, r - 1]],
        ...Array.from({ length: nr }, (_, i) => { const a = rand(), b = rand(); return [`random ${i + 1}`, (c: number, r: number) => [Math.floor(a * c), Math.floor(b * r)]] as [string, (c: number, r: number) => [number, number]]; }),
      ];
      const rows = [];
      for (const [name, pos] of positions) {
        const t = await oneTile(service, await photo(w, h, ++variant), pos);
        rows.push({ position: name, ...t });
        log(`${relative(ROOT, model)}: ${w}×${h} → ${4 * w}×${4 * h} ${preset}, ${name} tile ${t.col},${t.row}: ${t.seconds.toFixed(2)} s, ${t.nodes} layer-steps (≈${t.blockEvalsEquivalent.toFixed(0)} block-evaluations)`);
      }
      await service.close();
      rmSync(dataDir, { recursive: true, force: true });
      const secs = rows.map(r => r.seconds);
      out.push({ model: relative(ROOT, model), input: `${w}x${h}`, output: `${4 * w}x${4 * h}`, preset, tiles: rows, maxOverMin: Math.max(...secs) / Math.min(...secs) });
      log(`  max/min ${(Math.max(...secs) / Math.min(...secs)).toFixed(2)}`);
    }
  }
  const res = { date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model }, command: 'node --import tsx bench/tiles.ts ' + args.join(' '), results: out };
  saveResult('tiles', res);
}
main();
