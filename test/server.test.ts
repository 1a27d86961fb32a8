/** The HTTP server with the fixture model: routes, errors, caching, restart, and render parity. */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import sharp from 'sharp';
import request from 'supertest';
import { createApp } from '../server/app.js';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig, ConfigError, parseArgs } from '../config/index.js';
import { FIXTURE, ROOT, wavePng } from './helpers.js';

const settings = { model: FIXTURE + '.json', tileSize: 64, backgroundFill: false, demo: false, threads: 1, tileWaitMs: 0, uploadMaxPixels: 1_000_000 };
const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));

const photo = wavePng;

let app: ReturnType<typeof createApp>, service: ImageService, dataDir: string, id: string, img: Buffer;
before(async () => {
  dataDir = tmp('infdit-data-');
  service = await ImageService.open(loadConfig({ ...settings, dataDir }));
  app = createApp(service);
  img = await photo(37, 21);
  const res = await request(app).post('/api/images').attach('image', img, 'wave.png').expect(201);
  id = res.body.id;
});

test('upload, list, status', async () => {
  const again = await request(app).post('/api/images').attach('image', img, 'wave.png').expect(201);
  assert.equal(again.body.id, id, 'same bytes, same id');
  assert.deepEqual([again.body.width, again.body.height], [148, 84]);
  const list = await request(app).get('/api/images').expect(200);
  assert.equal(list.body.images.length, 1);
  assert.match(list.body.images[0].urls.dzi, new RegExp(`/images/${id}\\.dzi$`));
  const st = await request(app).get(`/api/images/${id}`).expect(200);
  assert.equal(st.body.blocks.total, Math.ceil(21 / 8) * Math.ceil(37 / 8));
  assert.equal(st.body.maxLevel, 8);
  assert.equal(st.body.headers, undefined);
  assert.equal(st.body.jpegQuality, 0, 'a PNG is no JPEG');
  // what a model with the JPEG condition is told, read from the kept file's tables
  const jpg = await request(app).post('/api/images').attach('image', await sharp(img).jpeg({ quality: 70 }).toBuffer(), 'wave.jpg').expect(201);
  assert.equal((await request(app).get(`/api/images/${jpg.body.id}`).expect(200)).body.jpegQuality, 70);
});

test('dzi is what dzsave writes for the output size', async () => {
  const res = await request(app).get(`/images/${id}.dzi`).expect(200).expect('Access-Control-Allow-Origin', '*');
  assert.match(res.text, /TileSize="64"/);
  assert.match(res.text, /Height="84"\n\s+Width="148"/);
});

