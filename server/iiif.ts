/**
 * IIIF Image API 3.0, compliance level 0: info.json and exactly the tile requests it implies,
 * served from the same tile store as DZI (with overlap 0 they are the same bytes; with overlap
 * the DZI tile is cropped). Anything beyond level 0 gets the status the spec gives.
 * https://iiif.io/api/image/3.0/
 */
import type { Express } from 'express';
import { HttpError, baseUrl, clientGone, sendImmutable } from './respond.js';
import sharp from 'sharp';
import type { ImageService } from '../lib/tiles/service.js';
import { maxLevel, levelSize, tileRect, tileCount } from '../lib/tiles/pyramid.js';
import { encode } from '../lib/tiles/image.js';

const CONTEXT = 'http://iiif.io/api/image/3/context.json';
const EXT: Record<string, string> = { jpeg: 'jpg', png: 'png', webp: 'webp' };

export function iiifRoutes(app: Express, service: ImageService) {
  const cfg = service.cfg;
  const idOf = (raw: unknown) => {
    const id = String(raw);
    if (!service.has(id)) throw new HttpError(404, `no image with id "${id.slice(0, 40)}"`);
    return id;
  };

  app.get('/iiif/:id', (req, res) => res.redirect(303, `${baseUrl(req)}/iiif/${idOf(req.params.id)}/info.json`));

  app.get('/iiif/:id/info.json', (req, res) => {
    const id = idOf(req.params.id);
    const g = service.geometry(id);
    const M = maxLevel(g.width, g.height);
    const scaleFactors = Array.from({ length: M + 1 }, (_, k) => 2 ** k);
    const sizes = [];
    for (let L = 0; L <= M; L++) {
      const s = levelSize(g, L);
      if (s.width <= g.tileSize && s.height <= g.tileSize) sizes.push(s);
    }
    // res.end, not res.send: express would rewrite the spec's recommended media type
    res.setHeader('Content-Type', `application/ld+json;profile="${CONTEXT}"`);
    res.setHeader('Cache-Control', 'public, max-age=60');
    res.end(JSON.stringify({
      '@context': CONTEXT, id: `${baseUrl(req)}/iiif/${id}`, type: 'ImageService3', protocol: 'http://iiif.io/api/image',
      profile: 'level0', width: g.width, height: g.height,
      tiles: [{ width: g.tileSize, height: g.tileSize, scaleFactors }], sizes,
      ...(cfg.tileFormat !== 'jpeg' ? { extraFormats: [EXT[cfg.tileFormat]], preferredFormats: [EXT[cfg.tileFormat]] } : {}),
    }));
  });

  app.get('/iiif/:id/:region/:size/:rotation/:file', async (req, res) => {
    const id = idOf(req.params.id);
    const g = service.geometry(id);
    const M = maxLevel(g.width, g.height);
    const region = String(req.params.region), size = String(req.params.size), rotation = String(req.params.rotation);
    const fm = /^(default|color|gray|bitonal)\.([a-z0-9]+)$/.exec(String(req.params.file));
    if (!fm) throw new HttpError(400, `bad quality.format "${String(req.params.file).slice(0, 40)}"; level 0 serves default.${EXT[cfg.tileFormat]}`);
    if (fm[1] !== 'default') throw new HttpError(501, `quality "${fm[1]}" is not supported at level 0; use "default"`);
    if (fm[2] !== EXT[cfg.tileFormat]) throw new HttpError(fm[2] in { jpg: 1, png: 1, webp: 1, gif: 1, tif: 1, jp2: 1, pdf: 1 } ? 501 : 400, `format "${fm[2]}" is not served; use ${EXT[cfg.tileFormat]}`);
    if (!/^!?\d+(\.\d+)?$/.test(rotation)) throw new HttpError(400, `bad rotation "${rotation.slice(0, 20)}"`);
    if (rotation !== '0') throw new HttpError(501, `rotation "${rotation}" is not supported at level 0; use 0`);

    // Which level and tile does this region/size name?
    let x: number, y: number, w: number, h: number;
    if (region === 'full') { x = 0; y = 0; w = g.width; h = g.height; }
    else {
      const m = /^(\d{1,9}),(\d{1,9}),(\d{1,9}),(\d{1,9})$/.exec(region);
      if (!m) {
        if (/^(square|pct:)/.test(region)) throw new HttpError(501, `region "${region.slice(0, 40)}" is not supported at level 0`);
        throw new HttpError(400, `bad region "${region.slice(0, 40)}"; level 0 serves full or x,y,w,h of a tile`);
      }
      [x, y, w, h] = m.slice(1).map(Number);
      if (w === 0 || h === 0 || x >= g.width || y >= g.height) throw new HttpError(400, `region ${region} is empty or outside the ${g.width}×${g.height} image`);
      w = Math.min(w, g.width - x); h = Math.min(h, g.height - y);
    }
    const sm = /^(\^?)(max|(\d{1,9})?,(\d{1,9})?)$/.exec(size);
    if (!sm) throw new HttpError(400, `bad size "${size.slice(0, 40)}"`);
    if (sm[1]) throw new HttpError(501, 'upscaling (^) is not supported at level 0');
    // scale factor s = 2^k: the region must be one tile of level M-k and the size its size
    let found = -1;
    for (let k = 0; k <= M; k++) {
      const s = 2 ** k, sw = Math.ceil(w / s), sh = Math.ceil(h / s);
      const sizeOk = sm[2] === 'max' ? k === 0   // max never downscales: only full-resolution tiles
        : (sm[3] === undefined || Number(sm[3]) === sw) && (sm[4] === undefined || Number(sm[4]) === sh) && (sm[3] !== undefined || sm[4] !== undefined);
      if (!sizeOk) continue;
      const lvl = M - k, ls = levelSize(g, lvl);
      if (region === 'full') { if (ls.width <= g.tileSize && ls.height <= g.tileSize) { found = lvl; break; } continue; }
      const span = g.tileSize * s;
      if (x % span === 0 && y % span === 0 && (w === Math.min(span, g.width - x)) && (h === Math.min(span, g.height - y))) { found = lvl; break; }
    }
    if (found < 0) throw new HttpError(501, `region ${region} at size ${size} is not one of this level-0 service's tiles (see info.json tiles and sizes)`);
    const L = found, s = 2 ** (M - L);
    const c = region === 'full' ? 0 : x / (g.tileSize * s), r = region === 'full' ? 0 : y / (g.tileSize * s);
    if (c >= tileCount(g, L).cols || r >= tileCount(g, L).rows) throw new HttpError(400, `region ${region} is outside the image`);
    const t = await service.tile(id, L, c, r, { signal: clientGone(res), priority: 10 });
    if (g.overlap === 0) return sendImmutable(req, res, `image/${cfg.tileFormat}`, t);
    const rect = tileRect(g, L, c, r);
    const want = { left: c * g.tileSize - rect.x, top: r * g.tileSize - rect.y, width: Math.ceil(w / s), height: Math.ceil(h / s) };
    // decoded, cut and encoded as every tile is (lib/tiles/image.ts: a PNG's quality option would make it a palette)
    const { data, info } = await sharp(t.bytes).extract(want).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    const bytes = await encode({ width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) }, cfg.tileFormat, cfg.tileQuality);
    sendImmutable(req, res, `image/${cfg.tileFormat}`, { bytes, etag: `"${t.etag.slice(1, -1)}-c"` });
  });
}
