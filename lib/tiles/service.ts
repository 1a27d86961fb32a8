/**
 * The image service: uploads, their renders, and the tile store. Shared by the HTTP server and
 * `infdit render`, so both write the same bytes. Knows nothing about HTTP.
 *
 * On disk, under dataDir:
 *   images/<id>/source          the upload as received (id = its SHA-256, so uploads dedupe)
 *   images/<id>/meta.json       name, sizes
 *   images/<id>/r-<key>/blocks  finished blocks (key: model, scale, seed, sampler)
 *   images/<id>/r-<key>/<id>.dzi and <id>_files/<L>/<c>_<r>.<fmt>   the DZI pyramid
 * Every file is written to a temp name and renamed, so a crash never leaves half a file.
 */
import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, existsSync, readdirSync, rmSync, statSync, accessSync, constants, copyFileSync, renameSync, createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { cpus } from 'node:os';
import sharp from 'sharp';
import { LRUCache } from 'lru-cache';
import { Model } from '../engine/model.js';
import { Render } from '../engine/render.js';
import { DiskBlockStore } from '../engine/blockstore.js';
import { AbortError } from '../engine/engine.js';
import { encode, ImageError, type RGBImage } from './image.js';
import { prepareLR, openLR, halvings, DecodeError, type LRFolder, type RawPixels } from './lrfile.js';
import { jpegQuality } from './jpeg-quality.js';
import { SharedCancellable, SharedPromiseCache } from './shared-promise.js';
import { coarseMap, encodeRuns, EtaMeter } from './progress.js';
import { Views, viewTiles, VIEW_PRIORITY, type View } from './views.js';
import { atomicWrite, DiskFullError } from '../engine/atomic.js';
import { DiskBudget } from './diskbudget.js';
import { RemoteGenerator, type RemoteRender } from '../queue/remote.js';
import { PRIORITY } from '../queue/protocol.js';
import { LevelSampler, tileRect, validTile, dziXml, maxLevel, levelSize, allTiles, type Geometry } from './pyramid.js';
import type { Config } from '../../config/index.js';

export interface ImageMeta { id: string; name: string; lrWidth: number; lrHeight: number; created: string; demo?: boolean }

export interface TileResult { bytes: Buffer; etag: string }

export class NotFound extends Error {}

// libvips keeps a cache of recent operations and one malloc arena per worker thread: under many
// concurrent viewers that, not our data, grew the RSS with the number of viewers (measured:
// 0.9 GB at 1 viewer, 3.2 GB at 50). A small cache and a bounded number of image operations in
// flight keep memory set by configuration.
sharp.cache({ memory: 16, files: 0, items: 32 });
const IMAGE_OPS = Math.max(2, cpus().length);
let imageOpsActive = 0;
const imageOpsWaiting: (() => void)[] = [];
async function imageOp<T>(f: () => Promise<T>): Promise<T> {
  if (imageOpsActive < IMAGE_OPS) imageOpsActive++;
  else await new Promise<void>(r => imageOpsWaiting.push(r));   // a finishing op hands its slot over
  try { return await f(); } finally {
    const next = imageOpsWaiting.shift();
    if (next) next(); else imageOpsActive--;
  }
}

const ID_RE = /^[0-9a-f]{16}$/;
/** Raster formats accepted, as libvips names what it read (sharp's metadata().format): never by the
 *  first bytes, so an SVG behind a comment or a byte-order mark is still an SVG. */
const ACCEPTED: Record<string, string> = { jpeg: 'JPEG', png: 'PNG', webp: 'WebP', tiff: 'TIFF', gif: 'GIF', heif: 'AVIF/HEIF' };
const ACCEPTED_LIST = Object.values(ACCEPTED).join(', ');

/** The upload budget is full: nothing was written. */
export class UploadBudgetError extends Error {}
/** Generated files, evictable: blocks and tiles under a render's folder (not source or meta.json). */
const GENERATED = /[\/]r-[0-9a-f]+[\/](blocks[\/]s\d+[\/]\d+_\d+\.rgb|[0-9a-f]{16}_files[\/]\d+[\/]\d+_\d+\.(jpeg|png|webp))$/;
/** Block rows per background-fill request. */
const FILL_ROWS = 8;

/** One image at the configured settings: its render (lazy) and its pyramid. */
class Entry {
  lr?: LRFolder;
  render?: Render;
  store?: DiskBlockStore;
  /** Pyramid levels at or below the LR's resolution: the photo's own halvings, on disk. */
  sources?: Map<number, RawPixels>;
  /** The source file's JPEG quality (0: not a JPEG): a model with the JPEG condition is told it. */
  jpegQuality = 0;
  readonly events = new EventEmitter();
  readonly dir: string; readonly pyramidDir: string;
  readonly eta = new EtaMeter();
  /** What the upload takes on disk (its file, decoded photo and halvings), against the upload budget. */
  uploadBytes = 0;
  removed = false;
  constructor(readonly meta: ImageMeta, root: string, key: string, readonly geometry: Geometry) {
    this.dir = join(root, meta.id);
    this.pyramidDir = join(this.dir, `r-${key}`);
    this.events.setMaxListeners(0);
  }
}

