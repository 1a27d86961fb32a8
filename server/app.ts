/**
 * The HTTP face of infdit. `createApp(service)` builds the express app (tests drive it with
 * supertest, no port); `infdit serve` listens. Routes validate their input at the edge and
 * answer every bad request with a JSON error; nothing below knows about HTTP.
 */
import express, { type Request, type Response, type NextFunction } from 'express';
import multer from 'multer';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { ImageService, NotFound, UploadBudgetError } from '../lib/tiles/service.js';
import { ImageError } from '../lib/tiles/image.js';
import { AbortError } from '../lib/engine/engine.js';
import { DiskFullError } from '../lib/engine/atomic.js';
import { FORMATS } from '../lib/tiles/pyramid.js';
import { writeTar } from '../lib/tiles/tar.js';
import { z } from 'zod';
import { iiifRoutes } from './iiif.js';
import { accessControl, uploadMode } from './access.js';
import type { View } from '../lib/tiles/views.js';
import { HttpError, baseUrl, clientGone, sendImmutable } from './respond.js';

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..');
/** A viewer names itself (a random id per page) so that its next view replaces this one. */
const VIEWER_ID = z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, 'must be 8–64 letters, digits, - or _');


export function createApp(service: ImageService) {
  const cfg = service.cfg;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);   // tiles carry their own strong ETags; JSON is never cached

  const access = accessControl(cfg);
  app.use(access.cors, access.sameOrigin);

  // ---------------------------------------------------------------- viewer
  app.use('/', express.static(join(ROOT, 'viewer'), { index: 'index.html' }));
  // browsers and crawlers ask for /favicon.ico whatever the page's <link rel="icon"> says
  app.get('/favicon.ico', (_req, res) => res.redirect(301, '/favicon.svg'));
  app.use('/vendor/openseadragon', express.static(join(ROOT, 'node_modules/openseadragon/build/openseadragon')));

  // ---------------------------------------------------------------- API
  // spooled to disk, not memory: a 64 Mpx PNG is over 100 MB and several may arrive at once
  const upload = multer({ dest: service.spoolDir, limits: { fileSize: cfg.uploadMaxBytes, files: 1, fields: 10 } });

  const urls = (req: Request, id: string) => {
    const base = baseUrl(req);
    return { dzi: `${base}/images/${id}.dzi`, iiif: `${base}/iiif/${id}/info.json`, status: `${base}/api/images/${id}`,
      events: `${base}/api/images/${id}/events`, viewer: `${base}/#${id}`, download: `${base}/api/images/${id}/pyramid.tar` };
  };

  // Operators' view of memory: the K/V and image caches are bounded by config; this shows the rest.
  // The HTTP thread's event-loop delay since the last health check: the model runs in its own
  // thread, so this stays near zero while the cores generate (bench/responsive.ts watches it).
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  app.get('/api/health', (_req, res) => {
    const m = process.memoryUsage(), ms = (ns: number) => Math.round(ns / 1e4) / 100;
    const eventLoopDelayMs = { p50: ms(loop.percentile(50)), p99: ms(loop.percentile(99)), max: ms(loop.max) };
    loop.reset();
    res.set('Cache-Control', 'no-store').json({ ok: true, images: service.list().length, eventLoopDelayMs,
      memoryMiB: Object.fromEntries(Object.entries(m).map(([k, v]) => [k, Math.round(v / 2 ** 20)])) });
  });

  app.get('/api/images', (req, res) => {
    res.set('Cache-Control', 'no-store').json({ uploads: uploadMode(cfg), images: service.list().map(m => ({ ...m, width: m.lrWidth * cfg.scale, height: m.lrHeight * cfg.scale,
      scale: cfg.scale, tileSize: cfg.tileSize, format: cfg.tileFormat, urls: urls(req, m.id) })) });
  });

  app.post('/api/images', access.writer('uploads'), access.uploadRate, (req, _res, next) => {
    // refused before a byte is spooled when the request alone would not fit the upload budget
    try { service.checkUploadRoom(Number(req.get('content-length') ?? 0) || 0, size => `this upload is ${size}`); } catch (e) { return next(e); }
    next();
  }, (req, res, next) => {
    upload.single('image')(req, res, (err: unknown) => {
      if (err) {
        const e = err as { code?: string; message: string };
        if (e.code === 'LIMIT_FILE_SIZE') return next(new HttpError(413, `file is over the upload limit of ${cfg.uploadMaxBytes} bytes (upload-max-bytes)`));
        return next(new HttpError(400, `bad upload: ${e.message}; send multipart/form-data with the file in field "image"`));
      }
      next();
    });
  }, async (req, res) => {
    const file = (req as Request & { file?: Express.Multer.File }).file;
    if (!file) throw new HttpError(400, 'no file: send multipart/form-data with the image in field "image"');
    let meta;
    try { meta = await service.add({ path: file.path }, file.originalname || 'upload'); } finally { rmSync(file.path, { force: true }); }
    res.status(201).json({ ...meta, width: meta.lrWidth * cfg.scale, height: meta.lrHeight * cfg.scale, urls: urls(req, meta.id) });
  });

  app.delete('/api/images/:id', access.writer('deletes'), async (req, res) => {
    const id = String(req.params.id);
    if (!service.has(id)) throw new HttpError(404, `no image with id "${id.slice(0, 40)}"`);
    res.json({ ...(await service.remove(id)), uploads: service.uploads() });
  });

  app.get('/api/images/:id', async (req, res) => {
    const id = String(req.params.id);
    res.set('Cache-Control', 'no-store').json({ ...(await service.status(id)), urls: urls(req, id) });
  });

  app.get('/api/images/:id/blocks', async (req, res) => {
    res.set('Cache-Control', 'no-store').json(await service.blocks(String(req.params.id)));
  });

  app.get('/api/images/:id/events', async (req, res) => {
    const id = String(req.params.id);
    const st = await service.status(id);
    res.set({ 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', Connection: 'keep-alive' });
    res.flushHeaders();
    const send = (ev: string, data: unknown) => res.write(`event: ${ev}\ndata: ${JSON.stringify(data)}\n\n`);
    send('status', { done: st.blocks.done, total: st.blocks.total });
    const ev = service.events(id);
    const onBlock = (d: unknown) => send('block', d);
    const onTile = (d: unknown) => send('tile', d);
    ev.on('block', onBlock); ev.on('tile', onTile);
    const ping = setInterval(() => res.write(': ping\n\n'), 15000);
    req.on('close', () => { clearInterval(ping); ev.off('block', onBlock); ev.off('tile', onTile); });
  });

  // A viewer's view: its tiles are made first, nearest the centre first; what left it is
  // withdrawn (lib/tiles/views.ts says why this is a statement and not tile requests).
  const lookAway = z.object({ viewer: VIEWER_ID }).strict();
  const lookAt = z.object({ viewer: VIEWER_ID, level: z.number().int().min(0).max(64), x: z.number().finite(), y: z.number().finite(),
    width: z.number().finite().positive(), height: z.number().finite().positive() }).strict();
  app.post('/api/images/:id/view', express.json({ limit: '2kb', type: () => true }), async (req, res) => {
    const id = String(req.params.id);
    if (!service.has(id)) throw new HttpError(404, `no image with id "${id.slice(0, 40)}"`);
    // {viewer} alone looks away; anything more must be a whole view
    const whole = !!req.body && typeof req.body === 'object' && Object.keys(req.body).length > 1;
    const b = whole ? lookAt.safeParse(req.body) : lookAway.safeParse(req.body);
    if (!b.success) throw new HttpError(400, `bad view: ${b.error.issues[0].path.join('.') || 'body'}: ${b.error.issues[0].message}; send JSON {viewer, level, x, y, width, height} (the rectangle in the full image's pixels), or {viewer} to look away`);
    const { viewer, ...view } = b.data as z.infer<typeof lookAway> & Partial<View>;
    try {
      res.set('Cache-Control', 'no-store').json(await service.view(id, viewer, whole ? view as View : null));
    } catch (e) { if (e instanceof RangeError) throw new HttpError(400, e.message); throw e; }
  });

  // Streamed: tar entries leave as their tiles are made, so the download starts at once and shows
  // its progress; a client that goes away stops the generation.
  app.get('/api/images/:id/pyramid.tar', async (req, res) => {
    const id = String(req.params.id);
    if (!service.has(id)) throw new HttpError(404, `no image with id "${id.slice(0, 40)}"`);
    const files = service.pyramidFiles(id, { signal: clientGone(res), priority: 5 });
    res.set({ 'Content-Type': 'application/x-tar', 'Content-Disposition': `attachment; filename="${id}.tar"`, 'Cache-Control': 'no-store' });
    res.flushHeaders();
    try { await writeTar(res, files); res.end(); }
    catch (e) { res.destroy(e as Error); }   // cut short: the client must not take a truncated tar for a whole one
  });

  // ---------------------------------------------------------------- IIIF Image API 3.0, level 0
  iiifRoutes(app, service);

  // ---------------------------------------------------------------- DZI
  app.get('/images/:file', async (req, res) => {
    const m = /^([0-9a-f]{16})\.dzi$/.exec(String(req.params.file));
    if (!m || !service.has(m[1])) throw new HttpError(404, `no such DZI: ${String(req.params.file).slice(0, 60)}`);
    const xml = await service.dzi(m[1]);
    res.set({ 'Content-Type': 'application/xml', 'Cache-Control': 'public, max-age=60' }).send(xml);
  });

  app.get('/images/:dir/:level/:tile', async (req, res) => {
    const dm = /^([0-9a-f]{16})_files$/.exec(String(req.params.dir));
    if (!dm || !service.has(dm[1])) throw new HttpError(404, `no such image: ${String(req.params.dir).slice(0, 60)}`);
    const id = dm[1];
    const tm = /^(\d{1,6})_(\d{1,6})\.([a-z]{2,5})$/.exec(String(req.params.tile));
    const level = /^\d{1,3}$/.test(String(req.params.level)) ? Number(req.params.level) : NaN;
    if (!tm || Number.isNaN(level)) throw new HttpError(404, `no such tile: ${String(req.params.level).slice(0, 10)}/${String(req.params.tile).slice(0, 40)}`);
    const fmt = tm[3] === 'jpg' ? 'jpeg' : tm[3];
    if (!(FORMATS as string[]).includes(fmt)) throw new HttpError(400, `unknown tile format "${tm[3]}"; accepted: ${FORMATS.join(', ')}`);
    if (fmt !== cfg.tileFormat) throw new HttpError(404, `this server's tiles are ${cfg.tileFormat}, not ${fmt}`);
    await sendTile(req, res, id, level, Number(tm[1]), Number(tm[2]));
  });

  async function sendTile(req: Request, res: Response, id: string, L: number, c: number, r: number) {
    const type = `image/${cfg.tileFormat}`;
    const sendPreview = async (extra: Record<string, string> = {}) => {
      const p = await service.preview(id, L, c, r, { lanczos: req.query.preview === 'lanczos', signal: clientGone(res) });
      res.set({ 'Content-Type': type, 'Cache-Control': 'no-store', 'X-Infdit-Tile': 'preview', 'X-Infdit-Preview': p.kind, ...extra }).send(p.bytes);
    };
    // ?preview: the preview (the base, or Lanczos for a model without one) until the tile is final;
    // ?preview=lanczos: the Lanczos upscale always (the compare view)
    if (req.query.preview !== undefined && (req.query.preview === 'lanczos' || !(await service.tileIsFinal(id, L, c, r)))) return sendPreview();
    const work = service.tile(id, L, c, r, { signal: clientGone(res), priority: 10 });
    work.catch(() => {});
    const timer = cfg.tileWaitMs > 0 ? new Promise<'timeout'>(resolve => setTimeout(() => resolve('timeout'), cfg.tileWaitMs).unref()) : null;
    const t = await (timer ? Promise.race([work, timer]) : work);
    // Not ready within the documented bound: answer the preview (never cached), so no viewer
    // marks the tile failed; generation goes on for the next ask.
    if (t === 'timeout') return sendPreview({ 'Retry-After': '5' });
    sendImmutable(req, res, type, t, { 'X-Infdit-Tile': 'final' });
  }

  // ---------------------------------------------------------------- errors
  app.use((req, _res, next) => next(new HttpError(404, `no route ${req.method} ${req.path.slice(0, 100)}`)));
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    let status = 500, message = 'internal error';
    if (err instanceof HttpError) { status = err.status; message = err.message; }
    else if (err instanceof ImageError) { status = err.status; message = err.message; }
    else if (err instanceof NotFound) { status = 404; message = err.message; }
    else if (err instanceof AbortError) { if (!res.headersSent) res.status(499).end(); return; }
    else if (err instanceof DiskFullError || err instanceof UploadBudgetError) { status = 507; message = err.message; }
    else if ((err as { type?: string }).type === 'entity.too.large') { status = 413; message = 'request too large'; }
    else if ((err as { status?: number }).status && (err as { status: number }).status < 500) { status = (err as { status: number }).status; message = (err as Error).message; }
    else console.error(`error on ${req.method} ${req.path}:`, err);
    if (res.headersSent) { res.end(); return; }
    res.status(status).json({ error: message, status });
  });
  return app;
}
