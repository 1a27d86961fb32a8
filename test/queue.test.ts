/** Scale-out through a real redis-server and real `infdit worker` processes: the same bytes. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Queue } from 'bullmq';
import sharp from 'sharp';
import { FIXTURE, ROOT, wavePng, spawnServe, startRedis, freePort } from './helpers.js';
import { ImageService } from '../lib/tiles/service.js';
import { loadConfig } from '../config/index.js';
import { maxLevel } from '../lib/tiles/pyramid.js';
import { QUEUE_NAME, redisConnection } from '../lib/queue/protocol.js';

const run = promisify(execFile);
const CLI = join(ROOT, 'bin/infdit.js');
const tmp = (p: string) => mkdtempSync(join(tmpdir(), p));
const MODEL = ['--model', FIXTURE + '.json', '--tile-size', '64'];
/** A worker takes only the model's settings (the tile size is the server's or the render's). */
const WORKER_MODEL = ['--model', FIXTURE + '.json'];

let redis: Awaited<ReturnType<typeof startRedis>>, url = '';
before(async () => { redis = await startRedis(); url = redis.url; });
after(() => redis.stop());

/** Start `infdit worker`; resolves once it waits for jobs. Its log (jobs done) in `log`. */
function startWorker(extra: string[] = []) {
  const proc = spawn(process.execPath, [CLI, 'worker', '--queue', url, '--threads', '1', '--queue-lock-ms', '2000', ...WORKER_MODEL, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const w = { proc, log: '' };
  return new Promise<typeof w>((resolve, reject) => {
    proc.stdout!.on('data', d => { w.log += d; if (/waiting for region jobs/.test(w.log)) resolve(w); });
    proc.stderr!.on('data', d => { w.log += d; });
    proc.on('exit', c => reject(new Error(`worker exited ${c}: ${w.log}`)));
  });
}
/** Polls the jobs a queue holds not yet done until `ok(count)`; fails after `ms`, saying `what`. */
async function untilPending(q: Queue, ok: (n: number) => boolean, what: () => string, ms = 15_000) {
  const pending = async () => Object.values(await q.getJobCounts('wait', 'prioritized', 'delayed', 'active')).reduce((a, b) => a + b, 0);
  for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise(r => setTimeout(r, 100))) { const n = await pending(); if (ok(n)) return n; }
  assert.fail(`${what()}: ${await pending()} jobs pending after ${ms / 1000} s`);
}
const jobsDone = (w: { log: string }) => (w.log.match(/^infdit worker: job \S+: stage/gm) ?? []).length;
const ids = (w: { log: string }, what: RegExp) => new Set([...w.log.matchAll(what)].map(m => m[1]));

function tree(dir: string) {
  const out = new Map<string, Buffer>();
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true } as any) as any[]) {
    const p = join(e.parentPath ?? e.path, e.name);
    if (e.isFile() && !p.includes('.infdit-cache')) out.set(relative(dir, p), readFileSync(p));
  }
  return out;
}
function assertSameTree(a: string, b: string) {
  const ta = tree(a), tb = tree(b);
  assert.deepEqual([...ta.keys()].sort(), [...tb.keys()].sort());
  for (const [k, v] of ta) assert.ok(v.equals(tb.get(k)!), `${k} differs`);
  return ta.size;
}

let input = '', localOut = '';
async function localRender() {
  if (localOut) return localOut;
  const dir = tmp('infdit-qin-');
  input = join(dir, 'photo.png');
  writeFileSync(input, await wavePng(96, 72));
  localOut = join(dir, 'local');
  await run(process.execPath, [CLI, 'render', input, '--out', localOut, '--threads', '1', ...MODEL]);
  return localOut;
}

test('a queued render on 2 workers equals the single-process render byte for byte', { timeout: 120_000 }, async () => {
  const local = await localRender();
  const ws = await Promise.all([startWorker(), startWorker()]);
  try {
    const out = tmp('infdit-qout-');
    const { stdout } = await run(process.execPath, [CLI, 'render', input, '--out', out, '--queue', url, '--region-blocks', '2', ...MODEL]);
    assert.match(stdout, /queue: \d+ region jobs/);
    const n = assertSameTree(out, local);
    assert.ok(n > 20, `${n} files compared`);
    assert.ok(jobsDone(ws[0]) > 0 && jobsDone(ws[1]) > 0, `both workers took jobs (${jobsDone(ws[0])}, ${jobsDone(ws[1])})`);
  } finally { for (const w of ws) w.proc.kill('SIGKILL'); }
});