export class ImageService {
  private entries = new Map<string, Entry>();
  private tiles = new SharedCancellable<TileResult>();
  private opening = new SharedPromiseCache<Entry>();
  private adding = new SharedPromiseCache<ImageMeta>();
  private renderKey: string;
  readonly imagesDir: string;
  /** Uploads being received (emptied at start). */
  readonly spoolDir: string;
  private activeViewerTiles = 0;
  private fillQueue: string[] = [];

  /** The data folder's generated files (blocks, tiles) under --disk-budget-mb. */
  readonly budget: DiskBudget;
  /** Bytes the uploads take on disk (--upload-budget-mb), including those being written now. */
  private uploadBytes = 0;

  /** With --queue: the workers that generate, instead of this process's model. */
  remote?: RemoteGenerator;

  /** What the viewers look at: generated first, withdrawn when it leaves their view. */
  readonly views: Views;

  private constructor(readonly cfg: Config, readonly model: Model) {
    this.imagesDir = join(cfg.dataDir, 'images');
    this.spoolDir = join(cfg.dataDir, 'spool');
    this.budget = new DiskBudget(cfg.diskBudgetMb * 2 ** 20);
    this.views = new Views((id, t, o) => this.tile(id, t.L, t.c, t.r, o), { leaseMs: cfg.viewLeaseMs, maxViewers: 256,
      onError: e => console.error(`a tile in view failed: ${e.message}`) });
    const m = model.manifest;
    const preset = cfg.preset ?? m.sampling.default_preset;
    this.renderKey = createHash('sha256').update(JSON.stringify([model.id, cfg.scale, cfg.seed, preset, cfg.steps ?? null,
      cfg.sigmaMax ?? null, cfg.tileSize, cfg.tileOverlap, cfg.tileFormat, cfg.tileQuality])).digest('hex').slice(0, 12);
  }

  static async open(cfg: Config): Promise<ImageService> {
    checkDataDir(cfg.dataDir);
    // with --queue the workers run the model; here only its manifest and identity are needed
    const model = await Model.load(cfg.model, { threads: cfg.threads, workers: cfg.modelWorkers, nice: cfg.modelNice, spinning: cfg.ortSpinning, warm: cfg.batch, graphs: !cfg.queue });
    const s = new ImageService(cfg, model);
    if (cfg.queue) {
      try { s.remote = await RemoteGenerator.open(cfg.queue, model, { regionBlocks: cfg.regionBlocks, viewerBlocks: Math.max(1, Math.round(cfg.tileSize / model.manifest.block)), window: cfg.queueWindow }); }
      catch (e) { await model.close(); throw e; }
    }
    mkdirSync(s.imagesDir, { recursive: true });
    rmSync(s.spoolDir, { recursive: true, force: true });
    mkdirSync(s.spoolDir, { recursive: true });
    s.cleanTemps(s.imagesDir);
    // what earlier runs generated counts against the budget, oldest first out
    s.budget.scan(s.imagesDir, p => GENERATED.test(p));
    for (const name of readdirSync(s.imagesDir)) {
      const dir = join(s.imagesDir, name);
      // a deletion or an upload that a crash cut short (no meta.json yet): nothing of it was listed
      if (name.startsWith('.deleted-') || (ID_RE.test(name) && !existsSync(join(dir, 'meta.json')))) {
        const mb = (duBytes(dir) / 2 ** 20).toFixed(1);
        rmSync(dir, { recursive: true, force: true });
        console.log(`infdit: removed ${name.startsWith('.') ? 'an interrupted deletion' : 'a half-made upload'}, images/${name} (${mb} MiB)`);
        continue;
      }
      if (!ID_RE.test(name)) continue;
      let meta: ImageMeta;
      try { meta = JSON.parse(readFileSync(join(dir, 'meta.json'), 'utf8')); }
      catch (e) { console.error(`infdit: images/${name}/meta.json is unreadable (${(e as Error).message}); the image is not listed`); continue; }
      const e = s.register(meta);
      e.uploadBytes = uploadBytesOf(dir);
      s.uploadBytes += e.uploadBytes;
    }
    return s;
  }

