/**
 * The view drives generation, in a real browser (Debian chromium via playwright-core) against a
 * real server with the released model and default settings: a 2048×1536 photo (8192×6144 at 4×,
 * 12,288 blocks), the viewer at its deepest zoom at the lower right, where the background fill
 * (raster order) arrives last. Every assertion is on the server's or the page's state; the waits
 * are for states, with limits only as a guard against a hang.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { chromium, type Browser, type Page } from 'playwright-core';
import sharp from 'sharp';
import { createApp } from '../../server/app.js';
import { ImageService } from '../../lib/tiles/service.js';
import { loadConfig } from '../../config/index.js';
import { ROOT } from '../helpers.js';
import { watchPage } from './watch.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/lib/chromium/chromium';
const ARTIFACTS = join(ROOT, 'test/artifacts');
const GUARD = 240_000;   // a hang, not a speed limit: a slow machine only takes longer

let browser: Browser, photo: Buffer;
const failures: string[] = [];

before(async () => {
  photo = await sharp(readFileSync(join(ROOT, 'viewer/demo.jpg'))).resize(2048, 1536, { kernel: 'lanczos3' }).jpeg({ quality: 92 }).toBuffer();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'] });
  mkdirSync(ARTIFACTS, { recursive: true });
});
after(async () => { await browser?.close(); });

async function serve(settings: Record<string, unknown>) {
  const service = await ImageService.open(loadConfig({ dataDir: mkdtempSync(join(tmpdir(), 'infdit-view-')), demo: false, ...settings }));
  const server: Server = createApp(service).listen(0, '127.0.0.1');
  await new Promise(r => server.once('listening', r));
  const meta = await service.add(photo, 'big.jpg');
  return { service, meta, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() { server.close(); await service.close(); } };
}

async function openPage(base: string, id: string) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  page.on('pageerror', e => failures.push(`pageerror: ${e.message}`));
  page.on('response', r => { if (r.status() >= 400) failures.push(`${r.status()} ${r.url()}`); });
  const watch = watchPage(page, base);
  await watch.explained(page.goto(`${base}/#${id}`));
  await watch.explained(page.waitForFunction((id) => (window as any).infdit?.st?.id === id && (window as any).infdit.layers.length > 0, id, { timeout: 60000 }));
  watch.stop();
  return page;
}

/** Deepest zoom, the view's centre at image point (fx, fy) of the image (fractions), clamped inside. */
async function lookAt(page: Page, fx: number, fy: number) {
  await page.evaluate(([fx, fy]) => {
    const v = (window as any).infdit.viewer, OSD = (window as any).OpenSeadragon, vp = v.viewport;
    vp.zoomTo(vp.getMaxZoom(), undefined, true);
    const b = vp.getBounds(), H = v.world.getItemAt(0).getBounds().height;
    const x = Math.min(Math.max(fx, b.width / 2), 1 - b.width / 2), y = Math.min(Math.max(fy * H, b.height / 2), H - b.height / 2);
    vp.panTo(new OSD.Point(x, y), true);
  }, [fx, fy]);
}

/** The view the server has for the page once it has stated the one on the screen now (an answer to
 *  an earlier statement, e.g. the page's first, can arrive after the move and does not count). */
async function statedView(page: Page, views: number) {
  await page.waitForFunction((n) => { const s = (window as any).infdit; return s.views > n && s.view && s.view.key === s.viewKeyNow(); }, views, { timeout: 30000 });
  return page.evaluate(() => ({ ...(window as any).infdit.view, views: (window as any).infdit.views }));
}

const viewsSoFar = (page: Page) => page.evaluate(() => (window as any).infdit.views as number);

