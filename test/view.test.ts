/** A viewer's view drives generation: its tiles first, centre first, withdrawn when they leave
 *  the view or its lease lapses; the pyramid download streams. (The same in a real browser:
 *  test/browser/view.test.ts.) */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { createApp } from '../server/app.js';
import { ImageService } from '../lib/tiles/service.js';
import { viewTiles, MAX_VIEW_TILES } from '../lib/tiles/views.js';
import { loadConfig } from '../config/index.js';
import { FIXTURE, wavePng } from './helpers.js';

const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));
const fixture = { model: FIXTURE + '.json', tileSize: 64, backgroundFill: false, demo: false, threads: 1 };
const until = async (f: () => Promise<boolean> | boolean) => { while (!(await f())) await new Promise(r => setTimeout(r, 20)); };

test('a view is the level\'s tiles under it, nearest its centre first, clamped to the image', () => {
  const g = { width: 1000, height: 600, tileSize: 100, overlap: 0 };   // maxLevel 10
  const t = viewTiles(g, { level: 10, x: 250, y: 150, width: 300, height: 200 });
  assert.deepEqual(t[0], { L: 10, c: 3, r: 2 }, 'the tile under the centre (400, 250) first');
  assert.equal(t.length, 4 * 3);
  assert.deepEqual(new Set(t.map(x => `${x.c},${x.r}`)), new Set(['2,1', '3,1', '4,1', '5,1', '2,2', '3,2', '4,2', '5,2', '2,3', '3,3', '4,3', '5,3']));
  // one level down: the same rectangle is half the pixels
  assert.deepEqual(viewTiles(g, { level: 9, x: 0, y: 0, width: 150, height: 150 }), [{ L: 9, c: 0, r: 0 }]);
  // beyond the image: clamped; outside it: nothing
  assert.deepEqual(viewTiles(g, { level: 10, x: 950, y: 550, width: 500, height: 500 }), [{ L: 10, c: 9, r: 5 }]);
  assert.deepEqual(viewTiles(g, { level: 10, x: 2000, y: 0, width: 100, height: 100 }), []);
  // a whole 10-Gpx level in one view: the 400 nearest its centre, listed without the other 2.4 M
  const huge = { width: 100000, height: 100000, tileSize: 64, overlap: 0 };
  const many = viewTiles(huge, { level: 17, x: 0, y: 0, width: 100000, height: 100000 });
  assert.equal(many.length, MAX_VIEW_TILES);
  const far = Math.max(...many.map(t => Math.hypot(t.c + 0.5 - 781.25, t.r + 0.5 - 781.25)));
  assert.ok(far < 13, `the view's tiles reach ${far.toFixed(1)} tiles from its centre: not the nearest 400`);
  // a thin view keeps its nearest tiles along its length
  const row = viewTiles(huge, { level: 17, x: 0, y: 50000, width: 100000, height: 10 });
  assert.equal(row.length, MAX_VIEW_TILES);
  assert.ok(row.every(t => t.r === 781 && Math.abs(t.c - 781) <= 200), 'a one-row view');
});

test('POST /view: its tiles are made without a tile request; two viewers share them; looking away withdraws', async () => {
  const service = await ImageService.open(loadConfig({ ...fixture, dataDir: tmp('infdit-view-') }));
  try {
    const app = createApp(service);
    const meta = await service.add(await wavePng(160, 120), 'w.png');   // 640×480 out, maxLevel 10, source up to 8
    const at = (viewer: string, x: number, y: number, w = 130, h = 130) => request(app).post(`/api/images/${meta.id}/view`).send({ viewer, level: 10, x, y, width: w, height: h });
    const made: string[] = [];
    service.events(meta.id).on('tile', (t: { level: number; col: number; row: number }) => made.push(`${t.level}/${t.col}/${t.row}`));
    const a = await at('viewer-aaaaaaaa', 500, 350).expect(200);
    assert.deepEqual(a.body.tiles[0], [10, 8, 6], 'centre first');
    assert.equal(a.body.tiles.length, 9);
    await until(async () => (await Promise.all(a.body.tiles.map(([L, c, r]: number[]) => service.tileIsFinal(meta.id, L, c, r)))).every(Boolean));
    // UniBA: a tile's upper-left neighbours are partly its own cone, so they may finish with it; tiles
    // whose last blocks end in one batch are written in the order their encodings end (seen: the tile below
    // the centre, which needs the centre's blocks, reported first, in 2 of 10 runs): the centre tile is in
    // the first two thirds, not left for last
    assert.ok(made.indexOf('10/8/6') < (2 * made.length) / 3, `tiles made in the order ${made.join(' ')}`);
    let st = await service.status(meta.id);
    assert.deepEqual([st.view.viewers, st.view.making.length, st.view.engine.requests], [1, 0, 0], 'made: nothing left wanted');
    assert.equal(st.engine.byClass[20] > 0, true, 'the view ran at its own priority class');

    // two viewers on one place share its tiles; one looking away leaves the other's work running
    await at('viewer-aaaaaaaa', 0, 300, 256, 180).expect(200);
    const b = await at('viewer-bbbbbbbb', 0, 300, 256, 180).expect(200);
    st = await service.status(meta.id);
    assert.equal(st.view.viewers, 2);
    assert.ok(st.view.making.length > 0 && st.view.making.length <= b.body.tiles.length, `making ${st.view.making}`);
    await request(app).post(`/api/images/${meta.id}/view`).send({ viewer: 'viewer-aaaaaaaa' }).expect(200);
    st = await service.status(meta.id);
    assert.equal(st.view.viewers, 1);
    assert.ok(st.view.engine.requests > 0, 'the other viewer\'s tiles were withdrawn too');
    // the remaining viewer zooms out to the photo's own levels: nothing is wanted any more
    const away = await request(app).post(`/api/images/${meta.id}/view`).send({ viewer: 'viewer-bbbbbbbb', level: 7, x: 0, y: 0, width: 640, height: 480 }).expect(200);
    assert.deepEqual(away.body.tiles, []);
    st = await service.status(meta.id);
    assert.deepEqual([st.view.making.length, st.view.engine.requests, st.view.engine.blocks], [0, 0, 0]);
  } finally { await service.close(); }
});

