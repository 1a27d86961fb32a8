/** Under faults and hostile input: kill -9 and restart, client cancellation, IIIF edge cases. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { execFileSync } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import sharp from 'sharp';
import { createApp } from '../server/app.js';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { FIXTURE, ROOT, wavePng, spawnServe } from './helpers.js';

const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));
const common = ['--model', FIXTURE + '.json', '--tile-size', '64', '--threads', '1', '--preset', 'detail'];

const photo = wavePng;
// a long tile wait: a preview answered for a slow tile would read as a wrong final tile
const startServer = (dataDir: string) => spawnServe(['--data-dir', dataDir, '--no-demo', '--batch', '1', '--tile-wait-ms', '120000', ...common]);

const status = async (base: string, id: string) => (await fetch(`${base}/api/images/${id}`)).json() as Promise<any>;

test('kill -9 while generating, restart on the same data dir: the pyramid equals an uninterrupted render', async () => {
  const dataDir = tmp('infdit-kill-'), img = await photo(120, 88);
  let { proc, base } = await startServer(dataDir);
  const fd = new FormData(); fd.append('image', new Blob([img]), 'kill.png');
  const up = await (await fetch(`${base}/api/images`, { method: 'POST', body: fd })).json() as any;
  const id = up.id;
  let st = await status(base, id);
  for (let i = 0; i < 400 && st.blocks.done < st.blocks.total * 0.2; i++) { await new Promise(r => setTimeout(r, 25)); st = await status(base, id); }
  assert.ok(st.blocks.done < st.blocks.total, 'finished before the kill; make the image larger');
  proc.kill('SIGKILL');
  await new Promise(r => proc.once('exit', r));
  ({ proc, base } = await startServer(dataDir));
  try {
    // no temp file survives a restart, and nothing half-made is served
    const walk = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap(e => e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)]);
    assert.deepEqual(walk(dataDir).filter(f => f.endsWith('.tmp')), []);
    const after = await status(base, id);
    assert.ok(after.blocks.done >= st.blocks.done, 'finished blocks were lost');
    // the reference: an uninterrupted render of the same image
    const out = tmp('infdit-ref-'); writeFileSync(join(out, 'kill.png'), img);
    execFileSync(process.execPath, [join(ROOT, 'bin/infdit.js'), 'render', join(out, 'kill.png'), '--out', out, ...common], { stdio: 'pipe' });
    const files = walk(join(out, 'kill_files'));
    for (const f of files.reverse()) {
      const rel = relative(join(out, 'kill_files'), f);
      const res = await fetch(`${base}/images/${id}_files/${rel}`);
      assert.equal(res.status, 200, rel);
      assert.ok(Buffer.from(await res.arrayBuffer()).equals(readFileSync(f)), `tile ${rel} differs after kill -9 + restart`);
    }
  } finally { proc.kill('SIGKILL'); }
});

test('a request cancelled by the client stops costing work; the work done is kept', async () => {
  const service = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir: tmp('infdit-cancel-'), tileSize: 64, backgroundFill: false, demo: false, threads: 1, batch: 1, preset: 'detail', tileWaitMs: 0 }));
  const server = createApp(service).listen(0, '127.0.0.1');
  await new Promise(r => server.once('listening', r));
  const port = (server.address() as AddressInfo).port;
  try {
    const meta = await service.add(await photo(160, 120), 'c.png');
    const g = service.geometry(meta.id);
    // the bottom-right tile of the top level: with the detail preset its cone is most of the image
    const L = Math.ceil(Math.log2(Math.max(g.width, g.height))), c = Math.ceil(g.width / 64) - 1, r = Math.ceil(g.height / 64) - 1;
    const req = http.get(`http://127.0.0.1:${port}/images/${meta.id}_files/${L}/${c}_${r}.jpeg`);
    req.on('error', () => {});
    await new Promise(res => setTimeout(res, 300));
    req.destroy();
    await new Promise(res => setTimeout(res, 300));
    const a = (await service.status(meta.id)).engine.nodes;
    await new Promise(res => setTimeout(res, 700));
    const b = await service.status(meta.id);
    assert.equal(b.engine.nodes, a, 'nodes kept running after the client went away');
    assert.ok(b.blocks.done < b.blocks.total);
    assert.ok(a > 0, 'no work was done before the cancel (make the wait longer)');
    // the work done is kept: asking again runs only what is left of the tile's cone
    const again = await fetch(`http://127.0.0.1:${port}/images/${meta.id}_files/${L}/${c}_${r}.jpeg`);
    assert.equal(again.status, 200);
    assert.equal((await service.status(meta.id)).engine.reruns, 0);
  } finally { server.close(); }
});

test('IIIF level 0: info.json and tiles; anything else gets 400/501, never a crash', async () => {
  // overlap 0: IIIF tiles are the DZI tiles' very bytes (with an overlap they are cut from them: below)
  const service = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir: tmp('infdit-iiif-'), tileSize: 64, tileOverlap: 0, backgroundFill: false, demo: false, threads: 1 }));
  const app = createApp(service);
  const meta = await service.add(await photo(40, 24), 'i.png');
  const id = meta.id;
  const info = await request(app).get(`/iiif/${id}/info.json`).expect(200).expect('Access-Control-Allow-Origin', '*');
  assert.match(info.headers['content-type'], /^application\/ld\+json;profile="http:\/\/iiif.io\/api\/image\/3\/context.json"/);
  const j = JSON.parse(info.text);
  assert.deepEqual([j.type, j.profile, j.width, j.height, j['@context']], ['ImageService3', 'level0', 160, 96, 'http://iiif.io/api/image/3/context.json']);
  assert.deepEqual(j.tiles[0].scaleFactors, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
  assert.ok(j.sizes.some((s: any) => s.width === 40 && s.height === 24));
  // tiles equal DZI tiles: full resolution, a scaled level, and a level that fits one tile
  const same = async (iiif: string, dzi: string) => {
    const a = await request(app).get(`/iiif/${id}/${iiif}`).expect(200);
    const b = await request(app).get(`/images/${id}_files/${dzi}`).expect(200);
    assert.ok(Buffer.from(a.body).equals(Buffer.from(b.body)), `${iiif} != ${dzi}`);
  };
  await same('64,0,64,64/64,64/0/default.jpg', '8/1_0.jpeg');
  await same('128,64,32,32/32,32/0/default.jpg', '8/2_1.jpeg');
  await same('0,0,128,96/64,48/0/default.jpg', '7/0_0.jpeg');
  await same('0,0,128,96/64,/0/default.jpg', '7/0_0.jpeg');
  await same('full/40,24/0/default.jpg', '6/0_0.jpeg');
  await same('0,0,64,64/max/0/default.jpg', '8/0_0.jpeg');
  for (const [url, code] of [['0,0,64,64/64,64/90/default.jpg', 501], ['0,0,64,64/64,64/0/gray.jpg', 501], ['0,0,64,64/64,64/0/default.png', 501],
    ['0,0,64,64/64,64/0/default.xyz', 400], ['1,0,64,64/64,64/0/default.jpg', 501], ['0,0,64,64/32,32/0/default.jpg', 501], ['square/64,64/0/default.jpg', 501],
    ['abc/64,64/0/default.jpg', 400], ['0,0,64,64/^64,64/0/default.jpg', 501], ['0,0,64,64/64,64/zz/default.jpg', 400], ['9999,0,64,64/64,64/0/default.jpg', 400]] as const) {
    const r = await request(app).get(`/iiif/${id}/${url}`);
    assert.equal(r.status, code, `${url} → ${r.status} ${r.text}`);
    assert.ok(r.body.error, `${url}: no JSON error (${r.headers["content-type"]})`);
  }
  await request(app).get(`/iiif/0123456789abcdef/info.json`).expect(404);
  await request(app).get(`/iiif/..%2f..%2fetc/info.json`).expect(404);
  // the default 1-px overlap: an IIIF tile is its DZI tile without the overlap, pixel for pixel (PNG)
  const s2 = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir: tmp('infdit-iiif-'), tileSize: 64, tileFormat: 'png', backgroundFill: false, demo: false, threads: 1 }));
  const app2 = createApp(s2), id2 = (await s2.add(await photo(40, 24), 'i.png')).id;
  const iiif = await sharp((await request(app2).get(`/iiif/${id2}/64,0,64,64/64,64/0/default.png`).expect(200)).body).raw().toBuffer({ resolveWithObject: true });
  const dzi = await sharp((await request(app2).get(`/images/${id2}_files/8/1_0.png`).expect(200)).body);
  assert.deepEqual([(await dzi.metadata()).width, (await dzi.metadata()).height], [66, 65]);
  assert.deepEqual([iiif.info.width, iiif.info.height], [64, 64]);
  assert.ok(iiif.data.equals(await dzi.extract({ left: 1, top: 0, width: 64, height: 64 }).raw().toBuffer()), 'the IIIF tile is not its DZI tile less the overlap');
});

test('pyramid download: a tar of the .dzi and every tile', async () => {
  const service = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir: tmp('infdit-tar-'), tileSize: 64, backgroundFill: false, demo: false, threads: 1 }));
  const app = createApp(service);
  const meta = await service.add(await photo(20, 20), 't.png');
  const res = await request(app).get(`/api/images/${meta.id}/pyramid.tar`).buffer(true).parse((r, cb) => { const b: Buffer[] = []; r.on('data', d => b.push(d)); r.on('end', () => cb(null, Buffer.concat(b))); }).expect(200);
  const dir = tmp('untar-'); writeFileSync(join(dir, 'p.tar'), res.body);
  execFileSync('tar', ['-xf', 'p.tar'], { cwd: dir });
  assert.match(readFileSync(join(dir, `${meta.id}.dzi`), 'utf8'), /Width="80"/);
  const tile = await request(app).get(`/images/${meta.id}_files/7/1_1.jpeg`).expect(200);
  assert.ok(readFileSync(join(dir, `${meta.id}_files/7/1_1.jpeg`)).equals(Buffer.from(tile.body)));
  assert.ok(statSync(join(dir, `${meta.id}_files/0/0_0.jpeg`)).size > 0);
});

test('a full disk is refused at start with a clear error (needs root to mount a tiny tmpfs)', async (t) => {
  const dir = tmp('infdit-full-');
  try { execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16k', 'tmpfs', dir], { stdio: 'pipe' }); }
  catch { t.skip('cannot mount a tmpfs here (not root)'); return; }
  try {
    try { writeFileSync(join(dir, 'filler'), Buffer.alloc(64 * 1024)); } catch { /* ENOSPC: the disk is now full */ }
    await assert.rejects(ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir: join(dir, 'data'), demo: false, backgroundFill: false })),
      /data directory .* is not writable .*(ENOSPC|no space)/i);
  } finally { execFileSync('umount', [dir]); }
});