test('the tiles in view at the lower right become final long before the fill reaches them; looking away withdraws them', async () => {
  const s = await serve({});   // defaults: the released model, 256-px tiles, background fill on
  try {
    const page = await openPage(s.base, s.meta.id);
    const st0 = await s.service.status(s.meta.id);
    assert.deepEqual([st0.width, st0.height, st0.blocks.total], [8192, 6144, 12288]);
    const n0 = await viewsSoFar(page);
    await lookAt(page, 1, 1);
    const view = await statedView(page, n0);
    assert.ok(view.tiles.length >= 2, `view of ${view.tiles.length} tiles`);
    assert.ok(view.tiles.every(([L]: number[]) => L === st0.maxLevel), 'the deepest zoom draws the top level');
    // the level the page states is the one OpenSeadragon draws: its preview tiles at that level
    await page.waitForFunction((M) => [...(window as any).infdit.layers[0].previews].some((k: string) => Number(k.split('/')[0]) === M), st0.maxLevel, { timeout: 30000 });
    const drawnLevels = await page.evaluate(() => [...(window as any).infdit.layers[0].previews].map((k: string) => Number(k.split('/')[0])));
    assert.equal(Math.max(...drawnLevels), st0.maxLevel, `drawn levels ${drawnLevels}`);

    // every tile in view becomes final (asked as previews only: the view alone commands the work)
    const t0 = performance.now();
    await page.waitForFunction(() => (window as any).infdit.view && document.querySelector('#view-state')!.getAttribute('data-pending') === '0'
      && (window as any).infdit.view.tiles.every(([L, x, y]: number[]) => (window as any).infdit.finalTiles.has(`${L}/${x}/${y}`)), null, { timeout: GUARD });
    const secs = (performance.now() - t0) / 1000;
    const st = await s.service.status(s.meta.id);
    for (const [L, c, r] of view.tiles) assert.ok(await s.service.tileIsFinal(s.meta.id, L, c, r), `tile ${L}/${c}_${r} in view is not final`);
    // the fill (raster order from the top) is nowhere near: most blocks are still to come, and
    // the rows just above the view are not all done
    const topRow = Math.min(...view.tiles.map(([, , r]: number[]) => r)) * (256 / 64);
    const flags = await s.service.blocks(s.meta.id);
    const { decodeRuns } = await import('../../lib/tiles/progress.js');
    const done = decodeRuns(flags.runs, flags.rows * flags.cols);
    const above = done.subarray((topRow - 1) * flags.cols, topRow * flags.cols).reduce((a, v) => a + v, 0);
    assert.ok(above < flags.cols, `the fill had reached the row above the view (${above}/${flags.cols})`);
    assert.ok(st.blocks.done < st.blocks.total / 2, `${st.blocks.done} of ${st.blocks.total} blocks done`);
    assert.match(await page.textContent('#view-state') ?? '', new RegExp(`In view: all ${view.tiles.length} tiles done`));
    assert.match(await page.textContent('#blocks-caption') ?? '', /Block map: \d+ of 12288 blocks generated/);
    await page.screenshot({ path: join(ARTIFACTS, 'view-lower-right.png') });
    console.log(`# ${view.tiles.length} tiles in view final after ${secs.toFixed(1)} s; fill at ${st.blocks.done}/${st.blocks.total} blocks; nodes by priority class ${JSON.stringify(st.engine.byClass)}`);

    // pan to a part the fill has not reached: the old view's tiles are withdrawn, the new ones made
    const n1 = await viewsSoFar(page);
    await lookAt(page, 0.5, 0.7);
    const moved = await statedView(page, n1);
    const oldKeys = new Set(view.tiles.map((t: number[]) => t.join('/')));
    const making = (await s.service.status(s.meta.id)).view.making;
    assert.ok(making.every((k: string) => !oldKeys.has(k)), `old view's tiles still being made: ${making}`);
    assert.ok(moved.tiles.some((t: number[]) => !oldKeys.has(t.join('/'))));
    // and looking away (zoomed out to the photo's own levels) brings the view's demand to zero
    // before its tiles could have been made
    const n2 = await viewsSoFar(page);
    await page.evaluate(() => (window as any).infdit.viewer.viewport.goHome(true));
    const away = await statedView(page, n2);
    assert.equal(away.tiles.length, 0);
    const v = (await s.service.status(s.meta.id)).view;
    assert.deepEqual([v.making.length, v.engine.requests, v.engine.blocks], [0, 0, 0], `demand left after looking away: ${JSON.stringify(v)}`);
    const unfinished = [];
    for (const [L, c, r] of moved.tiles) if (!(await s.service.tileIsFinal(s.meta.id, L, c, r))) unfinished.push(`${c}_${r}`);
    assert.ok(unfinished.length > 0, 'the second view finished before it was withdrawn: the test proves nothing');
    await page.close();
  } finally { await s.close(); }
  assert.deepEqual(failures, []);
});

