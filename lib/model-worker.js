// The model's thread (lib/model.ts starts it): one onnxruntime session per graph; a message is
// one call — graph index, batch size, input arrays — and the answer moves the outputs and the
// input buffers back by transfer. Plain JavaScript: a worker does not inherit the tsx loader.
import { parentPort, workerData } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';

const { files, options, graphs } = workerData;
const sessions = [];
try {
  for (const f of files) sessions.push(await ort.InferenceSession.create(readFileSync(f), options));
  parentPort.postMessage({ ready: true });
} catch (e) {
  parentPort.postMessage({ error: String(e?.message ?? e) });
  process.exit(1);
}

parentPort.on('message', async ({ id, gi, b, feeds }) => {
  try {
    const t = {};
    for (const s of graphs[gi].inputs) t[s.name] = new ort.Tensor(s.dtype, feeds[s.name], s.shape.map(v => (v === 'b' ? b : v)));
    const r = await sessions[gi].run(t);
    const out = {}, transfer = new Set();
    for (const o of graphs[gi].outputs) { out[o.name] = r[o.name].data; transfer.add(out[o.name].buffer); }
    for (const a of Object.values(feeds)) transfer.add(a.buffer);
    parentPort.postMessage({ id, out, feeds }, [...transfer]);
  } catch (e) {
    parentPort.postMessage({ id, error: `graph ${gi} (batch ${b}): ${e?.message ?? e}` });
  }
});
