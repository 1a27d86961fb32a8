/** On a network: uploads under a budget, refused when their pixels are missing or they are not a
 *  raster image, access control (token, read-only, other origins), deletion, the start-up sweep,
 *  and each command's own options. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, existsSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import sharp from 'sharp';
import request from 'supertest';
import { createApp } from '../server/app.js';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { FIXTURE, ROOT, wavePng } from './helpers.js';

const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));
const fixture = { model: FIXTURE + '.json', tileSize: 64, backgroundFill: false, demo: false, threads: 1 };
const open = (extra: Record<string, unknown> = {}) => ImageService.open(loadConfig({ ...fixture, dataDir: tmp('infdit-access-'), ...extra }));
const du = (d: string): number => readdirSync(d, { withFileTypes: true }).reduce((a, e) => a + (e.isDirectory() ? du(join(d, e.name)) : statSync(join(d, e.name)).size), 0);
/** A photo no other call makes: noise from a seed (so no two uploads dedupe). */
const noisePng = (seed: number, w = 96, h = 72) => {
  let s = seed * 2654435761 >>> 0;
  const px = Buffer.alloc(w * h * 3);
  for (let i = 0; i < px.length; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; px[i] = s >>> 24; }
  return sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
};

test('a flood of uploads stops at the upload budget: 507 before anything is written, the disk stays within it', async () => {
  const service = await open({ uploadBudgetMb: 0.5, uploadRateLimit: 0 });
  try {
    const app = createApp(service);
    const statuses: number[] = [];
    let refusal = '', sent = 0;
    for (let i = 0; i < 40; i++) {
      const img = await noisePng(i);
      sent += img.length;
      const r = await request(app).post('/api/images').attach('image', img, `n${i}.png`);
      statuses.push(r.status);
      if (r.status === 507) { refusal = r.body.error; if (statuses.filter(s => s === 507).length >= 3) break; }
    }
    assert.ok(statuses.includes(201) && statuses.includes(507), `statuses ${statuses}`);
    assert.deepEqual(statuses.slice(statuses.indexOf(507)), [507, 507, 507], 'once full, full');
    assert.match(refusal, /upload budget is full: .* MiB of 0\.5 MiB are free \(upload-budget-mb\); delete images \(DELETE \/api\/images\/<id>\) or raise --upload-budget-mb/);
    const images = join(service.cfg.dataDir, 'images');
    assert.ok(du(images) <= 0.5 * 2 ** 20, `${du(images)} bytes on disk`);
    assert.ok(readdirSync(images).every(d => existsSync(join(images, d, 'meta.json'))), 'a refused upload left a folder');
    assert.equal(service.uploads().usedBytes, du(images));
    console.log(`# flood: ${statuses.length} uploads, ${sent} bytes sent, ${du(images)} bytes on disk, statuses ${statuses.join(' ')}`);
    // a request larger than the room left is refused from its Content-Length, before it is spooled
    const big = Buffer.alloc(600 * 1024, 7);
    const r = await request(app).post('/api/images').attach('image', big, 'big.png').expect(507);
    assert.match(r.body.error, /this upload is 0\.6 MiB/);

    // deleting frees the space; the image and its tiles are gone
    const one = service.list()[0];
    await request(app).get(`/images/${one.id}_files/9/0_0.jpeg`).expect(200);
    const before = service.uploads().usedBytes;
    const del = await request(app).delete(`/api/images/${one.id}`).expect(200);
    assert.ok(del.body.freedBytes > 0);
    assert.equal(existsSync(join(images, one.id)), false);
    assert.ok(service.uploads().usedBytes < before);
    assert.equal(del.body.uploads.usedBytes, service.uploads().usedBytes);
    await request(app).get(`/api/images/${one.id}`).expect(404);
    await request(app).get(`/images/${one.id}_files/9/0_0.jpeg`).expect(404);
    await request(app).delete(`/api/images/${one.id}`).expect(404);
    await request(app).post('/api/images').attach('image', await noisePng(999), 'again.png').expect(201);
  } finally { await service.close(); }
});

test('a JPEG whose header claims 8000×8000 over data for 64×48 is refused; nothing is kept', async () => {
  const service = await open({ uploadMaxPixels: 100_000_000 });
  try {
    const app = createApp(service);
    const jpeg = Buffer.from(await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 120, g: 90, b: 60 } } }).jpeg({ quality: 75 }).toBuffer());
    const sof = jpeg.indexOf(Buffer.from([0xff, 0xc0]));
    jpeg.writeUInt16BE(8000, sof + 5); jpeg.writeUInt16BE(8000, sof + 7);
    assert.ok(jpeg.length < 2500);
    const r = await request(app).post('/api/images').attach('image', jpeg, 'liar.jpg').expect(400);
    assert.match(r.body.error, /could not be decoded .*(premature end|Corrupt)/i);
    assert.deepEqual(readdirSync(join(service.cfg.dataDir, 'images')), []);
    assert.equal(service.uploads().usedBytes, 0);
    // an honest JPEG still goes in
    await request(app).post('/api/images').attach('image', await sharp(await wavePng(64, 48)).jpeg().toBuffer(), 'ok.jpg').expect(201);
  } finally { await service.close(); }
});

