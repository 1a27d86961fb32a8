/**
 * The HTTP thread never runs the model (DESIGN.md §6): with the released model generating at a
 * batch whose calls take long, this process's event loop stays free and static files answer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { ImageService } from '../lib/tiles/service.js';
import { createApp } from '../server/app.js';
import { loadConfig } from '../config/index.js';
import { ROOT } from './helpers.js';

test('while the released model generates, the event loop stays free and static GETs answer at once', async () => {
  // batch 16: one model call is a layer of 16 blocks, ~0.06 s here; run in this thread, every call
  // would delay the event loop by that much
  const service = await ImageService.open(loadConfig({ dataDir: mkdtempSync(join(tmpdir(), 'infdit-resp-')), demo: false, backgroundFill: true, batch: 16 }));
  const server = createApp(service).listen(0, '127.0.0.1');
  await new Promise(r => server.once('listening', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const png = await sharp(join(ROOT, 'viewer/demo.jpg')).resize(256, 192).png().toBuffer();
    const meta = await service.add(png, 'p.png');                       // background fill starts
    const stats = () => (service as any).entries.get(meta.id).render?.last.stats;
    while (!(stats()?.calls >= 18)) await new Promise(r => setTimeout(r, 50));   // past the first calls of each graph (arena growth)
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    const c0 = stats().calls, m0 = stats().modelMs, gets: number[] = [];
    const t0 = performance.now();
    while (performance.now() - t0 < 5000) {
      const t = performance.now();
      const r = await fetch(`${base}/style.css`);
      await r.arrayBuffer();
      assert.equal(r.status, 200);
      gets.push(performance.now() - t);
      await new Promise(r => setTimeout(r, 40));
    }
    h.disable();
    const calls = stats().calls - c0, callMs = (stats().modelMs - m0) / calls;
    const p99 = h.percentile(99) / 1e6, medianGet = [...gets].sort((a, b) => a - b)[Math.floor(gets.length / 2)];
    assert.ok(calls >= 3 && callMs >= 40, `generation was not running long calls (${calls} calls of ${callMs.toFixed(0)} ms): the test proves nothing`);
    // run in this thread, each call would delay the loop by its whole length: p99 ≈ a call or more
    assert.ok(p99 < 0.6 * callMs, `event-loop delay p99 ${p99.toFixed(1)} ms against model calls of ${callMs.toFixed(0)} ms: the model blocks the HTTP thread`);
    // run in this thread, a GET would wait for the call in progress: half a call in the median
    assert.ok(medianGet < callMs / 3, `static GETs took ${medianGet.toFixed(0)} ms (median) during ${callMs.toFixed(0)} ms model calls`);
  } finally {
    server.close();
    await service.close();
  }
});