test('with --no-background-fill the tiles in view still become final; the compare divider stays put on the screen', async () => {
  const s = await serve({ backgroundFill: false });
  try {
    const page = await openPage(s.base, s.meta.id);
    const n0 = await viewsSoFar(page);
    await lookAt(page, 0.8, 0.9);
    const view = await statedView(page, n0);
    assert.ok(view.tiles.length >= 2);
    await page.waitForFunction(() => document.querySelector('#view-state')!.getAttribute('data-pending') === '0'
      && (window as any).infdit.view.tiles.every(([L, x, y]: number[]) => (window as any).infdit.finalTiles.has(`${L}/${x}/${y}`)), null, { timeout: GUARD });
    const st = await s.service.status(s.meta.id);
    assert.equal(st.etaSeconds, null);
    assert.match(await page.textContent('#progress') ?? '', /background fill off/);
    // only the view's blocks (their cones) were made: a small part of the image
    assert.ok(st.blocks.done < st.blocks.total / 10, `${st.blocks.done} blocks done without a fill`);

    // compare: a divider with a label each side; the Lanczos layer is clipped at the divider's
    // screen position, wherever the view is
    await page.click('#compare');
    await page.waitForFunction(() => !!(window as any).infdit.compareLayer);
    assert.equal(await page.isVisible('#divider-handle'), true);
    assert.equal(await page.textContent('#divider .side.left'), 'Lanczos3');
    assert.equal(await page.textContent('#divider .side.right'), st.preview === 'base' ? 'infdit (base until final)' : 'infdit (Lanczos3 until final)');
    const clipAtScreen = () => page.evaluate(() => {
      const s = (window as any).infdit, OSD = (window as any).OpenSeadragon, c = s.compareLayer.getClip();
      const px = s.compareLayer.imageToViewerElementCoordinates(new OSD.Point(c.x + c.width, 0)).x;
      const d = document.querySelector('#divider')!.getBoundingClientRect(), o = s.viewer.container.getBoundingClientRect();
      return { clip: px, divider: d.left - o.left, width: o.width };
    });
    // drag the handle to 30% of the viewer's width
    const box = (await page.locator('#osd').boundingBox())!, hb = (await page.locator('#divider-handle').boundingBox())!;
    await page.mouse.move(hb.x + hb.width / 2, hb.y + hb.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + 0.3 * box.width, hb.y + hb.height / 2, { steps: 5 });
    await page.mouse.up();
    await page.waitForTimeout(100);
    let a = await clipAtScreen();
    assert.ok(Math.abs(a.divider - 0.3 * a.width) <= 2, `divider at ${a.divider} of ${a.width}`);
    assert.ok(Math.abs(a.clip - a.divider) <= 1.5, `clip edge at ${a.clip} px, divider at ${a.divider} px`);
    // pan: the split stays at the same screen position
    await page.evaluate(() => { const vp = (window as any).infdit.viewer.viewport; vp.panBy(new (window as any).OpenSeadragon.Point(-vp.getBounds().width * 0.2, 0), true); });
    await page.waitForTimeout(200);
    a = await clipAtScreen();
    assert.ok(Math.abs(a.clip - a.divider) <= 1.5, `after panning: clip edge at ${a.clip} px, divider at ${a.divider} px`);
    // the keyboard moves it too
    await page.focus('#divider-handle');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.getAttribute('#divider-handle', 'aria-valuenow'), '32');
    await page.screenshot({ path: join(ARTIFACTS, 'view-compare.png') });
    await page.close();
  } finally { await s.close(); }
  assert.deepEqual(failures, []);
});