test('POST /view refuses what it cannot use, saying what it takes', async () => {
  const service = await ImageService.open(loadConfig({ ...fixture, dataDir: tmp('infdit-view-bad-') }));
  try {
    const app = createApp(service);
    const meta = await service.add(await wavePng(40, 30), 'w.png');
    const url = `/api/images/${meta.id}/view`;
    for (const [body, want] of [
      [{ level: 8, x: 0, y: 0, width: 10, height: 10 }, /viewer/],
      [{ viewer: 'short', level: 8, x: 0, y: 0, width: 10, height: 10 }, /viewer: must be 8–64/],
      [{ viewer: 'viewer-ok-1', level: 8, x: 0, y: 0, width: -1, height: 10 }, /bad view/],
      [{ viewer: 'viewer-ok-1', level: 99, x: 0, y: 0, width: 10, height: 10 }, /level/],
      [{ viewer: 'viewer-ok-1', level: 20, x: 0, y: 0, width: 10, height: 10 }, /level 20 is not a level of this pyramid \(0 … 8\)/],
      [{ viewer: 'viewer-ok-1', level: 8, x: 0, y: 0, width: 10, height: 10, extra: 1 }, /bad view/],
    ] as [object, RegExp][]) {
      const r = await request(app).post(url).send(body).expect(400);
      assert.match(r.body.error, want, JSON.stringify(body));
    }
    assert.match((await request(app).post(url).set('Content-Type', 'application/json').send('{not json').expect(400)).body.error, /JSON|Unexpected|json/i);
    assert.equal((await request(app).post(url).set('Content-Type', 'application/json').send(JSON.stringify({ viewer: 'x'.repeat(3000) })).expect(413)).status, 413);
    await request(app).post('/api/images/0123456789abcdef/view').send({ viewer: 'viewer-ok-1' }).expect(404);
  } finally { await service.close(); }
});

test('a view not stated again lapses after its lease: its work is withdrawn (released model)', async () => {
  const service = await ImageService.open(loadConfig({ dataDir: tmp('infdit-view-lease-'), backgroundFill: false, demo: false, viewLeaseMs: 1000 }));
  try {
    const app = createApp(service);
    const meta = await service.add(await wavePng(512, 384), 'w.png');    // 2048×1536 out, 256-px tiles
    const v = await request(app).post(`/api/images/${meta.id}/view`).send({ viewer: 'lease-test-1', level: 11, x: 1024, y: 512, width: 1024, height: 1024 }).expect(200);
    assert.equal(v.body.leaseMs, 1000);
    let st = await service.status(meta.id);
    assert.ok(st.view.engine.requests > 0);
    await until(async () => (st = await service.status(meta.id)).view.viewers === 0);
    assert.deepEqual([st.view.making.length, st.view.engine.requests, st.view.engine.blocks], [0, 0, 0]);
    const final = await Promise.all(v.body.tiles.map(([L, c, r]: number[]) => service.tileIsFinal(meta.id, L, c, r)));
    assert.ok(final.some(f => !f), 'every tile was made within the lease: the test shows nothing');
  } finally { await service.close(); }
});

test('the pyramid download streams: its first bytes leave before the tiles are made; a client that goes stops it', async () => {
  const service = await ImageService.open(loadConfig({ ...fixture, dataDir: tmp('infdit-tar-stream-') }));
  const server = createApp(service).listen(0, '127.0.0.1');
  try {
    await new Promise(r => server.once('listening', r));
    const meta = await service.add(await wavePng(400, 300), 'w.png');   // 150×113 blocks of the fixture: far more than a moment's work
    const first = await new Promise<{ head: Buffer; req: ReturnType<typeof httpRequest> }>((resolve, reject) => {
      const req = httpRequest({ port: (server.address() as AddressInfo).port, path: `/api/images/${meta.id}/pyramid.tar` }, res => {
        assert.equal(res.statusCode, 200);
        assert.equal(res.headers['content-type'], 'application/x-tar');
        res.once('data', (d: Buffer) => resolve({ head: d, req }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(first.head.subarray(0, 20).toString(), `${meta.id}.dzi`);
    const p = await service.progress(meta.id);
    assert.ok(p.done < p.total, `${p.done} of ${p.total} blocks made before the first byte`);
    // the engine is working for the download; the client goes, and so does the demand
    await until(async () => (await service.status(meta.id)).engine.nodes > 0);
    first.req.destroy();
    await until(async () => (await service.status(meta.id)).engine.wanted.requests === 0);
    const done = (await service.progress(meta.id)).done;
    assert.ok(done < p.total, 'the whole pyramid was made although the client went');
  } finally { server.close(); await service.close(); }
});