  private cleanTemps(dir: string) {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) this.cleanTemps(p);
      else if (e.name.endsWith('.tmp')) rmSync(p, { force: true });
    }
  }

  private register(meta: ImageMeta): Entry {
    const f = this.cfg.scale;
    const g: Geometry = { width: meta.lrWidth * f, height: meta.lrHeight * f, tileSize: this.cfg.tileSize, overlap: this.cfg.tileOverlap };
    const e = new Entry(meta, this.imagesDir, this.renderKey, g);
    this.entries.set(meta.id, e);
    return e;
  }

  /**
   * Add an image from its bytes or a file (an upload spooled to disk), validated by decoding it.
   * Same bytes → same id. Memory stays bounded whatever the photo's size: the header is checked
   * first, then the photo is decoded strip by strip into images/<id>/lr (lib/tiles/lrfile.ts).
   */
  async add(input: Buffer | { path: string }, name: string, opts: { demo?: boolean } = {}): Promise<ImageMeta> {
    const isFile = !Buffer.isBuffer(input);
    const size = isFile ? statSync(input.path).size : input.length;
    if (size === 0) throw new ImageError(`empty file; accepted: ${ACCEPTED_LIST}`);
    if (size > this.cfg.uploadMaxBytes) throw new ImageError(`file is ${size} bytes, over the limit of ${this.cfg.uploadMaxBytes} bytes (upload-max-bytes)`, 413);
    const head = await checkHeader(isFile ? input.path : input, this.cfg.uploadMaxPixels);
    const id = (isFile ? await hashFile(input.path) : createHash('sha256').update(input).digest('hex')).slice(0, 16);
    const existing = this.entries.get(id);
    if (existing) return existing.meta;
    return this.adding.run(id, async () => {
      // what it will take on disk, from its header, before a byte is written: its file, the decoded
      // photo and its halvings (lib/tiles/lrfile.ts)
      const need = size + 64 + halvings(head.width, head.height).reduce((a, l) => a + 3 * l.width * l.height, 0);
      this.reserveUpload(need);
      const dir = join(this.imagesDir, id);
      mkdirSync(dir, { recursive: true });
      let lr: LRFolder;
      try {
        if (isFile) { const tmp = join(dir, `source.${process.pid}.tmp`); copyFileSync(input.path, tmp); renameSync(tmp, join(dir, 'source')); }
        else atomicWrite(join(dir, 'source'), input);
        // a JPEG whose data ends before its pixels do is corrupt, whatever its header claims (libjpeg
        // only warns, and fills the rest grey: 2.4 KB claiming 8000×8000 became a 245 MB upload)
        lr = await prepareLR(join(dir, 'source'), join(dir, 'lr'), this.cfg.uploadMaxPixels, head.format === 'jpeg' ? 'warning' : 'truncated');
      } catch (e) {
        this.uploadBytes -= need;
        rmSync(dir, { recursive: true, force: true });   // no meta.json yet: nothing of it was ever listed
        if (e instanceof DecodeError) throw new ImageError(e.message);
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw new DiskFullError(join(dir, 'source'));
        throw e;
      }
      const safeName = name.replace(/[^\w.\- ]+/g, '_').slice(0, 120) || 'image';
      const meta: ImageMeta = { id, name: safeName, lrWidth: lr.width, lrHeight: lr.height, created: new Date().toISOString(), ...(opts.demo ? { demo: true } : {}) };
      atomicWrite(join(dir, 'meta.json'), JSON.stringify(meta, null, 1));   // written last: marks the upload complete
      const e = this.register(meta);
      e.lr = lr;
      e.uploadBytes = uploadBytesOf(dir);
      this.uploadBytes += e.uploadBytes - need;      // the estimate, now the real size
      this.scheduleFill(id);
      return meta;
    });
  }

  /** Refuse, before anything is written, `bytes` more of uploads that would not fit the upload
   *  budget; `what` says what they are ("this upload is", "this photo needs … on disk"). */
  checkUploadRoom(bytes: number, what: (size: string) => string) {
    const max = this.cfg.uploadBudgetMb * 2 ** 20, mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    if (this.uploadBytes + bytes > max)
      throw new UploadBudgetError(`the upload budget is full: ${what(mib(bytes))}, ${mib(Math.max(0, max - this.uploadBytes))} of ${mib(max)} are free ` +
        '(upload-budget-mb); delete images (DELETE /api/images/<id>) or raise --upload-budget-mb');
  }

  /** Count `bytes` against the upload budget, or refuse before anything is written. */
  private reserveUpload(bytes: number) {
    this.checkUploadRoom(bytes, size => `this photo needs ${size} on disk (its file, the decoded photo and its halvings)`);
    this.uploadBytes += bytes;
  }

  /** The upload budget: bytes used and allowed. */
  uploads() { return { usedBytes: this.uploadBytes, budgetBytes: this.cfg.uploadBudgetMb * 2 ** 20 }; }

  /**
   * Delete an image: its upload and everything made from it. Its work is withdrawn first (views,
   * background fill, open requests); what the two batches in flight finish is not written. The
   * folder is renamed before it is removed, so a crash in between leaves nothing listed (swept at
   * the next start). Returns the bytes freed.
   */
  async remove(id: string) {
    const e = this.entry(id);
    this.entries.delete(id);
    this.views.forget(id);
    const q = this.fillQueue.indexOf(id);
    if (q >= 0) { this.fillQueue.splice(q, 1); if (q === 0) this.fillAbort?.abort(); }
    e.removed = true;
    e.store?.close();
    for (const st of e.render?.stages ?? []) st.cancelAll();
    for (const l of e.lr?.levels ?? []) l.close();
    const bytes = duBytes(e.dir), trash = join(this.imagesDir, `.deleted-${id}-${Date.now()}`);
    renameSync(e.dir, trash);
    this.budget.forgetUnder(e.dir);
    for (const k of [...this.hot.keys()]) if (k.startsWith(e.dir)) this.hot.delete(k);
    this.uploadBytes -= e.uploadBytes;
    await rm(trash, { recursive: true, force: true });
    return { id, freedBytes: bytes };
  }

  list(): ImageMeta[] {
    return [...this.entries.values()].map(e => e.meta).sort((a, b) => Number(!!b.demo) - Number(!!a.demo) || a.created.localeCompare(b.created));
  }

  has(id: string) { return ID_RE.test(id) && this.entries.has(id); }

  private entry(id: string): Entry {
    const e = ID_RE.test(id) ? this.entries.get(id) : undefined;
    if (!e) throw new NotFound(`no image with id "${String(id).slice(0, 40)}"`);
    return e;
  }

  /** Load the LR image and set up the render (once, coalesced). */
  private ready(id: string): Promise<Entry> {
    const e = this.entry(id);
    if (e.render) return Promise.resolve(e);
    return this.opening.run(id, async () => {
      // an upload from before the LR was kept on disk, or one whose preparation a crash cut short
      e.lr ??= openLR(join(e.dir, 'lr')) ?? await prepareLR(join(e.dir, 'source'), join(e.dir, 'lr'), Number.MAX_SAFE_INTEGER);
      mkdirSync(join(e.pyramidDir, `${id}_files`), { recursive: true });
      // read from the file as kept (its id is its hash), so the same upload always tells the same
      e.jpegQuality = jpegQuality(join(e.dir, 'source'));
      const render = new Render({
        jpegQuality: e.jpegQuality,
        model: this.model, image: e.lr.levels[0], scale: this.cfg.scale, seed: this.cfg.seed, preset: this.cfg.preset, steps: this.cfg.steps,
        sigmaMax: this.cfg.sigmaMax, batch: this.cfg.batch, kvBytes: this.cfg.kvCacheMb * 1024 * 1024,
        store: e.store = new DiskBlockStore(join(e.pyramidDir, 'blocks'), this.budget),
      });
      const srcTop = maxLevel(e.geometry.width, e.geometry.height) - Math.log2(this.cfg.scale);
      e.sources = new Map(e.lr.levels.map((px, k) => [srcTop - k, px] as const).filter(([L]) => L >= 0));
      const last = render.last;
      last.onBlockDone((r, c) => {
        e.eta.tick();
        const p = render.progress();
        e.events.emit('block', { r, c, done: p.done, total: p.total });
      });
      e.render = render;
      if (!existsSync(join(e.pyramidDir, `${id}.dzi`))) atomicWrite(join(e.pyramidDir, `${id}.dzi`), dziXml(e.geometry, this.cfg.tileFormat));
      return e;
    });
  }

  geometry(id: string) { return this.entry(id).geometry; }

  async dzi(id: string): Promise<string> {
    const e = this.entry(id);
    return dziXml(e.geometry, this.cfg.tileFormat);
  }

  async status(id: string) {
    const e = await this.ready(id);
    const p = e.render!.progress();
    const M = maxLevel(e.geometry.width, e.geometry.height);
    return {
      ...e.meta, width: e.geometry.width, height: e.geometry.height, scale: this.cfg.scale, jpegQuality: e.jpegQuality,
      tileSize: this.cfg.tileSize, overlap: this.cfg.tileOverlap, format: this.cfg.tileFormat, maxLevel: M,
      sourceMaxLevel: M - Math.log2(this.cfg.scale),
      // bounded whatever the image's size: counts and a coarse map; per block: blocks(id)
      blocks: { done: p.done, total: p.total, rows: e.render!.last.R, cols: e.render!.last.C,
        size: e.render!.last.B / (e.render!.halveOutput ? 2 : 1), map: coarseMap(this.doneFlags(e), e.render!.last.R, e.render!.last.C) },
      percent: p.total ? Math.round((1000 * p.done) / p.total) / 10 : 100,
      // the whole image's: smoothed from the recent rate (lib/tiles/progress.ts); none without a fill
      etaSeconds: p.done >= p.total ? 0 : this.cfg.backgroundFill ? e.eta.estimate(p.total - p.done) : null,
      backgroundFill: this.cfg.backgroundFill,
      view: this.viewState(e),
      model: { name: this.model.manifest.name, id: this.model.id },
      // what a tile shows until it is final: the base super-resolver, or (a model without one, or a
      // --queue master, which runs no graphs) the Lanczos3 upscale
      preview: e.render!.base ? 'base' : 'lanczos',
      // the engine's work so far (nodes: block layer-steps run, all stages; modelMs: the model thread's time in them;
      // jsMs: this thread's time assembling and unpacking their batches)
      engine: { ...e.render!.stages.reduce((a, st) => ({ nodes: a.nodes + st.stats.nodes, calls: a.calls + st.stats.calls, reruns: a.reruns + st.stats.reruns,
        modelMs: a.modelMs + Math.round(st.stats.modelMs), jsMs: a.jsMs + Math.round(st.stats.jsMs), byClass: mergeCounts(a.byClass, st.stats.byClass) }),
        { nodes: 0, calls: 0, reruns: 0, modelMs: 0, jsMs: 0, byClass: {} as Record<number, number> }),
        wanted: this.demand(e, 0),
        // the base super-resolver's tiles (previews, and up(LR) of a model over it) and its calls' summed time (calls
        // queued side by side overlap: not a share of the CPU; bench/base.ts times one window alone)
        base: { tiles: e.render!.bases.reduce((a, b) => a + b.computed, 0), ms: Math.round(e.render!.bases.reduce((a, b) => a + b.ms, 0)) },
        // the JPEG restorer's tiles under them (a JPEG upload and a model with a restorer), the same way
        restorer: { tiles: e.render!.restorer?.computed ?? 0, ms: Math.round(e.render!.restorer?.ms ?? 0) } },
    };
  }

  /**
   * Viewer `viewer` now looks at `view` of image `id` (null: it looks away). The level's tiles
   * under it are made first, nearest the centre first; what left the viewer's view is withdrawn
   * (lib/tiles/views.ts). Levels that come from the photo itself need no work.
   */
  async view(id: string, viewer: string, view: View | null) {
    const e = await this.ready(id);
    const M = maxLevel(e.geometry.width, e.geometry.height);
    if (view && !(Number.isInteger(view.level) && view.level >= 0 && view.level <= M))
      throw new RangeError(`level ${view.level} is not a level of this pyramid (0 … ${M})`);
    const tiles = view && !e.sources!.has(view.level) ? viewTiles(e.geometry, view) : [];
    // what the viewer shows first: the view's base windows (its previews' pixels), nearest the centre first,
    // before the transformer starts on the view (entered now, before the tiles are asked below). At the base's
    // own level only (elsewhere a preview is the base resized from a larger area), for the tiles not final yet.
    const base = e.render?.base, ls = view ? levelSize(e.geometry, view.level) : undefined;
    if (base && ls && ls.width === base.width && ls.height === base.height) {
      const rects = tiles.filter(t => !this.stored(e, t.L, t.c, t.r)).map(t => tileRect(e.geometry, t.L, t.c, t.r));
      if (rects.length) void base.warm(rects, { priority: VIEW_PRIORITY }).catch(() => { /* a failed window fails the preview or block that asks it again */ });
    }
    if (!view) this.views.withdraw(viewer);
    else this.views.set(viewer, id, tiles);
    return { tiles: tiles.map(t => [t.L, t.c, t.r]), leaseMs: this.cfg.viewLeaseMs };
  }

  /** The viewers' demand on an image: views, tiles being made for them, and the engine's work
   *  still wanted at their priority (zero once every view is made or withdrawn). */
  private viewState(e: Entry) {
    const { viewers, making } = this.views.state(e.meta.id);
    return { viewers, making, engine: this.demand(e, VIEW_PRIORITY) };
  }

  /** Open engine requests at or above a priority, and the unfinished blocks they name, all stages. */
  private demand(e: Entry, minPriority: number) {
    return e.render!.stages.reduce((a, st) => { const d = st.demand(minPriority); return { requests: a.requests + d.requests, blocks: a.blocks + d.blocks }; }, { requests: 0, blocks: 0 });
  }

  private doneFlags(e: Entry): Uint8Array {
    const s = e.render!.last, out = new Uint8Array(s.R * s.C);
    for (let r = 0; r < s.R; r++) for (let c = 0; c < s.C; c++) if (s.isFinal(r, c)) out[r * s.C + c] = 1;
    return out;
  }

  /** Which blocks of the last stage are done, run-length coded (lib/tiles/progress.ts). */
  async blocks(id: string) {
    const e = await this.ready(id), s = e.render!.last;
    return { rows: s.R, cols: s.C, done: s.doneCount(), encoding: 'runs-leb128-base64: alternating not-done/done run lengths, row-major, from not-done', runs: encodeRuns(this.doneFlags(e)) };
  }

  events(id: string) { return this.entry(id).events; }

  /** Finished and total blocks of the last stage (cheap: counted as blocks finish). */
  async progress(id: string) { return (await this.ready(id)).render!.progress(); }

  /** Call `fn(done, total)` as each block of the last stage finishes; returns the unsubscribe. */
  onBlock(id: string, fn: (done: number, total: number) => void) {
    const ev = this.entry(id).events, h = (e: { done: number; total: number }) => fn(e.done, e.total);
    ev.on('block', h);
    return () => ev.off('block', h);
  }

  private tilePath(e: Entry, L: number, c: number, r: number) {
    return join(e.pyramidDir, `${e.meta.id}_files`, String(L), `${c}_${r}.${this.cfg.tileFormat}`);
  }

  /**
   * A final tile: from the store, else made (coalesced with any other request for it) and
   * stored. `signal` cancels the caller's interest; the generation stops when no one waits.
   */
  async tile(id: string, L: number, c: number, r: number, opt: { signal?: AbortSignal; priority?: number } = {}): Promise<TileResult> {
    const e = await this.ready(id);
    if (!validTile(e.geometry, L, c, r)) throw new NotFound(`tile ${L}/${c}_${r} is outside the pyramid`);
    const path = this.tilePath(e, L, c, r);
    const stored = this.finalTile(path);
    if (stored) return stored;
    const key = `${id}/${L}/${c}/${r}`;
    // Coalesced callers share the generation; it is cancelled only if all of them go away.
    return this.tiles.run(key, async (signal) => {
      this.activeViewerTiles++;
      try {
        const rect = tileRect(e.geometry, L, c, r);
        const img = await this.levelRegion(e, L, rect.x, rect.y, rect.w, rect.h, { signal, priority: opt.priority ?? 10 });
        const bytes = await imageOp(() => encode(img, this.cfg.tileFormat, this.cfg.tileQuality));
        if (e.removed) throw new NotFound(`image "${id}" was deleted`);
        mkdirSync(join(e.pyramidDir, `${id}_files`, String(L)), { recursive: true });
        this.budget.write(path, bytes, () => this.hot.delete(path));
        e.events.emit('tile', { level: L, col: c, row: r });
        const t = this.result(bytes);
        this.hot.set(path, t);
        return t;
      } finally {
        this.activeViewerTiles--;
        if (this.activeViewerTiles === 0) this.kickFill();
      }
    }, opt.signal);
  }

  private levelRegion(e: Entry, L: number, x: number, y: number, w: number, h: number, opt: { signal?: AbortSignal; priority?: number }) {
    const top = async (x0: number, y0: number, ww: number, hh: number) => {
      if (this.remote) await this.remoteRect(e, x0, y0, ww, hh, PRIORITY.viewer, opt.signal);
      return e.render!.region(x0, y0, ww, hh, opt);
    };
    const sampler = new LevelSampler(e.geometry, top, l => e.sources!.get(l) ?? null);
    return sampler.region(L, x, y, w, h);
  }

  // ------------------------------------------------------------- queue (--queue)

  private remoteOf(e: Entry): RemoteRender {
    return { key: `${e.meta.id}-${this.renderKey}`, render: e.render!, store: e.store!, lr: e.lr!.levels[0], seed: this.cfg.seed };
  }

  /** The last stage's blocks under an output rectangle, made by the workers. */
  private remoteRect(e: Entry, x: number, y: number, w: number, h: number, priority: number, signal?: AbortSignal) {
    const R = e.render!, k = R.halveOutput ? 2 : 1;   // 2× and 8× are the native output halved
    const blocks = R.last.blocksIn(k * x, k * y, k * w, k * h);
    return this.remote!.ensure(this.remoteOf(e), R.stages.length - 1, blocks, priority, this.remote!.o.viewerBlocks, signal);
  }

  /** Blocks of the last stage made, here or (--queue) by the workers. */
  private ensureBlocks(e: Entry, blocks: [number, number][], priority: { local: number; queue: number }, signal?: AbortSignal) {
    if (this.remote) return this.remote.ensure(this.remoteOf(e), e.render!.stages.length - 1, blocks, priority.queue, undefined, signal);
    return e.render!.last.ensure(blocks, { priority: priority.local, signal });
  }

  /** Whether a tile is final on disk, without making it. */
  async tileIsFinal(id: string, L: number, c: number, r: number) {
    return this.stored(await this.ready(id), L, c, r);
  }
  private stored(e: Entry, L: number, c: number, r: number) {
    const path = this.tilePath(e, L, c, r);
    return this.hot.has(path) || existsSync(path);
  }

  /**
   * Preview of a tile, never stored, never final: the base super-resolver's pixels where the model has
   * one and runs here (what the viewer shows until the tile is final; resized to the level when the
   * level is not the base's own 4×), else the LR Lanczos3-resized to the level. `lanczos`: the Lanczos
   * one whatever the model (the compare view). `kind` says which it is.
   */
  async preview(id: string, L: number, c: number, r: number, opt: { lanczos?: boolean; signal?: AbortSignal } = {}): Promise<TileResult & { kind: 'base' | 'lanczos' | 'source' }> {
    const e = await this.ready(id);
    if (!validTile(e.geometry, L, c, r)) throw new NotFound(`tile ${L}/${c}_${r} is outside the pyramid`);
    const rect = tileRect(e.geometry, L, c, r);
    const src = e.sources!.get(L);
    const base = opt.lanczos ? undefined : e.render?.base;
    let img: RGBImage, kind: 'base' | 'lanczos' | 'source';
    if (src) { img = { width: rect.w, height: rect.h, data: src.regionSync(rect.x, rect.y, rect.w, rect.h) }; kind = 'source'; }
    else if (base) {
      const ls = levelSize(e.geometry, L);
      img = await this.resampled(rect, ls.width / base.width, ls.height / base.height, base.width, base.height,
        (x, y, w, h) => base.pixels(x, y, w, h, { priority: VIEW_PRIORITY, signal: opt.signal }));
      kind = 'base';
    } else {
      const lr = e.lr!.levels[0], ls = levelSize(e.geometry, L);
      img = await this.resampled(rect, ls.width / lr.width, ls.height / lr.height, lr.width, lr.height,
        async (x, y, w, h) => lr.regionSync(x, y, w, h));
      kind = 'lanczos';
    }
    return { ...this.result(await imageOp(() => encode(img, this.cfg.tileFormat, this.cfg.tileQuality))), kind };
  }

  /** A level's rectangle from an image `fx`×`fy` times smaller or larger (W×H px, read by `read`):
   *  the pixels themselves at 1×, else Lanczos3 over the rectangle plus 2 source pixels each side. */
  private async resampled(rect: { x: number; y: number; w: number; h: number }, fx: number, fy: number, W: number, H: number,
    read: (x: number, y: number, w: number, h: number) => Promise<Uint8Array>): Promise<RGBImage> {
    if (fx === 1 && fy === 1) return { width: rect.w, height: rect.h, data: await read(rect.x, rect.y, rect.w, rect.h) };
    const sx0 = Math.max(0, Math.floor(rect.x / fx) - 2), sy0 = Math.max(0, Math.floor(rect.y / fy) - 2);
    const sx1 = Math.min(W, Math.ceil((rect.x + rect.w) / fx) + 2), sy1 = Math.min(H, Math.ceil((rect.y + rect.h) / fy) + 2);
    const rw = Math.round((sx1 - sx0) * fx), rh = Math.round((sy1 - sy0) * fy);
    const px = await read(sx0, sy0, sx1 - sx0, sy1 - sy0);
    const { data } = await imageOp(() => sharp(Buffer.from(px.buffer, px.byteOffset, px.length), { raw: { width: sx1 - sx0, height: sy1 - sy0, channels: 3 } })
      .resize(rw, rh, { kernel: 'lanczos3', fit: 'fill' })
      .extract({ left: Math.min(Math.round(rect.x - sx0 * fx), rw - rect.w), top: Math.min(Math.round(rect.y - sy0 * fy), rh - rect.h), width: rect.w, height: rect.h })
      .raw().toBuffer({ resolveWithObject: true }));
    return { width: rect.w, height: rect.h, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  }

  private result(bytes: Buffer): TileResult {
    return { bytes, etag: `"${createHash('sha256').update(bytes).digest('base64url').slice(0, 27)}"` };
  }

  /** Final tiles are immutable: keep the hot ones (bytes and ETag) in memory, bounded in bytes. */
  private hot = new LRUCache<string, TileResult>({ maxSize: 64 << 20, sizeCalculation: t => t.bytes.length + 64 });
  private finalTile(path: string): TileResult | undefined {
    const hit = this.hot.get(path);
    if (hit) { this.budget.touch(path); return hit; }
    let bytes;
    try { bytes = readFileSync(path); } catch { return undefined; }   // not made yet, or evicted
    this.budget.touch(path);
    this.budget.onEvict(path, () => this.hot.delete(path));
    const t = this.result(bytes);
    this.hot.set(path, t);
    return t;
  }

  /** Make every tile of the pyramid that is not stored yet. */
  async renderAll(id: string, onTile?: (done: number, total: number) => void, opt: { priority?: number; signal?: AbortSignal } = {}) {
    const e = await this.ready(id);
    // with workers: every block first, all regions on the queue at once (the window bounds it)
    if (this.remote) await this.remote.ensureAll(this.remoteOf(e), PRIORITY.render);
    const tiles = [...allTiles(e.geometry)];
    let done = 0;
    for (const { L, c, r } of tiles) {
      await this.tile(id, L, c, r, opt);
      onTile?.(++done, tiles.length);
    }
    return { dzi: join(e.pyramidDir, `${id}.dzi`), dir: e.pyramidDir };
  }

  /**
   * Every file of the pyramid, each made as it is reached, for a streamed tar download: the
   * first bytes leave at once and the download shows its progress, however large the image; a
   * client that goes away (`signal`) stops the generation.
   */
  async *pyramidFiles(id: string, opt: { signal?: AbortSignal; priority?: number } = {}): AsyncGenerator<{ name: string; data?: Buffer }> {
    const e = await this.ready(id);
    yield { name: `${id}.dzi`, data: Buffer.from(dziXml(e.geometry, this.cfg.tileFormat)) };
    yield { name: `${id}_files` };
    for (let L = 0; L <= maxLevel(e.geometry.width, e.geometry.height); L++) yield { name: `${id}_files/${L}` };
    for (const { L, c, r } of allTiles(e.geometry))
      yield { name: `${id}_files/${L}/${c}_${r}.${this.cfg.tileFormat}`, data: (await this.tile(id, L, c, r, opt)).bytes };
  }

  /** The whole output image (for `infdit render --full`). */
  async full(id: string, opt: { priority?: number } = {}): Promise<RGBImage> {
    const e = await this.ready(id);
    return e.render!.region(0, 0, e.geometry.width, e.geometry.height, opt);
  }

  // ------------------------------------------------------------- background fill

  private scheduleFill(id: string) {
    if (!this.cfg.backgroundFill) return;
    if (!this.fillQueue.includes(id)) this.fillQueue.push(id);
    this.kickFill();
  }

  private fillRunning = false;
  /** Stops the running fill (its image was deleted). */
  private fillAbort?: AbortController;
  private kickFill() {
    if (!this.cfg.backgroundFill || this.fillRunning || !this.fillQueue.length) return;
    this.fillRunning = true;
    const id = this.fillQueue[0], abort = this.fillAbort = new AbortController();
    (async () => {
      try {
        const e = await this.ready(id);
        const s = e.render!.last;
        // Low priority: any viewer tile overtakes it inside the engine. Band by band of block rows:
        // the engine's closure of a block is its cone, so the fill names every block, and a band
        // keeps one request's plan (and the live state along its wavefront) a few rows high.
        for (let r0 = 0; r0 < s.R; r0 += FILL_ROWS) {
          const band: [number, number][] = [];
          for (let r = r0; r < Math.min(s.R, r0 + FILL_ROWS); r++) for (let c = 0; c < s.C; c++) band.push([r, c]);
          await this.ensureBlocks(e, band, { local: 0, queue: PRIORITY.fill }, abort.signal);
        }
        this.fillQueue.shift();
      } catch (err) {
        // close() rejects the model's pending work: that ends the fill, it is not a failure to report
        if (!(err instanceof AbortError) && !this.closed) { console.error(`background fill of ${id} failed: ${(err as Error).message}`); this.fillQueue.shift(); }
      } finally {
        this.fillRunning = false;
        if (this.fillQueue.length) setImmediate(() => this.kickFill());
      }
    })();
  }

  private closed = false;
  /** Stop the model's thread (the service answers nothing after this). */
  async close() {
    this.closed = true;
    this.fillQueue.length = 0;
    this.views.close();
    await this.remote?.close();
    await this.model.close();
    for (const e of this.entries.values()) for (const l of e.lr?.levels ?? []) l.close();
  }

  /** Queue every known image that is not finished for background fill. */
  fillAll() { for (const id of this.entries.keys()) this.scheduleFill(id); }
}

