/** `serve --http2`: the same app over HTTP/2 (and HTTP/1.1 by ALPN) with a self-signed certificate. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import https from 'node:https';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import request from 'supertest';
import { createApp } from '../server/app.js';
import { listenHttp2, selfSigned } from '../server/http2.js';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { FIXTURE } from './helpers.js';

function h2get(client: http2.ClientHttp2Session, path: string): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const s = client.request({ ':path': path });
    const chunks: Buffer[] = [];
    let headers: http2.IncomingHttpHeaders = {};
    s.on('response', h => { headers = h; });
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => resolve({ status: Number(headers[':status']), headers, body: Buffer.concat(chunks) }));
    s.on('error', reject);
  });
}

test('tiles over HTTP/2 equal the HTTP/1.1 tiles; many streams on one connection', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-h2-'));
  const service = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir, tileSize: 64, backgroundFill: false, demo: false, threads: 1 }));
  const app = createApp(service);
  const png = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#3a7' } }).png().toBuffer();
  const { id } = await service.add(png, 'h2.png');
  const { server, inner, port } = await listenHttp2(app, { port: 0, host: '127.0.0.1', ...selfSigned(join(dataDir, 'tls')) });
  const client = http2.connect(`https://127.0.0.1:${port}`, { rejectUnauthorized: false });
  try {
    const list = await h2get(client, '/api/images');
    assert.equal(list.status, 200);
    assert.match(JSON.parse(list.body.toString()).images[0].urls.dzi, /^https:\/\//);
    const paths = [];
    for (let c = 0; c < 3; c++) for (let r = 0; r < 2; r++) paths.push(`/images/${id}_files/8/${c}_${r}.jpeg`);
    const got = await Promise.all(paths.map(p => h2get(client, p)));   // all in flight at once
    for (let i = 0; i < paths.length; i++) {
      assert.equal(got[i].status, 200);
      assert.equal(got[i].headers['cache-control'], 'public, max-age=31536000, immutable');
      const h1: request.Response = await request(app).get(paths[i]).expect(200);
      assert.ok(got[i].body.equals(Buffer.from(h1.body)), `${paths[i]} differs between HTTP/2 and HTTP/1.1`);
    }
    assert.equal((await h2get(client, '/images/0123456789abcdef.dzi')).status, 404);
    // HTTP/1.1 clients reach the same server over TLS
    const status = await new Promise<number>((resolve, reject) => https.get({ host: '127.0.0.1', port, path: `/images/${id}.dzi`, rejectUnauthorized: false }, res => { res.resume(); resolve(res.statusCode!); }).on('error', reject));
    assert.equal(status, 200);
  } finally { client.close(); server.close(); inner.close(); }
});
