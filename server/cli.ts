/**
 * `infdit serve` and `infdit render`. Both take the same settings (config/index.ts) as flags
 * or INFDIT_* environment variables; `--help` lists them.
 */
import { readFileSync, cpSync, mkdirSync, rmSync, existsSync, renameSync } from 'node:fs';
import { basename, extname, join, resolve, dirname, parse } from 'node:path';
import { fileURLToPath } from 'node:url';
import cliProgress from 'cli-progress';
import { loadConfig, parseArgs, helpTable, ConfigError, COMMAND_KEYS, type Config, type Command, type HelpNotes } from '../config/index.js';
import { ImageService } from '../lib/tiles/service.js';
import { encode } from '../lib/tiles/image.js';
import { atomicWrite } from '../lib/engine/atomic.js';
import { createApp } from './app.js';
import { Model } from '../lib/engine/model.js';
import { startWorker } from '../lib/queue/worker.js';
import { checkRedis } from '../lib/queue/remote.js';
import { redact } from '../lib/queue/protocol.js';
import { listenHttp2, selfSigned } from './http2.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const DEMO = join(ROOT, 'viewer/demo.jpg');
const FULL_MAX_PIXELS = 268_000_000;
const FULL_FORMATS: Record<string, 'png' | 'tiff' | 'jpeg' | 'webp'> = { '.png': 'png', '.tif': 'tiff', '.tiff': 'tiff', '.jpg': 'jpeg', '.jpeg': 'jpeg', '.webp': 'webp' };

const USAGE = `infdit — a deep-zoom server that super-resolves photos lazily with Inf-DiT

usage:
  infdit serve  [options]                       serve the viewer and the DZI/IIIF tiles
  infdit render INPUT [--out DIR] [--full FILE] [options]
                                                write the whole pyramid (DIR/<name>.dzi, DIR/<name>_files/),
                                                byte-identical to what the server serves; --full also
                                                writes the whole output image (.png, .tif, .jpg, .webp)
  infdit worker --queue redis://HOST:PORT [options]
                                                generate region jobs for renders and servers that
                                                run with the same --queue (any number of machines)

  infdit COMMAND --help                         that command's options`;

const EXTRA: Record<Command, string> = {
  serve: '',
  render: `
  --out DIR            where the pyramid goes [default: a folder named after INPUT, e.g. photo/ for photo.jpg]
  --full FILE          also write the whole output image`,
  worker: '',
};
const ABOUT: Record<Command, string> = {
  serve: 'infdit serve [options] — serve the viewer and the DZI/IIIF tiles, generating what is looked at first',
  render: 'infdit render INPUT [--out DIR] [--full FILE] [options] — write the whole pyramid, byte for byte what the server would serve',
  worker: 'infdit worker --queue redis://HOST:PORT [options] — generate region jobs for renders and servers that use the same --queue',
};
/** The schema describes settings as the server uses them; where a command uses one otherwise, its help says so. */
const MODEL_WORKERS = 'model threads, each with its own onnxruntime sessions and threads ÷ model-workers (at least 1) intra-op threads, running batches side by side';
const ORT_SPINNING = "let onnxruntime's threads spin between calls (faster small batches)";
const NOTES: Record<Command, HelpNotes> = {
  serve: {},
  render: {
    dataDir: { describe: 'where the render keeps finished blocks and tiles, so a killed render resumes', default: '<out>/.infdit-cache' },
    modelNice: { describe: "nice value of the model's threads (0: equal with other processes)" },
    modelWorkers: { describe: `${MODEL_WORKERS} (2 made a screenful 1.29× faster on 2 cores)` },
    uploadMaxPixels: { describe: 'largest INPUT in pixels' },
    ortSpinning: { describe: ORT_SPINNING },
  },
  worker: { modelWorkers: { describe: MODEL_WORKERS }, ortSpinning: { describe: ORT_SPINNING } },
};
const commandHelp = (cmd: Command) => `${ABOUT[cmd]}

options (flag, or environment variable):
${helpTable(COMMAND_KEYS[cmd], NOTES[cmd])}${EXTRA[cmd]}
  --help               this text`;