function mergeCounts(a: Record<number, number>, b: Record<number, number>) {
  for (const [k, v] of Object.entries(b)) a[Number(k)] = (a[Number(k)] ?? 0) + v;
  return a;
}

/** Bytes under a folder (what a deletion frees, what an upload takes). */
function duBytes(dir: string): number {
  let n = 0;
  try {
    for (const e of readdirSync(dir, { withFileTypes: true })) n += e.isDirectory() ? duBytes(join(dir, e.name)) : statSync(join(dir, e.name)).size;
  } catch { /* gone meanwhile */ }
  return n;
}

/** An upload's own files: the file as received, meta.json and the decoded photo with its halvings. */
function uploadBytesOf(dir: string) {
  let n = duBytes(join(dir, 'lr'));
  for (const f of ['source', 'meta.json']) try { n += statSync(join(dir, f)).size; } catch { /* not there */ }
  return n;
}

async function hashFile(path: string) {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** What a header says, before any pixel is decoded: an accepted raster format (as libvips reads
 *  it, not by its first bytes), dimensions within the limit, one frame. */
async function checkHeader(input: string | Buffer, maxPixels: number) {
  const vector = (f: string) => new ImageError(`${f.toUpperCase()} and other vector or document formats are not accepted (they can reference other files, and have no pixels of their own); upload a raster image: ${ACCEPTED_LIST}`);
  let meta;
  try { meta = await sharp(input, { limitInputPixels: false }).metadata(); } catch (e) {
    const loader = /\b(svg|pdf)load\b/.exec((e as Error).message);   // libvips knew what it was, and could not size it
    throw loader ? vector(loader[1]) : new ImageError(`not a readable image (${(e as Error).message}); accepted: ${ACCEPTED_LIST}`);
  }
  const format = String(meta.format);
  if (!ACCEPTED[format])
    throw ['svg', 'pdf'].includes(format) ? vector(format) : new ImageError(`images in the "${format}" format are not accepted; accepted: ${ACCEPTED_LIST}`);
  if (!meta.width || !meta.height) throw new ImageError(`image has no dimensions; accepted: ${ACCEPTED_LIST}`);
  if ((meta.pages ?? 1) > 1) throw new ImageError(`animated/multi-page images are not accepted (${meta.pages} pages); upload a single frame`);
  if (meta.width * meta.height > maxPixels)
    throw new ImageError(`image is ${meta.width}×${meta.height} = ${meta.width * meta.height} pixels, over the limit of ${maxPixels} pixels (upload-max-pixels)`, 413);
  return { format, width: meta.width, height: meta.height };
}

function checkDataDir(dir: string) {
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
    const probe = join(dir, `.probe-${process.pid}`);
    writeFileSync(probe, Buffer.alloc(64 * 1024));
    rmSync(probe);
    if (!statSync(dir).isDirectory()) throw new Error('not a directory');
  } catch (e) {
    throw new Error(`data directory ${dir} is not writable (${(e as Error).message}); choose another with --data-dir or INFDIT_DATA_DIR, or free space on its disk`);
  }
}