test('a worker killed (SIGKILL) part-way: its job goes to another worker, same bytes', { timeout: 180_000 }, async () => {
  const local = await localRender();
  const a = await startWorker(['--batch', '1']);
  const out = tmp('infdit-qkill-');
  const render = run(process.execPath, [CLI, 'render', input, '--out', out, '--queue', url, '--region-blocks', '3', ...MODEL]);
  let b: Awaited<ReturnType<typeof startWorker>> | undefined;
  try {
    // killed inside a job (started, not finished): its lock is left to expire
    const unfinished = () => [...ids(a, /job (\S+) started/g)].filter(id => !ids(a, /job (\S+): stage/g).has(id));
    while (jobsDone(a) < 3 || unfinished().length === 0) await new Promise(r => setTimeout(r, 5));
    a.proc.kill('SIGKILL');
    const doneByA = jobsDone(a), cut = unfinished();
    b = await startWorker(['--batch', '1']);
    const { stdout } = await render;
    assert.match(stdout, /wrote .*photo\.dzi/);
    assertSameTree(out, local);
    assert.ok(jobsDone(b) > 0, 'the second worker finished the render');
    for (const id of cut) assert.ok(ids(b, /job (\S+): stage/g).has(id), `job ${id}, cut short by the kill, was done by the other worker`);
    assert.ok(doneByA < 20, 'the first worker was killed before the end');
  } finally { a.proc.kill('SIGKILL'); b?.proc.kill('SIGKILL'); }
});

test('render --queue killed (SIGKILL) and run again: stored regions are kept, same bytes', { timeout: 180_000 }, async () => {
  const local = await localRender();
  const w = await startWorker(['--batch', '1']);
  const out = tmp('infdit-qresume-');
  const args = [CLI, 'render', input, '--out', out, '--queue', url, '--region-blocks', '2', ...MODEL];
  try {
    const first = spawn(process.execPath, args, { stdio: 'ignore' });
    while (jobsDone(w) < 4) await new Promise(r => setTimeout(r, 10));
    first.kill('SIGKILL');
    await new Promise(r => first.on('exit', r));
    const before = jobsDone(w);
    const { stdout } = await run(process.execPath, args);
    assertSameTree(out, local);
    const cells = Math.ceil(9 / 2) * Math.ceil(12 / 2);   // wavePng(96, 72) at 4×: 9×12 blocks of 32 px, in cells of 2×2
    const submitted = Number(/queue: (\d+) region jobs/.exec(stdout)![1]);
    assert.ok(submitted < cells, `the second run submitted ${submitted} of ${cells} cells (the stored ones are skipped)`);
    // a job finished before the kill but not yet collected is collected now (same job id), not redone
    assert.ok(jobsDone(w) - before <= submitted, `the workers ran ${jobsDone(w) - before} jobs for ${submitted} submitted`);
  } finally { w.proc.kill('SIGKILL'); }
});

test('16× through the queue (stage-2 jobs carry stage-1 pixels made by stage-1 jobs) equals the local 16×', { timeout: 120_000 }, async () => {
  const dir = tmp('infdit-q16-'), small = join(dir, 'small.png');
  writeFileSync(small, await wavePng(30, 20));
  await run(process.execPath, [CLI, 'render', small, '--out', join(dir, 'local'), '--threads', '1', '--scale', '16', ...MODEL]);
  const w = await startWorker();
  try {
    await run(process.execPath, [CLI, 'render', small, '--out', join(dir, 'queued'), '--queue', url, '--region-blocks', '4', '--scale', '16', ...MODEL]);
    assert.ok(assertSameTree(join(dir, 'queued'), join(dir, 'local')) > 10);
    assert.match(w.log, /job \S+: stage 1 /);
    assert.match(w.log, /job \S+: stage 2 /);
  } finally { w.proc.kill('SIGKILL'); }
});

