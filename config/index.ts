/**
 * Configuration: defaults in one place, overridden by environment (INFDIT_<KEY>) and then by
 * CLI flags (--kebab-key). The same keys for `serve` and `render`. Every value is validated;
 * a bad one is refused with the key, the value and what is accepted.
 */
import { z } from 'zod';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const bool = z.union([z.boolean(), z.string().toLowerCase().pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no']))]).transform(v => v === true || v === 'true' || v === '1' || v === 'yes');

export const schema = z.object({
  model: z.string().min(1).describe('exported model: its manifest <name>.json, with the graphs <name>.input.onnx, <name>.layer0.onnx, … beside it'),
  scale: z.coerce.number().refine(v => [2, 4, 8, 16].includes(v), 'must be one of 2, 4, 8, 16').describe('output size ÷ input size'),
  preset: z.string().regex(/^[a-z0-9_-]+$/).optional().describe("sampler preset from the model manifest (e.g. fidelity, detail); default: the manifest's"),
  steps: int(1, 200).optional().describe("sampler steps (overrides the preset's)"),
  sigmaMax: z.coerce.number().positive().max(1000).optional().describe("initial σ (overrides the manifest's)"),
  seed: int(0, 2 ** 32 - 1).describe('random seed: same image, model, seed → same bytes'),
  tileSize: int(16, 4096).describe('DZI tile size in px'),
  tileOverlap: int(0, 64).describe('DZI tile overlap in px: 1, as libvips dzsave writes, lets a viewer draw each tile edge from its neighbour\'s pixels, so no tile border shows when zoomed in (0: borders show as lines)'),
  tileFormat: z.enum(['jpeg', 'png', 'webp']).describe('tile format'),
  tileQuality: int(1, 100).describe('JPEG/WebP quality'),
  dataDir: z.string().min(1).describe('where uploads, blocks and tiles are kept'),
  kvCacheMb: z.coerce.number().min(1).max(1 << 20).describe('K/V cache bound in MiB'),
  diskBudgetMb: z.coerce.number().positive().max(2 ** 30).describe('bytes of generated blocks and tiles the data folder may hold, in MiB; least recently used go first (uploads are never evicted)'),
  batch: int(1, 256).describe('blocks per ONNX call'),
  threads: int(0, 256).describe('onnxruntime intra-op threads (0: all cores), shared among the model workers'),
  modelWorkers: int(1, 64).describe('model threads, each with its own onnxruntime sessions and threads ÷ model-workers (at least 1) intra-op threads, running batches side by side: 2 made a screenful 1.29× faster on 2 cores, and the HTTP thread\'s worst delays 2-4× longer (README)'),
  modelNice: int(0, 19).describe("nice value of the model's threads: the HTTP thread wins the CPU while they generate (0: equal)"),
  ortSpinning: bool.describe("let onnxruntime's threads spin between calls (faster small batches; starves the HTTP thread on few cores)"),
  port: int(0, 65535).describe('HTTP port'),
  host: z.string().min(1).describe('listen address'),
  uploadMaxBytes: int(1, 2 ** 31).describe('largest upload in bytes'),
  uploadMaxPixels: int(1, 2 ** 31).describe('largest upload in pixels (width × height)'),
  backgroundFill: bool.describe('generate the rest of an image when idle'),
  tileWaitMs: int(0, 600000).describe('how long a tile request waits for generation before it is answered with the preview'),
  viewLeaseMs: int(1000, 600000).describe("how long a viewer's view (POST /api/images/<id>/view) keeps its tiles first in line without being stated again"),
  demo: bool.describe('list the bundled demo photo'),
  http2: bool.describe('serve HTTP/2 over TLS (and HTTP/1.1) with --tls-cert/--tls-key, or a self-signed localhost certificate'),
  tlsCert: z.string().optional().describe('TLS certificate (PEM) for --http2'),
  tlsKey: z.string().optional().describe('TLS private key (PEM) for --http2'),
  queue: z.string().regex(/^rediss?:\/\/\S+$/, 'must be redis://HOST:PORT (or rediss:// for TLS)').optional().describe('generate on `infdit worker`s through Redis (BullMQ) at this URL instead of here'),
  regionBlocks: int(1, 256).describe('(--queue) blocks per side of a region job for renders and background fill: larger means less halo work (59% at 16, 27% at 32), fewer jobs to spread; a viewer tile asks for its own blocks only'),
  queueWindow: int(1, 100000).describe('(--queue) region jobs this process keeps on the queue at once'),
  queueLockMs: int(1000, 3600000).describe("a job's lock: a worker silent this long is taken for dead and its job goes to another"),
  uploads: bool.describe('accept uploads and deletes (--no-uploads: serve only the images already in the data folder)'),
  uploadToken: z.string().regex(/^[\x21-\x7e]{16,256}$/, 'must be 16–256 printable characters without spaces').optional()
    .describe('when set, uploads and deletes need the header "Authorization: Bearer <token>"; reading stays public'),
  uploadBudgetMb: z.coerce.number().positive().max(2 ** 30).describe("disk all uploads may take, in MiB: each upload's file, decoded photo and halvings; a full budget refuses uploads (507) until images are deleted"),
  uploadRateLimit: int(0, 1000000).describe('uploads one client (IP address) may make per 10 minutes; over it: 429 (0: no limit)'),
}).strict();

export type Config = z.infer<typeof schema>;

export const defaults: Config = {
  // release 8: a 2-layer transformer over a JPEG-aware base (a JPEG upload needs no restorer; no LR-pixel staircase);
  // releases 7 (infdit-s4-d3.json), 7 over the JPEG-aware base (infdit-s4-d3j.json) and 6 (infdit-s4.json) stay for
  // --model (model/release/MODEL_CARD.md)
  model: join(ROOT, 'model/release/infdit-s4-d2j.json'),
  scale: 4, seed: 0,
  tileSize: 256, tileOverlap: 1, tileFormat: 'jpeg', tileQuality: 90,
  dataDir: join(ROOT, 'data'),
  // 768: a 768 Mpx image's background fill levels off at ~1.74 GB RSS with 1.4% blocks rerun;
  // 1024 passed 2 GiB after 5 minutes (the process's own ~650 MB and allocator slack come on top)
  kvCacheMb: 768, diskBudgetMb: 10240, batch: 8, threads: 0, modelWorkers: 1, modelNice: 10, ortSpinning: false,
  port: 8080, host: '127.0.0.1',
  uploadMaxBytes: 256 * 1024 * 1024, uploadMaxPixels: 67_108_864,
  backgroundFill: true, tileWaitMs: 20000, viewLeaseMs: 30000, demo: true, http2: false,
  regionBlocks: 32, queueWindow: 256, queueLockMs: 30000,
  uploads: true, uploadBudgetMb: 4096, uploadRateLimit: 30,
};

export const KEYS = Object.keys(schema.shape) as (keyof Config)[];

type Key = keyof Config;
const MODEL_KEYS: Key[] = ['model', 'batch', 'threads', 'modelWorkers', 'kvCacheMb', 'ortSpinning', 'queue'];
const RENDER_KEYS: Key[] = [...MODEL_KEYS, 'scale', 'preset', 'steps', 'sigmaMax', 'seed', 'tileSize', 'tileOverlap', 'tileFormat', 'tileQuality',
  'dataDir', 'diskBudgetMb', 'modelNice', 'uploadMaxPixels', 'regionBlocks', 'queueWindow'];
/** The settings each command takes: `--help` lists them, and a flag of another command is refused. */
export const COMMAND_KEYS: Record<'serve' | 'render' | 'worker', Key[]> = {
  serve: [...RENDER_KEYS, 'port', 'host', 'http2', 'tlsCert', 'tlsKey', 'backgroundFill', 'tileWaitMs', 'viewLeaseMs', 'demo',
    'uploads', 'uploadToken', 'uploadBudgetMb', 'uploadRateLimit', 'uploadMaxBytes'],
  render: RENDER_KEYS,
  worker: [...MODEL_KEYS, 'queueLockMs'],
};
export type Command = keyof typeof COMMAND_KEYS;
export const kebab = (k: string) => k.replace(/[A-Z]/g, m => '-' + m.toLowerCase());
export const envName = (k: string) => 'INFDIT_' + kebab(k).replace(/-/g, '_').toUpperCase();

export class ConfigError extends Error {}

/** Merge defaults ← env ← overrides and validate. `keys`: the settings the environment may set
 *  (a command's; the others keep their defaults). */
export function loadConfig(overrides: Record<string, unknown> = {}, env: NodeJS.ProcessEnv = process.env, keys: readonly Key[] = KEYS): Config {
  const merged: Record<string, unknown> = { ...defaults };
  const source: Record<string, string> = {};       // where each value came from, for the error message
  for (const k of keys) if (env[envName(k)] !== undefined) { merged[k] = env[envName(k)]; source[k] = `env ${envName(k)}`; }
  for (const [k, v] of Object.entries(overrides)) {
    if (!(KEYS as string[]).includes(k)) throw new ConfigError(`unknown setting "${k}"; known: ${KEYS.map(kebab).join(', ')}`);
    if (v !== undefined) { merged[k] = v; source[k] = `--${kebab(k)}`; }
  }
  const r = schema.safeParse(merged);
  if (!r.success) {
    const i = r.error.issues[0];
    const key = String(i.path[0]);
    throw new ConfigError(`invalid ${kebab(key)} (${source[key] ?? 'default'}): got ${JSON.stringify(merged[key])}; ${i.message}` +
      (schema.shape[key as keyof Config]?.description ? ` — ${schema.shape[key as keyof Config].description}` : ''));
  }
  return r.data;
}

const BOOL_WORD = /^(true|false|1|0|yes|no)$/i;

/** Parse `--kebab-key value` / `--flag` / `--flag false` / `--no-flag` arguments into config
 *  overrides + positionals; `keys`: the settings this command takes. */
export function parseArgs(argv: string[], extra: string[] = [], keys: readonly Key[] = KEYS) {
  const out: Record<string, unknown> = {}, pos: string[] = [], other: Record<string, string | boolean> = {};
  const byFlag = new Map(keys.map(k => [kebab(k), k]));
  const boolKeys = new Set(['backgroundFill', 'demo', 'http2', 'ortSpinning', 'uploads']);
  const owners = (flag: string) => (Object.keys(COMMAND_KEYS) as Command[]).filter(c => COMMAND_KEYS[c].some(k => kebab(k) === flag));
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) { pos.push(a); continue; }
    let [flag, val] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    if (flag === 'help') { other.help = true; continue; }
    const neg = flag.startsWith('no-') && byFlag.has(flag.slice(3));
    if (neg) flag = flag.slice(3);
    if (extra.includes(flag)) { other[flag] = val ?? argv[++i]; continue; }
    const key = byFlag.get(flag);
    if (!key) {
      const of = owners(flag.startsWith('no-') ? flag.slice(3) : flag);
      if (of.length) throw new ConfigError(`--${flag} is an option of ${of.join(' and ')}, not of this command; this one takes: ${[...byFlag.keys(), ...extra].map(f => '--' + f).join(' ')}`);
      throw new ConfigError(`unknown option --${flag}; known: ${[...byFlag.keys(), ...extra].map(f => '--' + f).join(' ')}`);
    }
    if (boolKeys.has(key)) {
      // the forms people type: --x, --no-x, --x=false, --x false
      if (val === undefined && !neg && BOOL_WORD.test(argv[i + 1] ?? '')) val = argv[++i];
      out[key] = neg ? false : (val ?? true);
      continue;
    }
    if (val === undefined) {
      val = argv[++i];
      if (val === undefined) throw new ConfigError(`option --${flag} needs a value`);
    }
    out[key] = val;
  }
  return { overrides: out, positionals: pos, other };
}

/** What a setting means for a command other than the server, where the schema's words are the server's. */
export type HelpNotes = Partial<Record<Key, { describe?: string; default?: string }>>;

export function helpTable(keys: readonly Key[] = KEYS, notes: HelpNotes = {}) {
  return keys.map(k => `  --${kebab(k).padEnd(18)} ${notes[k]?.describe ?? schema.shape[k].description ?? ''} ` +
    `[default: ${notes[k]?.default ?? JSON.stringify((defaults as any)[k]) ?? 'none'}; env ${envName(k)}]`).join('\n');
}