test('infdit render killed with -9 and run again equals an uninterrupted render (finished blocks and tiles kept)', async () => {
  const img = await photo(96, 72), render = (out: string) => [join(ROOT, 'bin/infdit.js'), 'render', join(out, 'r.png'), '--out', out, ...common, '--batch', '2'];
  const ref = tmp('infdit-render-ref-'), out = tmp('infdit-render-kill-');
  writeFileSync(join(ref, 'r.png'), img); writeFileSync(join(out, 'r.png'), img);
  execFileSync(process.execPath, render(ref), { stdio: 'pipe' });
  // the same command, killed once some blocks are on disk
  const { spawn } = await import('node:child_process');
  const p = spawn(process.execPath, render(out), { stdio: 'ignore' });
  const walk = (d: string): string[] => { try { return readdirSync(d, { withFileTypes: true }).flatMap(e => e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)]); } catch { return []; } };
  const blocks = () => walk(join(out, '.infdit-cache')).filter(f => f.endsWith('.rgb')).length;
  for (let i = 0; i < 600 && blocks() < 10; i++) await new Promise(r => setTimeout(r, 20));
  p.kill('SIGKILL');
  await new Promise(r => p.once('exit', r));
  const kept = blocks();
  assert.ok(kept >= 10, `no blocks on disk before the kill (${kept})`);
  const before = new Map(walk(join(out, '.infdit-cache')).filter(f => f.endsWith('.rgb')).map(f => [f, statSync(f).mtimeMs]));
  execFileSync(process.execPath, render(out), { stdio: 'pipe' });
  for (const [f, t] of before) assert.equal(statSync(f).mtimeMs, t, `finished block ${f} was made again`);
  const files = walk(join(ref, 'r_files')).map(f => relative(join(ref, 'r_files'), f));
  assert.ok(files.length > 10);
  for (const f of files) assert.ok(readFileSync(join(out, 'r_files', f)).equals(readFileSync(join(ref, 'r_files', f))), `tile ${f} differs after kill -9 and a second run`);
  assert.deepEqual(walk(out).filter(f => f.endsWith('.tmp')), []);
});
