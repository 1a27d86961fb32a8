/**
 * Who may do what, decided in one place (DESIGN.md §7). Reading — the viewer, tiles, .dzi,
 * info.json, status, events — is public, and open to pages of other origins (CORS) for GETs.
 * Writing — uploads and deletes — is refused from other origins (a page elsewhere must not
 * use a visitor's browser to fill this disk), needs the upload token when one is set, is off
 * altogether with --no-uploads, and uploads are rate-limited per client. Every refusal says
 * what to do instead.
 */
import type { Request, Response, NextFunction, RequestHandler } from 'express';
import { createHash, timingSafeEqual } from 'node:crypto';
import { rateLimit } from 'express-rate-limit';
import type { Config } from '../config/index.js';
import { HttpError } from './respond.js';

const READS = new Set(['GET', 'HEAD']);
/** The rate limit's window. */
const UPLOAD_WINDOW_MS = 10 * 60 * 1000;

/** How the server takes uploads, for the viewer: 'open', 'token' (ask for it) or 'off'. */
export const uploadMode = (cfg: Config) => (!cfg.uploads ? 'off' : cfg.uploadToken ? 'token' : 'open');

export function accessControl(cfg: Config) {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const token = cfg.uploadToken ? digest(cfg.uploadToken) : null;

  /** CORS for reading only: a preflight for anything but a GET gets no permission. */
  const cors: RequestHandler = (req, res, next) => {
    if (READS.has(req.method) || req.method === 'OPTIONS') {
      res.set('Access-Control-Allow-Origin', '*');
      res.set('Access-Control-Expose-Headers', 'ETag, X-Infdit-Tile, X-Infdit-Preview');
    }
    if (req.method === 'OPTIONS') { res.set('Access-Control-Allow-Methods', 'GET, HEAD').status(204).end(); return; }
    next();
  };

  /**
   * A request that changes something must come from this server's own pages or from no page at
   * all (curl, a script): a form or fetch on another origin is refused even where the browser
   * sends it without asking first (a multipart POST needs no preflight).
   */
  const sameOrigin: RequestHandler = (req, _res, next) => {
    if (READS.has(req.method)) return next();
    const origin = req.get('origin'), site = req.get('sec-fetch-site');
    let foreign = site === 'cross-site' || site === 'same-site';
    if (origin !== undefined) {
      try { foreign ||= new URL(origin).host !== req.get('host'); } catch { foreign = true; }   // "null": a sandboxed or file: page
    }
    if (foreign) return next(new HttpError(403, `requests that change something are not taken from other origins (${String(origin ?? site).slice(0, 100)}); use this server's own page, or send the request directly (curl, a script) with the upload token`));
    next();
  };

  /** Uploading or deleting: allowed at all (--no-uploads), and with the token where one is set. */
  const writer = (what: string): RequestHandler => (req, res, next) => {
    if (!cfg.uploads) return next(new HttpError(403, `this server is read-only (--no-uploads): it serves the images already in its data folder and takes no ${what}`));
    if (!token) return next();
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.get('authorization') ?? '');
    if (!m) { res.set('WWW-Authenticate', 'Bearer realm="infdit uploads"'); return next(new HttpError(401, `${what} need the upload token: send the header "Authorization: Bearer <token>" (the server's --upload-token or INFDIT_UPLOAD_TOKEN)`)); }
    if (!timingSafeEqual(digest(m[1]), token)) return next(new HttpError(403, `wrong upload token for ${what}: ask whoever runs this server for the one it was started with (--upload-token)`));
    next();
  };

  /** Uploads per client (IP address) per 10 minutes; 0: no limit. */
  const uploadRate: RequestHandler = cfg.uploadRateLimit > 0
    ? rateLimit({
      windowMs: UPLOAD_WINDOW_MS, limit: cfg.uploadRateLimit, standardHeaders: 'draft-8', legacyHeaders: false,
      handler: (_req: Request, res: Response, _next: NextFunction, o) => {
        res.status(429).json({ status: 429, error: `too many uploads from this address: at most ${o.limit} per ${UPLOAD_WINDOW_MS / 60000} minutes (upload-rate-limit); try again in ${res.get('Retry-After') ?? 'a few'} s` });
      },
    })
    : (_req, _res, next) => next();

  return { cors, sameOrigin, writer, uploadRate };
}
