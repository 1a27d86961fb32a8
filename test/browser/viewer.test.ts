/**
 * The viewer in a real browser (Debian chromium via playwright-core) against a real server with
 * the fixture model: upload through the page, zoom to the top level, watch the detail arrive.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { chromium, type Browser, type Page } from 'playwright-core';
import { createApp } from '../../server/app.js';
import { ImageService } from '../../lib/tiles/service.js';
import { loadConfig } from '../../config/index.js';
import sharp from 'sharp';
import { FIXTURE, ROOT } from '../helpers.js';
import { watchPage } from './watch.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/lib/chromium/chromium';
const ARTIFACTS = join(ROOT, 'test/artifacts');

let server: Server, base: string, browser: Browser, page: Page, service: ImageService;
const failures: string[] = [];

before(async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-browser-'));
  service = await ImageService.open(loadConfig({ model: FIXTURE + '.json', dataDir, tileSize: 64, backgroundFill: true, demo: false, threads: 1, batch: 4, tileWaitMs: 30000 }));
  server = createApp(service).listen(0, '127.0.0.1');
  await new Promise(r => server.once('listening', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'] });
  page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  page.on('pageerror', e => failures.push(`pageerror: ${e.message}`));
  // every failed response, except the upload the test rejects on purpose
  page.on('response', r => { if (r.status() >= 400 && !(r.request().method() === 'POST' && r.status() === 400)) failures.push(`${r.status()} ${r.url()}`); });
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => { await browser?.close(); server?.close(); await service?.close(); });

test('upload through the page, zoom to the top level, final tiles replace the preview', async () => {
  await page.goto(base + '/');
  // a server that asks no token shows no token field (issue 40: a CSS display rule beat [hidden]), and has an icon
  assert.equal(await page.isVisible('#token-row'), false, 'the token field shows on a server without a token');
  const icon = await page.evaluate(async () => { const r = await fetch('/favicon.ico'); return [r.status, r.headers.get('content-type')]; });
  assert.deepEqual([icon[0], /^image\/svg\+xml/.test(String(icon[1]))], [200, true]);
  const w = 96, h = 64, data = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) data[(y * w + x) * 3 + c] = 128 + Math.round(90 * Math.sin(x / (2 + c) + y / 4));
  const png = await sharp(data, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
  const file = join(mkdtempSync(join(tmpdir(), 'up-')), 'waves.png');
  writeFileSync(file, png);

  // a file that is not an image gets a clear error on the page
  await page.setInputFiles('#file', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not an image') });
  await page.waitForFunction(() => /Not uploaded: not a readable image/.test(document.querySelector('#upload-msg')!.textContent!));

  await page.setInputFiles('#file', file);
  await page.waitForFunction(() => (window as any).infdit?.st?.name === 'waves.png', null, { timeout: 20000 });
  const st = await page.evaluate(() => (window as any).infdit.st);
  assert.deepEqual([st.width, st.height], [384, 256]);
  assert.match(await page.inputValue('#dzi-url'), /\/images\/[0-9a-f]{16}\.dzi$/);
  assert.match(await page.inputValue('#iiif-url'), /\/iiif\/[0-9a-f]{16}\/info\.json$/);

  // zoom to the top level (1 image px per screen px) at the centre
  await page.evaluate(() => { const v = (window as any).infdit.viewer; v.viewport.zoomTo(v.viewport.imageToViewportZoom(1), undefined, true); });
  await page.waitForFunction(() => document.querySelector('#progress')!.getAttribute('data-percent') === '100', null, { timeout: 120000 });
  // the swap settles: the top layer's tiles are all final, none of them previews
  await page.waitForFunction(() => {
    const s = (window as any).infdit;
    if (s.swapping || s.layers.length !== 1) return false;
    const ti = s.layers[0];
    return ti.getFullyLoaded() && [...ti.previews].length === 0 && s.finalLoaded > 0;
  }, null, { timeout: 60000 });
  const s = await page.evaluate(() => { const s = (window as any).infdit; return { failed: s.failed, finalLoaded: s.finalLoaded, previewLoaded: s.previewLoaded, gen: s.gen, events: s.events }; });
  assert.equal(s.failed, 0, 'tile-load-failed fired');
  assert.ok(s.finalLoaded > 0, 'no final tile was drawn');

  // the pixels on screen are the generated ones: compare the canvas with the final tile bytes
  const id = st.id, M = st.maxLevel;
  const probe = await page.evaluate(async ({ id, M }) => {
    const v = (window as any).infdit.viewer, OSD = (window as any).OpenSeadragon;
    v.viewport.panTo(v.viewport.imageToViewportCoordinates(new OSD.Point(32, 32)), true);
    v.viewport.zoomTo(v.viewport.imageToViewportZoom(1), undefined, true);
    v.forceRedraw();
    await new Promise(r => setTimeout(r, 1500));
    const canvas = document.querySelector('#osd canvas') as HTMLCanvasElement;
    const ratio = canvas.width / canvas.clientWidth;
    const p = v.viewport.pixelFromPoint(v.viewport.imageToViewportCoordinates(new OSD.Point(32.5, 32.5)), true);
    const px = canvas.getContext('2d')!.getImageData(Math.round(p.x * ratio), Math.round(p.y * ratio), 1, 1).data;
    const img = new Image(); img.src = `/images/${id}_files/${M}/0_0.jpeg`; await img.decode();
    const c2 = document.createElement('canvas'); c2.width = 64; c2.height = 64;
    const ctx = c2.getContext('2d')!; ctx.drawImage(img, 0, 0);
    // the 3×3 around it: the screen pixel may sit half a pixel off after the canvas' rounding
    const near = ctx.getImageData(31, 31, 3, 3).data, want: number[][] = [];
    for (let i = 0; i < 9; i++) want.push([near[4 * i], near[4 * i + 1], near[4 * i + 2]]);
    const pre = new Image(); pre.src = `/images/${id}_files/${M}/0_0.jpeg?preview=lanczos`; await pre.decode();
    ctx.drawImage(pre, 0, 0);
    const lanczos = ctx.getImageData(32, 32, 1, 1).data;
    return { got: [...px].slice(0, 3), want, lanczos: [...lanczos].slice(0, 3) };
  }, { id, M });
  const dist = (a: number[], b: number[]) => Math.max(...a.map((v, i) => Math.abs(v - b[i])));
  const best = Math.min(...probe.want.map(w => dist(probe.got, w)));
  assert.ok(best <= 12, `screen ${probe.got} vs final tile around it ${JSON.stringify(probe.want)} (lanczos ${probe.lanczos})`);
  await page.screenshot({ path: join(ARTIFACTS, 'viewer-top-level.png') });

  // compare mode shows the Lanczos layer with a swipe
  await page.click('#compare');
  await page.waitForFunction(() => !!(window as any).infdit.compareLayer);
  assert.equal(await page.getAttribute('#compare', 'aria-pressed'), 'true');
  await page.screenshot({ path: join(ARTIFACTS, 'viewer-compare.png') });
  assert.deepEqual(failures, []);
  assert.ok(existsSync(join(ARTIFACTS, 'viewer-top-level.png')));
});

test('OpenSeadragon opens the IIIF URL and loads top-level tiles equal to the DZI tiles', async () => {
  const id = (await page.evaluate(() => (window as any).infdit.st.id)) as string;
  const info = await (await fetch(`${base}/iiif/${id}/info.json`)).json();
  assert.equal(info.type, 'ImageService3'); assert.equal(info.profile, 'level0');
  const p2 = await browser.newPage();
  await p2.goto(base + '/');
  const loaded = await p2.evaluate(async (url) => {
    const OSD = (window as any).OpenSeadragon;
    const div = document.createElement('div'); div.style.cssText = 'width:400px;height:300px'; document.body.append(div);
    const urls: string[] = [];
    const v = OSD({ element: div, tileSources: url, prefixUrl: 'vendor/openseadragon/images/' });
    v.addHandler('tile-loaded', (e: any) => urls.push(e.tile.getUrl ? e.tile.getUrl() : e.tile.url));
    let failed = 0; v.addHandler('tile-load-failed', () => failed++);
    await new Promise(r => v.addOnceHandler('open', r));
    v.viewport.zoomTo(v.viewport.imageToViewportZoom(1), undefined, true);
    await new Promise(r => setTimeout(r, 4000));
    return { urls, failed };
  }, `${base}/iiif/${id}/info.json`);
  await p2.close();
  assert.equal(loaded.failed, 0);
  const top = loaded.urls.filter(u => /\/0,0,64,64\/64,64\//.test(u) || /\/\d+,\d+,\d+,\d+\/\d+,\d*\/0\/default\.jpg$/.test(u));
  assert.ok(top.length > 0, `no IIIF tile loaded: ${loaded.urls.join(' ')}`);
  const a = Buffer.from(await (await fetch(`${base}/iiif/${id}/0,0,64,64/64,64/0/default.jpg`)).arrayBuffer());
  const b = Buffer.from(await (await fetch(`${base}/images/${id}_files/${info.width > 256 ? 9 : 8}/0_0.jpeg`)).arrayBuffer());
  // the DZI tile has the 1-px overlap on its interior edges; the IIIF tile is it less that, JPEG-encoded again
  const da = await sharp(a).raw().toBuffer({ resolveWithObject: true });
  const db = await sharp(b).extract({ left: 0, top: 0, width: da.info.width, height: da.info.height }).raw().toBuffer();
  let sum = 0;
  for (let i = 0; i < db.length; i++) sum += Math.abs(da.data[i] - db[i]);
  assert.equal(da.info.width, 64);
  assert.ok(sum / db.length < 2, `IIIF tile differs from the DZI tile's pixels by ${(sum / db.length).toFixed(2)} levels on average`);
});

test('the page opens at once while the released model generates the demo', async () => {
  // `npm start`'s model and demo photo, in a server of its own: the model runs in its thread, so
  // the page, its scripts and the gallery arrive while the cores generate
  const dataDir = mkdtempSync(join(tmpdir(), 'infdit-demo-'));
  const demo = await ImageService.open(loadConfig({ dataDir, backgroundFill: true, demo: true }));
  const srv = createApp(demo).listen(0, '127.0.0.1');
  await new Promise(r => srv.once('listening', r));
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}/`;
  // what the server controls: how long each of the page's requests took to be answered, and the
  // page load, measured against the same page from this server while idle (no absolute limit:
  // a slower machine is slower at both)
  const load = async () => {
    const p = await browser.newPage(), answered: [string, number][] = [];
    p.on('requestfinished', r => answered.push([r.url().replace(url, '/'), r.timing().responseEnd]));
    const t0 = performance.now();
    await p.goto(url, { waitUntil: 'load' });
    return { p, answered, loadMs: performance.now() - t0 };
  };
  try {
    const idle = await load();
    await idle.p.close();
    const idleMax = Math.max(...idle.answered.map(([, ms]) => ms));
    const meta = await demo.add(readFileSync(join(ROOT, 'viewer/demo.jpg')), 'demo.jpg', { demo: true });
    demo.fillAll();
    while ((await demo.status(meta.id)).engine.calls < 2) await new Promise(r => setTimeout(r, 50));
    const { p, answered, loadMs } = await load();
    await p.waitForFunction(() => document.querySelectorAll('#gallery li').length > 0, null, { timeout: 30000 });
    const st = await demo.status(meta.id);
    assert.ok(st.percent < 100, 'the demo finished before the page was checked: the test proves nothing');
    for (const want of ['/', '/style.css', '/app.js', '/vendor/openseadragon/openseadragon.min.js', '/api/images'])
      assert.ok(answered.some(([u]) => u === want), `the page did not load ${want}`);
    // a request that waited for the model (release 1) waited for whole calls, one after another:
    // seconds. Allowed: 10× the idle answer plus three model calls (the OS shares two cores between the
    // model's threads, the server and the browser; measured here: 532 ms against 147 idle, 133-ms calls;
    // in twelve runs of one session the slowest reached 78% of the old bound, 6× plus two, and once passed it)
    const callMs = st.engine.modelMs / st.engine.calls, limit = 10 * idleMax + 3 * callMs;
    console.log(`# page while generating: slowest answer ${Math.max(...answered.map(([, ms]) => ms)).toFixed(0)} ms (limit ${limit.toFixed(0)}; base previews + the base's time), load ${loadMs.toFixed(0)} ms; idle: ${idleMax.toFixed(0)} ms, ${idle.loadMs.toFixed(0)} ms; model call ${callMs.toFixed(0)} ms`);
    // A generated level's preview is the base super-resolver's pixels (since 2026-12-07): its windows run in
    // the model thread, so such a request may also wait for the base work done so far (st.engine.base.ms,
    // every window's time, an upper bound on what it waited for); every other request is held to `limit`.
    const baseMs = (await demo.status(meta.id)).engine.base.ms;   // read after the answers it bounds
    const basePreview = (u: string) => st.preview === 'base' && /_files\/\d+\/\d+_\d+\.\w+\?preview=1/.test(u);
    const slow = answered.filter(([u, ms]) => ms > limit + (basePreview(u) ? baseMs : 0));
    assert.deepEqual(slow, [], `requests answered after more than ${limit.toFixed(0)} ms (idle: ${idleMax.toFixed(0)} ms, a model call ${callMs.toFixed(0)} ms; a base preview `
      + `${baseMs} ms more) while the demo generated`);
    // 4× the idle load plus six calls: 4.6 s against an old bound of 5.6 s was seen; release 1 took 18 s. The
    // load event also waits for the page's first tiles, base previews among them: the base's time as above
    // (a fresh clone's run: 3,739 ms against 3,678 without it, its slowest answer a 2,192-ms base preview)
    const loadLimit = 4 * idle.loadMs + 6 * callMs + baseMs;
    assert.ok(loadMs < loadLimit, `page load took ${loadMs.toFixed(0)} ms while the demo generated (limit ${loadLimit.toFixed(0)}: `
      + `${idle.loadMs.toFixed(0)} ms idle, the base's ${baseMs} ms; release 1: 18 s and more)`);
    await p.close();
  } finally {
    srv.close();
    await demo.close();
  }
});

test('the block map stays readable and cheap at 200,000 blocks', async () => {
  // fixture model: 8 px LR blocks, so a 4000×3200 upload is 500 × 400 = 200,000 blocks
  const W = 4000, H = 3200;
  const png = await sharp({ create: { width: W, height: H, channels: 3, background: { r: 120, g: 90, b: 60 } } }).png().toBuffer();
  const meta = await service.add(png, 'big.png');
  const L = Math.ceil(Math.log2(4 * Math.max(W, H)));
  await fetch(`${base}/images/${meta.id}_files/${L}/3_2.jpeg`);              // some blocks done
  const p = await browser.newPage(), watch = watchPage(p, base);
  // the page's script and its first answers are what this needs, not the 'load' event (which also
  // waits for every tile image OpenSeadragon started): a CI run timed out there once, unexplained
  await watch.explained(p.goto(`${base}/#${meta.id}`, { waitUntil: 'domcontentloaded' }));
  await watch.explained(p.waitForFunction((id) => (window as any).infdit?.st?.id === id && (window as any).infdit.doneCount > 0, meta.id, { timeout: 60000 }));
  watch.stop();
  const r = await p.evaluate(() => {
    // each cost as the fastest of seven runs: the page's own work (OpenSeadragon, the events of the
    // fill) lands in some runs, and a mean of five once read 4× the yardstick. (Two plain loops: a
    // named helper in here would carry the test compiler's __name, which the page does not have.)
    const s = (window as any).infdit;
    let ms = Infinity, refMs = Infinity;
    for (let k = 0; k < 7; k++) { const t = performance.now(); s.renderProgress(); ms = Math.min(ms, performance.now() - t); }
    // the yardstick, on this machine in this page: the least a picture of every block costs (one
    // pixel a block, written once and drawn once); a fillRect per block was ~100× that
    const ref = document.createElement('canvas'); ref.width = s.st.blocks.cols; ref.height = s.st.blocks.rows;
    const ctx = ref.getContext('2d')!;
    for (let k = 0; k < 7; k++) {
      const t = performance.now(), img = ctx.createImageData(ref.width, ref.height), px = img.data;
      for (let i = 0; i < s.done.length; i++) { px[4 * i] = 24 + s.done[i]; px[4 * i + 3] = 255; }
      ctx.putImageData(img, 0, 0);
      refMs = Math.min(refMs, performance.now() - t);
    }
    const cv = document.querySelector('#blocks') as HTMLCanvasElement;
    return { ms, refMs, w: cv.width, h: cv.height, label: cv.getAttribute('aria-label'), total: s.st.blocks.total, done: s.doneCount };
  });
  console.log(`# redraw at 200,000 blocks: ${r.ms.toFixed(1)} ms, one pass over them ${r.refMs.toFixed(1)} ms`);
  await p.close();
  assert.equal(r.total, 200_000);
  assert.ok(r.w <= 160 && r.h <= 120 && r.w > 100, `block map ${r.w}×${r.h}`);
  assert.equal(r.label, `Generated blocks: ${r.done} of 200000`);
  // the bound is what matters: a fillRect per block was ~100× the yardstick; the page's own work (the fixture's
  // fill) lands in all seven runs at times (a fresh clone's CI read 10.6×, 5.3 ms against 0.5; here 4-5×)
  assert.ok(r.ms < 30 * r.refMs, `one progress redraw took ${r.ms.toFixed(1)} ms at 200,000 blocks, ${(r.ms / r.refMs).toFixed(1)}× one pass over them (${r.refMs.toFixed(1)} ms)`);
});

test('the page fits the window from 1280×720 up: the viewer and the block map in view, nothing moves it when the view line fills', async () => {
  const p = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  try {
    await p.goto(base + '/');
    await p.waitForFunction(() => !!(window as any).infdit, null, { timeout: 20000 });
    for (const [w, h] of [[1280, 720], [1600, 1000], [1920, 1080]]) {
      await p.setViewportSize({ width: w, height: h });
      // (no named helper in the page: the test compiler's __name is not there)
      const box = await p.evaluate(() => {
        const o = document.querySelector('#osd')!.getBoundingClientRect(), c = document.querySelector('#blocks-caption')!.getBoundingClientRect();
        return { osdTop: o.top, osdBottom: o.bottom, osdHeight: o.height, caption: c.bottom, scroll: document.scrollingElement!.scrollHeight, inner: innerHeight };
      });
      assert.ok(box.osdBottom <= box.inner && box.caption <= box.inner && box.scroll <= box.inner,
        `at ${w}×${h} the page is taller than the window: ${JSON.stringify(box)}`);
      assert.ok(box.osdHeight >= 0.5 * h, `at ${w}×${h} the viewer is only ${box.osdHeight} px high`);
      // the view's status line appearing later does not push the viewer down
      const before = box.osdTop;
      await p.evaluate(() => { document.querySelector('#view-state')!.textContent = 'In view: all 12 tiles done'; });
      assert.equal(await p.evaluate(() => document.querySelector('#osd')!.getBoundingClientRect().top), before);
      await p.evaluate(() => { document.querySelector('#view-state')!.textContent = ''; });
    }
  } finally { await p.close(); }
});
