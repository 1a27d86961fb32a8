/**
 * Run by test/large.test.ts in its own process, so that its peak RSS is the service's alone:
 * open a service (fixture model), add the upload at argv[3] from its file, make the far corner's
 * top-level tile and an LR-level tile, print what it measured as one JSON line.
 */
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { maxLevel, tileCount } from '../lib/tiles/pyramid.js';
import { FIXTURE } from './helpers.js';

const [dataDir, input] = process.argv.slice(2);
const service = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir, backgroundFill: false, demo: false, threads: 1 }));
const peakMiB = () => process.resourceUsage().maxRSS / 1024;
const before = peakMiB();
let t = Date.now();
const meta = await service.add({ path: input }, 'big.jpg');
const addMs = Date.now() - t;
const g = service.geometry(meta.id), M = maxLevel(g.width, g.height), tc = tileCount(g, M), lc = tileCount(g, M - 2);
t = Date.now();
const far = await service.tile(meta.id, M, tc.cols - 1, tc.rows - 1);
const farMs = Date.now() - t;
const lrTile = await service.tile(meta.id, M - 2, lc.cols - 1, lc.rows - 1);
const preview = await service.preview(meta.id, M - 1, 3, 2);
console.log(JSON.stringify({ before, after: peakMiB(), addMs, farMs, meta, width: g.width, height: g.height, far: far.bytes.length, lrTile: lrTile.bytes.length, preview: preview.bytes.length }));
await service.close();
