/** The data folder under a byte budget: eviction loses nothing, a full disk is an answer, not a crash. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import request from 'supertest';
import { createApp } from '../server/app.js';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { allTiles } from '../lib/tiles/pyramid.js';
import { FIXTURE, wavePng } from './helpers.js';

const settings = { model: FIXTURE + '.json', tileSize: 64, backgroundFill: false, demo: false, threads: 1, tileWaitMs: 60000 };
const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));
function files(dir: string, re: RegExp): { path: string; bytes: number }[] {
  const out: { path: string; bytes: number }[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true } as any) as any[]) {
    const p = join(e.parentPath ?? e.path, e.name);
    if (e.isFile() && re.test(p)) out.push({ path: p, bytes: statSync(p).size });
  }
  return out;
}
const GENERATED = /(blocks\/s\d+\/\d+_\d+\.rgb|_files\/\d+\/\d+_\d+\.jpeg)$/;

test('under a tiny disk budget, eviction and re-requests give the same bytes; uploads stay', async () => {
  const png = await wavePng(40, 24);
  const ref = await ImageService.open(loadConfig({ ...settings, dataDir: tmp('infdit-ref-') }));
  const budgetMb = 0.05, small = await ImageService.open(loadConfig({ ...settings, dataDir: tmp('infdit-budget-'), diskBudgetMb: budgetMb }));
  try {
    const id = (await ref.add(png, 'w.png')).id;
    assert.equal((await small.add(png, 'w.png')).id, id);
    const tiles = [...allTiles(ref.geometry(id))];
    const want = new Map<string, Buffer>();
    for (const t of tiles) want.set(`${t.L}/${t.c}/${t.r}`, (await ref.tile(id, t.L, t.c, t.r)).bytes);
    let s = 3;
    const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
    for (let round = 0; round < 2; round++) {
      for (const t of [...tiles].sort(() => rand() - 0.5)) {
        const got = (await small.tile(id, t.L, t.c, t.r)).bytes;
        assert.ok(got.equals(want.get(`${t.L}/${t.c}/${t.r}`)!), `tile ${t.L}/${t.c}_${t.r}, round ${round}`);
        const on = files(small.cfg.dataDir, GENERATED).reduce((a, f) => a + f.bytes, 0);
        assert.ok(on <= budgetMb * 2 ** 20, `generated files hold ${on} bytes, over the budget`);
      }
    }
    assert.ok(small.budget.evictions > 0, 'the budget never evicted: the test proves nothing');
    assert.equal(files(small.cfg.dataDir, /[\/]source$/).length, 1, 'the upload was evicted');
    assert.deepEqual(files(small.cfg.dataDir, /\.tmp$/), []);
  } finally { await ref.close(); await small.close(); }
});

test('a disk that fills while serving: 507 naming the fix, no temp file left, served again once there is room (needs root for a tmpfs)', async (t) => {
  const dir = tmp('infdit-fill-');
  try { execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'pipe' }); }
  catch { t.skip('cannot mount a tmpfs here (not root)'); return; }
  const service = await ImageService.open(loadConfig({ ...settings, dataDir: join(dir, 'data') }));
  try {
    const app = createApp(service);
    const { body } = await request(app).post('/api/images').attach('image', await wavePng(40, 24), 'w.png').expect(201);
    // fill the disk: nothing generated yet, so the budget has nothing to give up
    try { for (let i = 0; ; i++) writeFileSync(join(dir, `filler${i}`), Buffer.alloc(64 * 1024)); } catch { /* ENOSPC: full */ }
    const L = service.geometry(body.id), top = Math.ceil(Math.log2(Math.max(L.width, L.height)));
    const res = await request(app).get(`/images/${body.id}_files/${top}/0_0.jpeg`);
    assert.equal(res.status, 507);
    assert.match(res.body.error, /no space left .*--disk-budget-mb/);
    assert.deepEqual(files(dir, /\.tmp$/), [], 'a temp file was left behind');
    for (const f of readdirSync(dir)) if (f.startsWith('filler')) rmSync(join(dir, f));
    await request(app).get(`/images/${body.id}_files/${top}/0_0.jpeg`).expect(200);
    await request(app).get(`/api/images/${body.id}`).expect(200);
  } finally {
    await service.close();
    execFileSync('umount', [dir]);
  }
});