test('final tiles: strong ETag, immutable, 304; previews never immutable', async () => {
  const url = `/images/${id}_files/8/1_0.jpeg`;
  const prev = await request(app).get(url + '?preview=1').expect(200);
  assert.equal(prev.headers['x-infdit-tile'], 'preview');
  assert.equal(prev.headers['cache-control'], 'no-store');
  const fin = await request(app).get(url).expect(200).expect('Content-Type', 'image/jpeg');
  assert.equal(fin.headers['cache-control'], 'public, max-age=31536000, immutable');
  assert.match(fin.headers.etag, /^"[^W]/);
  await request(app).get(url).set('If-None-Match', fin.headers.etag).expect(304);
  // once final, the preview URL serves the final tile too
  const after = await request(app).get(url + '?preview=1').expect(200);
  assert.equal(after.headers['x-infdit-tile'], 'final');
  // tile (1, 0) of 64 px with the default 1-px overlap on its interior edges: left, right and bottom
  const meta = await sharp(fin.body).metadata();
  assert.deepEqual([meta.width, meta.height], [66, 65]);
});

test('source levels are the upload itself', async () => {
  // level 6 = LR size (37×21): the tile is the source, re-encoded
  const res = await request(app).get(`/images/${id}_files/6/0_0.jpeg`).expect(200);
  const m = await sharp(res.body).metadata();
  assert.deepEqual([m.width, m.height], [37, 21]);
});

test('errors: unknown id, out of range, bad format, traversal → 4xx JSON', async () => {
  await request(app).get('/images/0123456789abcdef.dzi').expect(404);
  await request(app).get(`/api/images/nope`).expect(404);
  await request(app).get(`/images/${id}_files/9/0_0.jpeg`).expect(404);
  await request(app).get(`/images/${id}_files/8/3_0.jpeg`).expect(404);
  await request(app).get(`/images/${id}_files/8/0_2.jpeg`).expect(404);
  await request(app).get(`/images/${id}_files/-1/0_0.jpeg`).expect(404);
  await request(app).get(`/images/${id}_files/8/99999999999_0.jpeg`).expect(404);
  const bad = await request(app).get(`/images/${id}_files/8/0_0.gif`).expect(400);
  assert.match(bad.body.error, /accepted: jpeg, png, webp/);
  await request(app).get(`/images/..%2f..%2fetc%2fpasswd`).expect(404);
  await request(app).get(`/images/${id}_files/..%2f..%2f/0_0.jpeg`).expect(404);
  await request(app).get(`/images/${'a'.repeat(5000)}.dzi`).expect(404);
});

test('uploads: non-image, truncated, empty, bomb, svg, missing field → 4xx naming the problem', async () => {
  let r = await request(app).post('/api/images').attach('image', Buffer.from('hello world, not an image'), 'x.png').expect(400);
  assert.match(r.body.error, /not a readable image/);
  const png = await photo(300, 200);
  r = await request(app).post('/api/images').attach('image', png.subarray(0, png.length >> 1), 't.png').expect(400);
  assert.match(r.body.error, /truncated|corrupt|decoded/);
  r = await request(app).post('/api/images').attach('image', Buffer.alloc(0), 'e.png').expect(400);
  // decompression bomb: a PNG header claiming 50000×50000
  const bomb = Buffer.from(png); bomb.writeUInt32BE(50000, 16); bomb.writeUInt32BE(50000, 20);
  r = await request(app).post('/api/images').attach('image', bomb, 'bomb.png');
  assert.ok([400, 413].includes(r.status), `bomb got ${r.status}`);
  assert.match(r.body.error, /limit|pixels|corrupt|readable/);
  r = await request(app).post('/api/images').attach('image', Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><image href="file:///etc/passwd"/></svg>'), 'x.svg').expect(400);
  assert.match(r.body.error, /SVG/);
  r = await request(app).post('/api/images').set('Content-Type', 'application/json').send('{"image":"x"}').expect(400);
  assert.match(r.body.error, /multipart\/form-data/);
  r = await request(app).post('/api/images').set('Content-Type', 'image/png').send(png).expect(400);
  assert.match(r.body.error, /multipart\/form-data/);
  r = await request(app).post('/api/images').attach('file', png, 'x.png').expect(400);
  assert.match(r.body.error, /field "image"/);
  const gif = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#f00' } }).gif().toBuffer();
  const gif2 = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#0f0' } }).gif().toBuffer();
  const anim = await sharp([gif, gif2], { join: { animated: true } }).gif().toBuffer();
  r = await request(app).post('/api/images').attach('image', anim, 'a.gif').expect(400);
  assert.match(r.body.error, /animated/);
  await request(app).get(`/images/${id}.dzi`).expect(200);   // still serving
});

test('server tiles in random order equal `infdit render` files byte for byte; restart reuses them', async () => {
  const out = tmp('infdit-render-');
  const file = join(out, 'wave.png');
  writeFileSync(file, img);
  execFileSync(process.execPath, [join(ROOT, 'bin/infdit.js'), 'render', file, '--out', out, '--model', FIXTURE + '.json',
    '--tile-size', '64', '--threads', '1', '--full', join(out, 'full.png')], { stdio: 'pipe' });
  assert.equal(readFileSync(join(out, 'wave.dzi'), 'utf8'), (await request(app).get(`/images/${id}.dzi`)).text);
  const files: string[] = [];
  for (const L of readdirSync(join(out, 'wave_files'))) for (const f of readdirSync(join(out, 'wave_files', L))) files.push(`${L}/${f}`);
  assert.equal(files.length, 7 + 2 + 3 * 2);   // levels 0..6: 1 tile each; 7: 2×1; 8: 3×2
  // a fresh server (own data dir) asked in a shuffled order
  const d2 = tmp('infdit-data-');
  const s2 = await ImageService.open(loadConfig({ ...settings, dataDir: d2 }));
  const app2 = createApp(s2);
  await request(app2).post('/api/images').attach('image', img, 'wave.png').expect(201);
  files.sort((a, b) => (a.length * 7919 + a.charCodeAt(2)) % 13 - (b.length * 7919 + b.charCodeAt(2)) % 13).reverse();
  for (const f of files) {
    const res = await request(app2).get(`/images/${id}_files/${f}`).expect(200);
    assert.ok(Buffer.from(res.body).equals(readFileSync(join(out, 'wave_files', f))), `tile ${f} differs from infdit render`);
  }
  const full = await sharp(join(out, 'full.png')).metadata();
  assert.deepEqual([full.width, full.height], [148, 84]);
  // restart on the same data dir: listed, and served from disk without generating again
  const s3 = await ImageService.open(loadConfig({ ...settings, dataDir: d2 }));
  assert.equal(s3.list().length, 1);
  const st = await request(createApp(s3)).get(`/api/images/${id}`).expect(200);
  assert.equal(st.body.blocks.done, st.body.blocks.total);
});

test('config: bad values are refused naming the key and what is accepted', () => {
  assert.throws(() => loadConfig({ scale: 3 }), (e: Error) => e instanceof ConfigError && /scale/.test(e.message) && /2, 4, 8, 16/.test(e.message));
  assert.throws(() => loadConfig({ tileFormat: 'gif' }), /tile-format.*"gif"/);
  assert.throws(() => loadConfig({}, { INFDIT_BATCH: '0' }), /batch \(env INFDIT_BATCH\)/);
  assert.throws(() => parseArgs(['--bogus', '1']), /unknown option --bogus/);
  assert.equal(loadConfig(parseArgs(['--kv-cache-mb', '7']).overrides).kvCacheMb, 7);
  // a flag's value is reported as the flag, not as the environment variable
  assert.throws(() => loadConfig(parseArgs(['--tile-wait-ms', '900000']).overrides), /invalid tile-wait-ms \(--tile-wait-ms\): got "900000"/);
  // the forms people type for booleans
  for (const [argv, want] of [[['--background-fill', 'false'], false], [['--background-fill=false'], false], [['--no-background-fill'], false],
    [['--background-fill'], true], [['--background-fill', 'no'], false], [['--demo', 'TRUE'], true], [['--http2', '0'], false]] as [string[], boolean][]) {
    const { overrides, positionals } = parseArgs(argv);
    assert.deepEqual(positionals, [], argv.join(' '));
    const cfg = loadConfig(overrides);
    assert.equal(argv[0].includes('demo') ? cfg.demo : argv[0].includes('http2') ? cfg.http2 : cfg.backgroundFill, want, argv.join(' '));
  }
  // a word that is not a boolean stays a positional argument (serve refuses it by name)
  assert.deepEqual(parseArgs(['--background-fill', 'photo.jpg']).positionals, ['photo.jpg']);
  assert.throws(() => loadConfig(parseArgs(['--background-fill=maybe']).overrides), /invalid background-fill \(--background-fill\): got "maybe"/);
});

test('unwritable data dir is refused at start, not at the first tile', async () => {
  // a path under a regular file can never be created, even by root
  const f = join(tmp('ro-'), 'file'); writeFileSync(f, 'x');
  await assert.rejects(ImageService.open(loadConfig({ ...settings, dataDir: join(f, 'data') })), /data directory .* is not writable.*--data-dir/);
  assert.ok(existsSync(dataDir));
});

test('previews: the base super-resolver where the model has one (its own pixels at 4×), Lanczos3 for the compare view and for a model without one', async () => {
  const d = tmp('infdit-base-');
  const s = await ImageService.open(loadConfig({ ...settings, model: join(ROOT, 'test/fixtures/tiny-base.json'), tileFormat: 'png', dataDir: d }));
  const a = createApp(s);
  const up = await request(a).post('/api/images').attach('image', img, 'wave.png').expect(201);
  const st = await request(a).get(`/api/images/${up.body.id}`).expect(200);
  assert.equal(st.body.preview, 'base');
  const url = `/images/${up.body.id}_files/${st.body.maxLevel}/1_0.png`;
  const pre = await request(a).get(url + '?preview=1').expect(200);
  assert.equal(pre.headers['x-infdit-preview'], 'base');
  assert.match(pre.headers['access-control-expose-headers'], /X-Infdit-Preview/, 'a page on another origin cannot read which preview it got');
  // at the model's own 4× the preview is the base's pixels, unresized: tile (1,0) of 64 px with its 1-px
  // overlap is x 63..129, y 0..64
  const lr = await sharp(img).raw().toBuffer({ resolveWithObject: true });
  const { BaseUp } = await import('../lib/engine/base.js');
  const { ImageLR } = await import('../lib/engine/render.js');
  const { MemoryPixels } = await import('../lib/engine/pixels.js');
  const want = await new BaseUp(s.model, new ImageLR(new MemoryPixels({ width: lr.info.width, height: lr.info.height, data: new Uint8Array(lr.data) }))).pixels(63, 0, 66, 65);
  const got = await sharp(pre.body).raw().toBuffer();
  assert.ok(Buffer.from(want).equals(got), 'the 4× preview is not the base\'s pixels');
  const lz = await request(a).get(url + '?preview=lanczos').expect(200);
  assert.equal(lz.headers['x-infdit-preview'], 'lanczos');
  assert.ok(!Buffer.from(lz.body).equals(pre.body), 'the compare view gave the base');
  // a level between the LR and 4× (2×): the base reduced, not Lanczos
  assert.equal((await request(a).get(`/images/${up.body.id}_files/${st.body.maxLevel - 1}/0_0.png?preview=1`).expect(200)).headers['x-infdit-preview'], 'base');
  // a view stated at the base's own level has its windows made first (PreviewGate), each once: the whole
  // render after it makes no window again (37×21 LR: 2×1 windows of the fixture's 32 px)
  const up2 = await request(a).post('/api/images').attach('image', await sharp(img).flop().png().toBuffer(), 'flop.png').expect(201);
  const v = await request(a).post(`/api/images/${up2.body.id}/view`)
    .send({ viewer: 'test-view-0001', level: st.body.maxLevel, x: 0, y: 0, width: st.body.width, height: st.body.height }).expect(200);
  assert.equal(v.body.tiles.length, 3 * 2);
  await s.renderAll(up2.body.id);
  assert.equal((await request(a).get(`/api/images/${up2.body.id}`).expect(200)).body.engine.base.tiles, 2);
  // the fixture without a base: Lanczos3
  assert.equal((await request(app).get(`/images/${id}_files/8/0_0.jpeg?preview=1`).expect(200)).headers['x-infdit-preview'], 'lanczos');
  assert.equal((await request(app).get(`/api/images/${id}`).expect(200)).body.preview, 'lanczos');
});

test('render without --out writes into a folder named after the photo, never the current folder', () => {
  const cwd = tmp('infdit-render-cwd-');
  writeFileSync(join(cwd, 'wave.png'), img);
  execFileSync(process.execPath, [join(ROOT, 'bin/infdit.js'), 'render', 'wave.png', '--model', FIXTURE + '.json', '--threads', '1'], { cwd, stdio: 'pipe' });
  assert.ok(existsSync(join(cwd, 'wave', 'wave.dzi')), 'no wave/wave.dzi');
  assert.deepEqual(readdirSync(cwd).sort(), ['wave', 'wave.png']);
});
