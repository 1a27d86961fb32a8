// The model's thread (lib/model.ts starts it): one onnxruntime session per graph; a message is
// one call — graph index, batch size, input arrays — and the answer moves the outputs and the
// input buffers back by transfer. Plain JavaScript: a worker does not inherit the tsx loader.
import { parentPort, workerData } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import { setPriority } from 'node:os';
import * as ort from 'onnxruntime-node';

const { files, options, graphs, nice, warm } = workerData;
const sessions = [];
try {
  // On Linux a nice value is per thread: this one's, inherited by the onnxruntime threads the
  // sessions below start, so the HTTP thread wins the cores whenever it has work (DESIGN.md §6).
  if (nice) { try { setPriority(nice); } catch { /* not permitted here: run at normal priority */ } }
  for (const f of files) sessions.push(await ort.InferenceSession.create(readFileSync(f), options));
  // what the graphs really are, for the loading thread to check against the manifest first
  const plain = (l) => (l ?? []).map(x => ({ ...x, shape: x.shape ? [...x.shape] : x.shape }));
  parentPort.postMessage({ meta: sessions.map(s => ({ inputNames: [...s.inputNames], outputNames: [...s.outputNames],
    inputMetadata: plain(s.inputMetadata), outputMetadata: plain(s.outputMetadata) })) });
  await new Promise(r => parentPort.once('message', r));
  // One call per graph at the largest batch: onnxruntime's arenas grow to their size now. Grown
  // during the first requests instead, their page faults (~0.4 M, seconds on this machine) slowed
  // the whole machine just as a newcomer's first page loaded.
  if (warm > 0) for (let gi = 0; gi < sessions.length; gi++) {
    const t = {};
    for (const s of graphs[gi].inputs) {
      const shape = s.shape.map(v => (v === 'b' ? (graphs[gi].rank > 0 ? 1 : warm) : v)), n = shape.reduce((a, v) => a * v, 1);
      const data = s.dtype === 'float16' ? new Uint16Array(n) : new Float32Array(n).fill(s.name === 'sigma' || s.name === 'present' ? 1 : 0);
      t[s.name] = new ort.Tensor(s.dtype, data, shape);
    }
    await sessions[gi].run(t);
  }
  parentPort.postMessage({ ready: true });
} catch (e) {
  parentPort.postMessage({ error: String(e?.message ?? e) });
  process.exit(1);
}

// Calls wait here, not in the port: a one-window graph (the restorer's, the base's) goes before the
// transformer's batches waiting with it. The engine keeps a batch or two queued behind the running one
// so the thread never idles; a viewer's preview, made of 15-20 base windows, waited behind them at
// every window (issue 38: 4.9-6.6 s for a screenful's previews). And a base window goes before the
// restorer tiles waiting with it: a JPEG's screenful asks all its ~40 restorer tiles at once, and each base
// window is asked only when its own 9 are done, so in arrival order no preview was answered before nearly
// every restorer tile was made (first at 2.3 s, median 3.7 s of 4.6). The order changes no output: each
// call's result depends on its inputs only.
const queue = [];
let draining = false;
parentPort.on('message', (msg) => {
  if (msg.close) {                  // sent only when no call is in flight
    (async () => { for (const s of sessions) await s.release(); process.exit(0); })();
    return;
  }
  queue.push(msg);
  if (!draining) { draining = true; setImmediate(drain); }
});

// One call, then back to the event loop (setImmediate) so the messages that came during it are
// queued before the next is chosen.
async function drain() {
  let i = 0;
  for (let j = 1; j < queue.length; j++) if (graphs[queue[j].gi].rank > graphs[queue[i].gi].rank) i = j;
  await call(queue.splice(i, 1)[0]);
  if (queue.length) setImmediate(drain); else draining = false;
}

async function call({ id, gi, b, feeds, outs }) {
  try {
    const t = {};
    for (const s of graphs[gi].inputs) t[s.name] = new ort.Tensor(s.dtype, feeds[s.name], s.shape.map(v => (v === 'b' ? b : v)));
    const t0 = performance.now();
    const r = await sessions[gi].run(t);
    const ms = performance.now() - t0;
    const out = {}, transfer = new Set();
    for (const o of graphs[gi].outputs) {
      // Into the caller's buffer, which travels back and forth: onnxruntime's own output array then
      // dies in this thread, and its memory is reused here. Sent away instead, every call's output
      // came from fresh pages, and page faults cost more than this copy (measured: bench/engine.ts).
      const dst = outs?.[o.name], src = r[o.name].data;
      if (dst && dst.length === src.length) { dst.set(src); out[o.name] = dst; } else out[o.name] = src;
      transfer.add(out[o.name].buffer);
    }
    for (const a of Object.values(feeds)) transfer.add(a.buffer);
    parentPort.postMessage({ id, out, feeds, ms }, [...transfer]);
  } catch (e) {
    parentPort.postMessage({ id, error: `graph ${gi} (batch ${b}): ${e?.message ?? e}` });
  }
}