async function serve(cfg: Config) {
  const service = await ImageService.open(cfg);
  if (cfg.demo && existsSync(DEMO)) await service.add({ path: DEMO }, 'demo.jpg', { demo: true });
  service.fillAll();
  const app = createApp(service);
  const announce = (url: string) => {
    console.log(`infdit: model ${service.model.manifest.name} (${service.model.id}), ${cfg.scale}×, data in ${cfg.dataDir}`);
    console.log(`infdit: viewer at ${url}`);
  };
  if (cfg.http2) {
    if (!!cfg.tlsCert !== !!cfg.tlsKey) throw new ConfigError('--tls-cert and --tls-key go together (or neither, for a self-signed localhost certificate)');
    const tls = cfg.tlsCert ? { cert: readFileSync(cfg.tlsCert), key: readFileSync(cfg.tlsKey!) } : selfSigned(join(cfg.dataDir, 'tls'));
    const { port } = await listenHttp2(app, { port: cfg.port, host: cfg.host, ...tls });
    announce(`https://${cfg.host}:${port}/ (HTTP/2${cfg.tlsCert ? '' : ', self-signed certificate'})`);
    return;
  }
  const server = app.listen(cfg.port, cfg.host, () => {
    const a = server.address();
    const port = typeof a === 'object' && a ? a.port : cfg.port;
    announce(`http://${cfg.host}:${port}/`);
  });
  server.on('error', e => { console.error(`infdit: cannot listen on ${cfg.host}:${cfg.port}: ${e.message}`); process.exit(1); });
}

async function worker(cfg: Config) {
  if (!cfg.queue) throw new ConfigError('worker needs --queue redis://HOST:PORT (the same as the render or server it works for)');
  await checkRedis(cfg.queue);
  const model = await Model.load(cfg.model, { threads: cfg.threads, workers: cfg.modelWorkers, nice: 0, spinning: cfg.ortSpinning, warm: cfg.batch });
  const w = await startWorker(cfg.queue, model, { batch: cfg.batch, kvBytes: cfg.kvCacheMb * 2 ** 20, lockMs: cfg.queueLockMs, log: s => console.log(`infdit worker: ${s}`) });
  console.log(`infdit worker: model ${model.manifest.name} (${model.id}), ${cfg.threads || 'all'} threads, waiting for region jobs at ${redact(cfg.queue)}`);
  const stop = async () => { await w.close(); await model.close(); process.exit(0); };
  process.once('SIGTERM', stop); process.once('SIGINT', stop);
}