test('a model over the base through the queue at 16×: workers compute the base from their crops (base windows included); same bytes as local', { timeout: 120_000 }, async () => {
  const dir = tmp('infdit-qbase-'), small = join(dir, 'small.png');
  const BASE_MODEL = [...MODEL, '--model', FIXTURE + '-base.json'];
  writeFileSync(small, await wavePng(70, 44));
  await run(process.execPath, [CLI, 'render', small, '--out', join(dir, 'local'), '--threads', '1', '--scale', '16', ...BASE_MODEL]);
  const w = await startWorker(['--model', FIXTURE + '-base.json']);
  try {
    // regions of 3 blocks: the base's 32-px tiles and 16-px halo reach past the blocks' own cone
    await run(process.execPath, [CLI, 'render', small, '--out', join(dir, 'queued'), '--queue', url, '--region-blocks', '3', '--scale', '16', ...BASE_MODEL]);
    assert.ok(assertSameTree(join(dir, 'queued'), join(dir, 'local')) > 10);
    assert.doesNotMatch(w.log, /outside the job's crop/);
  } finally { w.proc.kill('SIGKILL'); }
});

/** A JPEG (q60) of a w×h wave rendered at 16× locally and through the queue with this fixture model: the same bytes,
 *  stage-1 jobs told jpegLevel(60), stage-2 jobs 0 (their LR is the model's output). Returns the JPEG's path. */
async function jpegThroughQueue(dir: string, fixture: string, w: number, h: number, regionBlocks: number) {
  const jpg = join(dir, 'small.jpg'), model = [...MODEL, '--model', fixture];
  writeFileSync(jpg, await sharp(await wavePng(w, h)).jpeg({ quality: 60 }).toBuffer());
  await run(process.execPath, [CLI, 'render', jpg, '--out', join(dir, 'local'), '--threads', '1', '--scale', '16', ...model]);
  const wk = await startWorker(['--model', fixture]);
  try {
    await run(process.execPath, [CLI, 'render', jpg, '--out', join(dir, 'queued'), '--queue', url, '--region-blocks', String(regionBlocks), '--scale', '16', ...model]);
    assert.ok(assertSameTree(join(dir, 'queued'), join(dir, 'local')) > 10);
    const told = (stage: number) => [...ids(wk, new RegExp(`: stage ${stage} .*, jq (\\S+)$`, 'gm'))];
    assert.deepEqual(told(1), ['0.4'], 'stage-1 jobs carry jpegLevel(60)');
    assert.deepEqual(told(2), ['0'], 'stage-2 jobs carry 0: their LR is the model\'s output');
  } finally { wk.proc.kill('SIGKILL'); }
  return jpg;
}

test('the JPEG condition through the queue: stage-1 jobs carry the upload\'s quality, stage 2 none; same bytes as local', { timeout: 120_000 }, async () => {
  const dir = tmp('infdit-qjpeg-'), png = join(dir, 'png/small.png');   // the same output names as the JPEG's
  const jpg = await jpegThroughQueue(dir, FIXTURE + '-jpeg.json', 30, 20, 4);
  mkdirSync(join(dir, 'png'));
  writeFileSync(png, await sharp(jpg).png().toBuffer());
  await run(process.execPath, [CLI, 'render', png, '--out', join(dir, 'local-png'), '--threads', '1', '--scale', '16', ...MODEL, '--model', FIXTURE + '-jpeg.json']);
  // the same pixels without the JPEG file around them: the model is told nothing, and answers otherwise
  const a = tree(join(dir, 'local')), b = tree(join(dir, 'local-png'));
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  assert.ok([...a].some(([k, v]) => k.endsWith('.jpeg') && !v.equals(b.get(k)!)), 'no tile differs between the JPEG and its pixels as PNG');
});

test('a JPEG-aware base through the queue: stage-1 jobs carry the upload\'s level for the base, stage 2 none; same bytes as local', { timeout: 120_000 }, async () => {
  await jpegThroughQueue(tmp('infdit-qbasejq-'), FIXTURE + '-base-jq.json', 40, 28, 3);
});

test('the released model\'s JPEG restorer through the queue: workers restore their own crops; same bytes as local', { timeout: 180_000 }, async () => {
  const dir = tmp('infdit-qrestore-'), jpg = join(dir, 'photo.jpg');
  const RELEASE = ['--model', join(ROOT, 'model/release/infdit-s4.json'), '--tile-size', '128'];
  // 150×100 LR: two restorer tiles across, and 4-block cells whose crops straddle the tiles' seam
  writeFileSync(jpg, await sharp(join(ROOT, 'viewer/demo.jpg')).resize(150, 100).jpeg({ quality: 50 }).toBuffer());
  await run(process.execPath, [CLI, 'render', jpg, '--out', join(dir, 'local'), '--threads', '2', ...RELEASE]);
  const w = await startWorker(RELEASE.slice(0, 2));   // a worker takes the model, not the tile size
  try {
    await run(process.execPath, [CLI, 'render', jpg, '--out', join(dir, 'queued'), '--queue', url, '--region-blocks', '4', ...RELEASE]);
    assert.ok(assertSameTree(join(dir, 'queued'), join(dir, 'local')) > 10);
    assert.deepEqual([...ids(w, /: stage 1 .*, restored at (\S+)$/gm)], ['0.5'], 'stage-1 jobs carry the restorer\'s level, jpegLevel(50)');
  } finally { w.proc.kill('SIGKILL'); }
});

test('Redis restarted empty mid-render: the render waits, submits its lost jobs again, same bytes', { timeout: 120_000 }, async () => {
  const local = await localRender();
  const own = await startRedis(), ownUrl = own.url;
  const out = tmp('infdit-qrestart-');
  const proc = spawn(process.execPath, [CLI, 'render', input, '--out', out, '--queue', ownUrl, '--region-blocks', '3', ...MODEL], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '', stderr = '';
  proc.stdout!.on('data', d => { stdout += d; }); proc.stderr!.on('data', d => { stderr += d; });
  const exited = new Promise<number | null>(r => proc.on('exit', r));
  let again: Awaited<ReturnType<typeof startRedis>> | undefined, w: Awaited<ReturnType<typeof startWorker>> | undefined;
  try {
    // the jobs are on the queue, no worker yet: Redis goes away (and its data with it). Waiting for
    // the jobs, not a fixed 3 s: on a busy machine the render reached Redis after it had gone.
    const q = new Queue(QUEUE_NAME, { connection: redisConnection(ownUrl) });
    try { await untilPending(q, n => n > 0, () => `no region job on the queue: ${stderr}`, 60_000); } finally { await q.close(); }
    own.stop();
    await new Promise(r => setTimeout(r, 1500));
    again = await startRedis(own.port);
    const p = spawn(process.execPath, [CLI, 'worker', '--queue', ownUrl, '--threads', '1', ...WORKER_MODEL], { stdio: ['ignore', 'pipe', 'pipe'] });
    w = { proc: p, log: '' };
    p.stdout!.on('data', d => { w!.log += d; });
    assert.equal(await exited, 0, stderr);
    assert.match(stdout, /wrote .*photo\.dzi/);
    assertSameTree(out, local);
    assert.ok(jobsDone(w) > 0);
  } finally { proc.kill('SIGKILL'); w?.proc.kill('SIGKILL'); again?.stop(); }
});

test('serve --queue: a tile made by a worker equals the local tile', { timeout: 120_000 }, async () => {
  const png = await wavePng(60, 44);
  const w = await startWorker();
  const { proc, base } = await spawnServe(['--data-dir', tmp('infdit-qserve-'), '--no-demo', '--queue', url, '--tile-wait-ms', '60000', ...MODEL]);
  const local = await ImageService.open(loadConfig({ model: FIXTURE + '.json', tileSize: 64, dataDir: tmp('infdit-qlocal-'), backgroundFill: false, demo: false, threads: 1 }));
  try {
    const fd = new FormData();
    fd.append('image', new Blob([png]), 'q.png');
    const { id, width, height } = await (await fetch(`${base}/api/images`, { method: 'POST', body: fd })).json() as any;
    const L = maxLevel(width, height);
    const res = await fetch(`${base}/images/${id}_files/${L}/2_1.jpeg`);
    assert.equal(res.headers.get('x-infdit-tile'), 'final');
    const remoteTile = Buffer.from(await res.arrayBuffer());
    await local.add(png, 'q.png');
    assert.ok(remoteTile.equals((await local.tile(id, L, 2, 1)).bytes));
    assert.ok(jobsDone(w) > 0);
  } finally { proc.kill('SIGKILL'); w.proc.kill('SIGKILL'); await local.close(); }
});

test('serve --queue: a viewer that goes away before any worker takes its tile withdraws the job; asked again, it is made', { timeout: 120_000 }, async () => {
  const png = await wavePng(60, 44);
  const q = new Queue(QUEUE_NAME, { connection: redisConnection(url) });
  // no worker yet: the tile's job waits on the queue
  const { proc, base } = await spawnServe(['--data-dir', tmp('infdit-qcancel-'), '--no-demo', '--no-background-fill', '--queue', url, '--tile-wait-ms', '60000', ...MODEL]);
  let w: Awaited<ReturnType<typeof startWorker>> | undefined;
  try {
    assert.equal(await untilPending(q, () => true, () => ''), 0);   // nothing left by earlier tests
    const fd = new FormData();
    fd.append('image', new Blob([png]), 'c.png');
    const { id, width, height } = await (await fetch(`${base}/api/images`, { method: 'POST', body: fd })).json() as any;
    const L = maxLevel(width, height), url1 = `${base}/images/${id}_files/${L}/2_1.jpeg`;
    const ac = new AbortController();
    const gone = fetch(url1, { signal: ac.signal }).catch(e => e);
    const queued = await untilPending(q, n => n > 0, () => 'the tile\'s job never reached the queue');
    ac.abort();
    assert.equal((await gone).name, 'AbortError');
    await untilPending(q, n => n === 0, () => `${queued} job(s) queued for a tile no one wants any more, not withdrawn`);
    // the same tile asked for again: a fresh job, made by the worker started now
    w = await startWorker();
    const res = await fetch(url1);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-infdit-tile'), 'final');
    assert.ok(jobsDone(w) > 0);
  } finally { proc.kill('SIGKILL'); w?.proc.kill('SIGKILL'); await q.close(); }
});

test('serve --queue: a viewer\'s view becomes jobs at the viewer\'s priority; looking away withdraws them; stated again, workers make it', { timeout: 120_000 }, async () => {
  const png = await wavePng(60, 44);
  const q = new Queue(QUEUE_NAME, { connection: redisConnection(url) });
  const { proc, base } = await spawnServe(['--data-dir', tmp('infdit-qview-'), '--no-demo', '--no-background-fill', '--queue', url, ...MODEL]);
  let w: Awaited<ReturnType<typeof startWorker>> | undefined;
  try {
    assert.equal(await untilPending(q, () => true, () => ''), 0);
    const fd = new FormData();
    fd.append('image', new Blob([png]), 'v.png');
    const { id, width, height } = await (await fetch(`${base}/api/images`, { method: 'POST', body: fd })).json() as any;
    const view = { viewer: 'queue-view-1', level: maxLevel(width, height), x: width - 130, y: height - 100, width: 130, height: 100 };
    const state = (body: object) => fetch(`${base}/api/images/${id}/view`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) }).then(r => r.json()) as Promise<any>;
    const { tiles } = await state(view);
    assert.ok(tiles.length >= 2);
    const queued = await untilPending(q, n => n > 0, () => 'the view\'s jobs never reached the queue');
    await state({ viewer: view.viewer });
    await untilPending(q, n => n === 0, () => `${queued} job(s) queued for a view no one has any more, not withdrawn`);
    w = await startWorker();
    await state(view);
    const final = async () => (await Promise.all(tiles.map(([L, c, r]: number[]) => fetch(`${base}/images/${id}_files/${L}/${c}_${r}.jpeg?preview=1`)
      .then(res => res.headers.get('x-infdit-tile'))))).every(t => t === 'final');
    for (const t0 = Date.now(); !(await final()); await new Promise(r => setTimeout(r, 100)))
      assert.ok(Date.now() - t0 < 60_000, 'the view\'s tiles were not made by the worker');
    assert.ok(jobsDone(w) > 0);
  } finally { proc.kill('SIGKILL'); w?.proc.kill('SIGKILL'); await q.close(); }
});