test('SVG is refused by what libvips reads, whatever comes first (BOM, comment, XML declaration)', async () => {
  const service = await open();
  try {
    const app = createApp(service);
    const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64" fill="red"/></svg>';
    for (const [name, text] of [['bom.svg', '\ufeff' + svg], ['comment.svg', '<!-- a drawing -->\n' + svg], ['decl.svg', '<?xml version="1.0"?>' + svg], ['plain.png', svg]]) {
      const r = await request(app).post('/api/images').attach('image', Buffer.from(text, 'utf8'), name).expect(400);
      assert.match(r.body.error, /SVG and other vector or document formats are not accepted|not a readable image/, name);
    }
    const pdf = Buffer.from('%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF');
    assert.match((await request(app).post('/api/images').attach('image', pdf, 'x.pdf').expect(400)).body.error, /not accepted|not a readable image/);
    assert.deepEqual(service.list(), []);
  } finally { await service.close(); }
});

test('with --upload-token, uploads and deletes need it; reading stays public', async () => {
  const token = 'a-long-secret-token-0123456789';
  const service = await open({ uploadToken: token });
  try {
    const app = createApp(service);
    const img = await wavePng(40, 30);
    const none = await request(app).post('/api/images').attach('image', img, 'w.png').expect(401);
    assert.match(none.body.error, /Authorization: Bearer <token>/);
    assert.match(String(none.headers['www-authenticate']), /^Bearer/);
    assert.match((await request(app).post('/api/images').set('Authorization', 'Bearer wrong-token-wrong-token').attach('image', img, 'w.png').expect(403)).body.error, /wrong upload token/);
    const ok = await request(app).post('/api/images').set('Authorization', `Bearer ${token}`).attach('image', img, 'w.png').expect(201);
    const list = await request(app).get('/api/images').expect(200);
    assert.equal(list.body.uploads, 'token');
    await request(app).get(`/images/${ok.body.id}_files/8/0_0.jpeg`).expect(200);
    await request(app).get(`/api/images/${ok.body.id}`).expect(200);
    await request(app).delete(`/api/images/${ok.body.id}`).expect(401);
    await request(app).delete(`/api/images/${ok.body.id}`).set('Authorization', `Bearer ${token}`).expect(200);
  } finally { await service.close(); }
  assert.throws(() => loadConfig({ uploadToken: 'short' }), /upload-token .* 16–256 printable/);
});

test('--no-uploads serves what the data folder holds and takes nothing', async () => {
  const dataDir = tmp('infdit-ro-');
  const first = await ImageService.open(loadConfig({ ...fixture, dataDir }));
  const meta = await first.add(await wavePng(40, 30), 'kept.png');
  await first.close();
  const service = await ImageService.open(loadConfig({ ...fixture, dataDir, uploads: false }));
  try {
    const app = createApp(service);
    const list = await request(app).get('/api/images').expect(200);
    assert.equal(list.body.uploads, 'off');
    assert.deepEqual(list.body.images.map((i: { id: string }) => i.id), [meta.id]);
    await request(app).get(`/images/${meta.id}_files/8/1_0.jpeg`).expect(200);
    assert.match((await request(app).post('/api/images').attach('image', await wavePng(20, 20), 'new.png').expect(403)).body.error, /read-only \(--no-uploads\)/);
    assert.match((await request(app).delete(`/api/images/${meta.id}`).expect(403)).body.error, /read-only/);
    assert.equal(service.list().length, 1);
  } finally { await service.close(); }
});

test('other origins may read (CORS on GETs) but not write: cross-origin POSTs and deletes are refused', async () => {
  const service = await open();
  try {
    const app = createApp(service);
    const img = await wavePng(40, 30);
    const foreign = await request(app).post('/api/images').set('Origin', 'http://evil.example').attach('image', img, 'w.png').expect(403);
    assert.match(foreign.body.error, /not taken from other origins \(http:\/\/evil\.example\)/);
    await request(app).post('/api/images').set('Sec-Fetch-Site', 'cross-site').attach('image', img, 'w.png').expect(403);
    await request(app).post('/api/images').set('Origin', 'null').attach('image', img, 'w.png').expect(403);
    assert.deepEqual(service.list(), []);
    // this server's own page (Origin = its host) and clients with no page (curl) may
    const own = await request(app).post('/api/images').set('Host', 'infdit.test:8080').set('Origin', 'http://infdit.test:8080').attach('image', img, 'w.png').expect(201);
    await request(app).post(`/api/images/${own.body.id}/view`).set('Origin', 'http://evil.example').send({ viewer: 'viewer-evil-1' }).expect(403);
    await request(app).delete(`/api/images/${own.body.id}`).set('Origin', 'http://evil.example').expect(403);
    // reading: open to all origins; a preflight grants GET and HEAD only
    const dzi = await request(app).get(`/images/${own.body.id}.dzi`).set('Origin', 'http://elsewhere.example').expect(200);
    assert.equal(dzi.headers['access-control-allow-origin'], '*');
    const pre = await request(app).options('/api/images').set('Origin', 'http://evil.example').set('Access-Control-Request-Method', 'POST').expect(204);
    assert.equal(pre.headers['access-control-allow-methods'], 'GET, HEAD');
  } finally { await service.close(); }
});