async function render(cfg: Config, input: string | undefined, out: string, full?: string) {
  if (!input) throw new ConfigError('render needs an INPUT image: infdit render photo.jpg [--out DIR] [--full out.png]');
  if (!existsSync(input)) throw new ConfigError(`input ${input} does not exist`);
  if (full && !FULL_FORMATS[extname(full).toLowerCase()])
    throw new ConfigError(`--full ${full}: accepted extensions are ${Object.keys(FULL_FORMATS).join(', ')}`);
  const service = await ImageService.open({ ...cfg, backgroundFill: false });
  const meta = await service.add({ path: input }, basename(input));
  const g = service.geometry(meta.id);
  // --full holds the whole output in memory (and no single-file format reader copes far beyond it)
  if (full && g.width * g.height > FULL_MAX_PIXELS)
    throw new ConfigError(`--full: the output is ${g.width}×${g.height} = ${(g.width * g.height / 1e6).toFixed(0)} Mpx, over the ${FULL_MAX_PIXELS / 1e6} Mpx a whole image may have here; the pyramid (--out) has every pixel`);
  const name = basename(input, extname(input)).replace(/[^\w.-]+/g, '_') || 'image';
  // Progress in blocks of the top level (where the time goes: lower levels are halvings of it),
  // with its rate's ETA; tiles as they are written. A resumed render starts at what is stored.
  const bar = new cliProgress.SingleBar({ format: 'blocks [{bar}] {percentage}% | {value}/{total} | tiles {tiles}/{tilesTotal} | ETA {eta_formatted} | elapsed {duration_formatted}',
    hideCursor: true, noTTYOutput: true, notTTYSchedule: 5000, etaBuffer: 200 }, cliProgress.Presets.shades_classic);
  const p0 = await service.progress(meta.id);
  bar.start(p0.total, p0.done, { tiles: 0, tilesTotal: '?' });
  const unlisten = service.onBlock(meta.id, (done) => bar.update(done));
  const t0 = Date.now();
  const res = await service.renderAll(meta.id, (done, total) => bar.update({ tiles: done, tilesTotal: total }));
  unlisten();
  bar.stop();
  mkdirSync(out, { recursive: true });
  const dest = join(out, `${name}_files`);
  rmSync(dest, { recursive: true, force: true });
  // moved, not copied: a gigapixel pyramid is gigabytes (the cache keeps the blocks, so a second
  // render of the same input remakes the tiles from them without running the model)
  try { renameSync(join(res.dir, `${meta.id}_files`), dest); } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    cpSync(join(res.dir, `${meta.id}_files`), dest, { recursive: true });
  }
  cpSync(res.dzi, join(out, `${name}.dzi`));
  console.log(`wrote ${join(out, name + '.dzi')} (${(Date.now() - t0) / 1000} s)`);
  if (full) {
    const img = await service.full(meta.id);   // checked against FULL_MAX_PIXELS before the render began
    atomicWrite(full, await encode(img, FULL_FORMATS[extname(full).toLowerCase()], 95));
    console.log(`wrote ${full} (${img.width}×${img.height})`);
  }
  if (service.remote) {
    const q = service.remote.stats, mb = (b: number) => (b / 2 ** 20).toFixed(1);
    console.log(`queue: ${q.jobs} region jobs, ${q.blocks} blocks; Redis carried ${mb(q.payloadBytes)} MB of jobs and ${mb(q.resultBytes)} MB of results (${mb((q.payloadBytes + q.resultBytes) / (g.width * g.height / 1e6))} MB per output Mpx); workers ran ${q.workerNodes} layer-steps`);
  }
  await service.close();
}

async function main(argv: string[]) {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === 'help') { console.log(USAGE); return; }
  if (!(cmd in COMMAND_KEYS)) throw new ConfigError(`unknown command "${cmd}"; use "serve", "render" or "worker" (infdit --help)`);
  const command = cmd as Command, keys = COMMAND_KEYS[command];
  const { overrides, positionals, other } = parseArgs(rest, command === 'render' ? ['out', 'full'] : [], keys);
  if (other.help) { console.log(commandHelp(command)); return; }
  if ((cmd === 'serve' || cmd === 'worker') && positionals.length) throw new ConfigError(`${cmd} takes no positional arguments, got ${positionals.join(' ')}`);
  if (cmd === 'render' && positionals.length > 1) throw new ConfigError(`render takes one INPUT, got ${positionals.join(' ')}`);
  const cfg = loadConfig(overrides, process.env, keys);
  if (cmd === 'serve') await serve(cfg);
  else if (cmd === 'worker') await worker(cfg);
  else {
    // without --out, a folder named after the photo: never the current folder, which a pyramid would fill
    const out = other.out !== undefined ? String(other.out) : positionals[0] ? parse(positionals[0]).name || 'render' : '.';
    // a render's input is the user's own file: no upload budget
    await render({ ...cfg, uploadBudgetMb: 2 ** 30, uploadMaxBytes: 2 ** 31, dataDir: overrides.dataDir ? cfg.dataDir : resolve(out, '.infdit-cache') }, positionals[0], out, other.full as string | undefined);
  }
}

main(process.argv.slice(2)).catch(e => {
  console.error(`infdit: ${e instanceof Error ? e.message : e}`);
  process.exit(2);
});