test('a job for another model, a malformed job, an unreachable Redis: clear errors', { timeout: 60_000 }, async () => {
  const local = await localRender();
  const w = await startWorker(['--model', FIXTURE + '-global.json']);
  try {
    const out = tmp('infdit-qwrong-');
    await assert.rejects(run(process.execPath, [CLI, 'render', input, '--out', out, '--queue', url, ...MODEL]),
      (e: any) => /this worker has model tiny-global.*the job wants tiny-fixture.*--model/s.test(e.stderr));
    const q = new Queue(QUEUE_NAME, { connection: redisConnection(url) });
    const job = await q.add('region', { protocol: 1, stage: 'one' }, { jobId: 'malformed' });
    for (let i = 0; i < 100 && !(await job.isFailed()); i++) await new Promise(r => setTimeout(r, 50));
    assert.match((await q.getJob('malformed'))!.failedReason, /invalid job payload/);
    await q.close();
    assert.ok(local);
  } finally { w.proc.kill('SIGKILL'); }
  const port = await freePort();
  await assert.rejects(run(process.execPath, [CLI, 'render', input, '--out', tmp('infdit-qnone-'), '--queue', `redis://127.0.0.1:${port}`, ...MODEL]),
    (e: any) => /cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+ .*start redis-server/.test(e.stderr));
  await assert.rejects(run(process.execPath, [CLI, 'worker', '--queue', 'http://x', ...WORKER_MODEL]), (e: any) => /must be redis:\/\/HOST:PORT/.test(e.stderr));
  // a password in the URL is never printed
  await assert.rejects(run(process.execPath, [CLI, 'worker', '--queue', `redis://:hunter2@127.0.0.1:${port}`, ...WORKER_MODEL]),
    (e: any) => /cannot reach Redis at redis:\/\/:\*\*\*@127\.0\.0\.1/.test(e.stderr) && !e.stderr.includes('hunter2'));
});