test('uploads are rate-limited per client: 429 with when to try again', async () => {
  const service = await open({ uploadRateLimit: 3 });
  try {
    const app = createApp(service);
    for (let i = 0; i < 3; i++) await request(app).post('/api/images').attach('image', await noisePng(100 + i, 16, 16), `r${i}.png`).expect(201);
    const r = await request(app).post('/api/images').attach('image', await noisePng(200, 16, 16), 'r.png').expect(429);
    assert.match(r.body.error, /too many uploads from this address: at most 3 per 10 minutes \(upload-rate-limit\); try again in \d+ s/);
    await request(app).get('/api/images').expect(200);   // reading is not limited
  } finally { await service.close(); }
});

test('at start, half-made uploads (no meta.json) and interrupted deletions are swept', async () => {
  const dataDir = tmp('infdit-sweep-');
  const first = await ImageService.open(loadConfig({ ...fixture, dataDir }));
  const kept = await first.add(await wavePng(40, 30), 'kept.png');
  await first.close();
  const images = join(dataDir, 'images');
  // what kill -9 during a decode leaves: the source and part of the LR, no meta.json
  mkdirSync(join(images, '0123456789abcdef', 'lr'), { recursive: true });
  writeFileSync(join(images, '0123456789abcdef', 'source'), Buffer.alloc(4096));
  writeFileSync(join(images, '0123456789abcdef', 'lr', '0.v'), Buffer.alloc(8192));
  mkdirSync(join(images, '.deleted-fedcba9876543210-1'), { recursive: true });
  writeFileSync(join(images, '.deleted-fedcba9876543210-1', 'source'), Buffer.alloc(100));
  const service = await ImageService.open(loadConfig({ ...fixture, dataDir }));
  try {
    assert.deepEqual(readdirSync(images), [kept.id]);
    assert.deepEqual(service.list().map(m => m.id), [kept.id]);
    assert.equal(service.uploads().usedBytes, du(join(images, kept.id)));
  } finally { await service.close(); }
});

test('each command lists and takes only its own options', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [join(ROOT, 'bin/infdit.js'), ...args], { encoding: 'utf8' });
  const help = (cmd: string) => execFileSync(process.execPath, [join(ROOT, 'bin/infdit.js'), cmd, '--help'], { encoding: 'utf8' });
  const serve = help('serve'), render = help('render'), worker = help('worker');
  for (const f of ['--port', '--host', '--http2', '--upload-token', '--upload-budget-mb', '--no-uploads'.replace('no-', ''), '--view-lease-ms', '--scale']) assert.ok(serve.includes(f), `serve --help lacks ${f}`);
  for (const f of ['--port', '--http2', '--upload-token', '--background-fill', '--tile-wait-ms', '--queue-lock-ms']) assert.ok(!render.includes(f + ' '), `render --help lists ${f}`);
  for (const f of ['--scale', '--out', '--full', '--tile-size']) assert.ok(render.includes(f), `render --help lacks ${f}`);
  // render's help describes the render, not the server (issue 40): its own cache folder, no HTTP thread, no upload size
  assert.ok(!render.includes('--upload-max-bytes'), 'render --help lists --upload-max-bytes');
  assert.ok(!/HTTP thread/.test(render), 'render --help speaks of the HTTP thread');
  assert.match(render, /--data-dir .*\[default: <out>\/\.infdit-cache/);
  for (const f of ['--scale', '--port', '--tile-size', '--out']) assert.ok(!worker.includes(f + ' '), `worker --help lists ${f}`);
  assert.ok(worker.includes('--queue-lock-ms'));
  const wrong = run('render', 'x.png', '--port', '9000');
  assert.equal(wrong.status, 2);
  assert.match(wrong.stderr, /--port is an option of serve, not of this command/);
  assert.match(run('worker', '--scale', '8').stderr, /--scale is an option of serve and render/);
  assert.match(run('serve', '--bogus').stderr, /unknown option --bogus; known: .*--port/);
  assert.match(execFileSync(process.execPath, [join(ROOT, 'bin/infdit.js'), '--help'], { encoding: 'utf8' }), /infdit COMMAND --help/);
});
