/** Progress answers stay bounded at any image size; the exact per-block map round-trips. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import request from 'supertest';
import { createApp } from '../server/app.js';
import { ImageService } from '../lib/tiles/service.js';
import { encodeRuns, decodeRuns, coarseMap, MAP_SIDE, EtaMeter } from '../lib/tiles/progress.js';
import { loadConfig } from '../config/index.js';
import { FIXTURE } from './helpers.js';

test('run-length map round-trips any pattern; the coarse map has at most MAP_SIDE² cells', () => {
  let s = 5;
  const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  for (const [n, p] of [[0, 0.5], [1, 1], [1000, 0], [1000, 1], [70_000, 0.5], [200_000, 0.999], [200_000, 0.01]] as [number, number][]) {
    const done = Uint8Array.from({ length: n }, () => (rand() < p ? 1 : 0));
    assert.deepEqual(decodeRuns(encodeRuns(done), n), done, `${n} blocks, p ${p}`);
  }
  // a raster sweep halfway through 200,000 blocks: a few bytes
  const sweep = new Uint8Array(200_000).fill(1, 0, 123_457);
  assert.ok(encodeRuns(sweep).length < 16);
  const m = coarseMap(sweep, 400, 500);
  assert.ok(m.rows <= MAP_SIDE && m.cols <= MAP_SIDE && m.blocksPerCell === 4);
  const cells = Buffer.from(m.data, 'base64');
  assert.equal(cells.length, m.rows * m.cols);
  assert.equal(cells[0], 255); assert.equal(cells[cells.length - 1], 0);
});

test('status answers stay under a fixed size at 62,500 blocks; /blocks gives the exact map', async () => {
  const service = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir: mkdtempSync(join(tmpdir(), 'infdit-prog-')), tileSize: 64,
    backgroundFill: false, demo: false, threads: 1, uploadMaxPixels: 5_000_000 }));
  const app = createApp(service);
  try {
    const W = 2000, H = 2000;                                            // fixture LR block 8 px: 250 × 250 blocks
    const png = await sharp({ create: { width: W, height: H, channels: 3, background: { r: 90, g: 140, b: 200 } } }).png().toBuffer();
    const { body: meta } = await request(app).post('/api/images').attach('image', png, 'big.png').expect(201);
    // generate a few scattered tiles' blocks
    const L = Math.ceil(Math.log2(4 * W));
    for (const [c, r] of [[0, 0], [60, 3], [17, 99]]) await request(app).get(`/images/${meta.id}_files/${L}/${c}_${r}.jpeg`).expect(200);
    const st = await request(app).get(`/api/images/${meta.id}`).expect(200);
    assert.equal(st.body.blocks.total, 62_500);
    assert.ok(st.body.blocks.done >= 12 && st.body.blocks.done < 100, `done ${st.body.blocks.done}`);
    assert.ok(st.text.length < 32_000, `status answer is ${st.text.length} bytes`);
    assert.equal(st.body.blocks.doneList, undefined);
    const bl = await request(app).get(`/api/images/${meta.id}/blocks`).expect(200);
    assert.ok(bl.text.length < 2_000, `blocks answer is ${bl.text.length} bytes for ${st.body.blocks.done} scattered blocks`);
    const done = decodeRuns(bl.body.runs, 62_500);
    const s = (service as any).entries.get(meta.id).render.last;
    let n = 0;
    for (let i = 0; i < done.length; i++) { assert.equal(done[i], s.isFinal(Math.floor(i / 250), i % 250) ? 1 : 0); n += done[i]; }
    assert.equal(n, st.body.blocks.done);
    // tile (60,3) of the top level is blocks rows 6..7, cols 120..121 (tile 64 px = 2 fixture blocks of 32)
    assert.equal(done[6 * 250 + 120], 1);
    await request(app).get('/api/images/0123456789abcdef/blocks').expect(404);
  } finally { await service.close(); }
});

test('the time-left estimate is steady while blocks finish in bursts and pauses, and tracks the real time left', () => {
  // a tile's cone at a time: 16 blocks within 0.2 s every 3 s, a 12-s pause (a viewer's tiles
  // overtaking the fill) after a minute; the viewer asks every 3 s
  const total = 4000, times: number[] = [];
  for (let t = 0, k = 0; times.length < total; k++) {
    t += k === 20 ? 15000 : 3000;
    for (let i = 0; i < 16 && times.length < total; i++) times.push(t + i * 12);
  }
  const meter = new EtaMeter();
  const last50 = (done: number, now: number) => {   // what the server did before: the rate of the last 50 blocks
    const t = times.slice(Math.max(0, done - 50), done);
    return t.length >= 2 ? (total - done) / ((t.length - 1) / ((t[t.length - 1] - t[0]) / 1000)) : null;
  };
  let done = 0, prev: number | null = null, prevOld: number | null = null, worst = 1, worstOld = 1, rises = 0;
  const errs: number[] = [];
  for (let now = 1000; now < 400_000; now += 3000) {
    while (done < total && times[done] <= now) meter.tick(times[done++]);
    const eta = meter.estimate(total - done, now), old = last50(done, now);
    if (now > 30_000 && done < total - 200) {
      assert.ok(eta !== null);
      if (prev) { worst = Math.max(worst, eta! / prev, prev / eta!); if (eta! > prev) rises++; }
      if (prevOld && old) worstOld = Math.max(worstOld, old / prevOld, prevOld / old);
      const real = (times[total - 1] - now) / 1000;
      errs.push(Math.abs(eta! - real) / real);
    }
    prev = eta; prevOld = old;
  }
  assert.ok(worstOld > 2, `the old estimate was steady here (${worstOld.toFixed(2)}×): the test shows nothing`);
  assert.ok(worst < 1.25, `the estimate moved ${worst.toFixed(2)}× between two polls 3 s apart`);
  // the same work all along: the figure only ever falls (issue 40: 7 → 17 → 9 min in one image)
  assert.equal(rises, 0, `the estimate rose ${rises} times while the work stayed the same`);
  errs.sort((a, b) => a - b);
  assert.ok(errs[Math.floor(errs.length / 2)] < 0.15, `median error ${(100 * errs[Math.floor(errs.length / 2)]).toFixed(0)}% of the real time left`);
  console.log(`time left: median error ${(100 * errs[Math.floor(errs.length / 2)]).toFixed(1)}%, 90th percentile ${(100 * errs[Math.floor(0.9 * errs.length)]).toFixed(1)}% over the image`);
  // new work (the remaining blocks doubled): the figure rises to say so
  const m2 = new EtaMeter();
  for (let i = 0; i < 100; i++) m2.tick(i * 100);
  const a = m2.estimate(1000, 10_000)!, b = m2.estimate(2000, 10_500)!;
  assert.ok(b > 1.5 * a, `the estimate did not rise with the work: ${a} → ${b} s`);
  assert.equal(new EtaMeter().estimate(10), null, 'no rate yet: no figure');
  assert.equal(meter.estimate(0), 0);
});
