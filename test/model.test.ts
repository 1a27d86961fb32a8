/** A model is checked against its manifest at load; a mismatch is refused naming the field. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, basename } from 'node:path';
import { Model } from '../lib/engine/model.js';
import { FIXTURE } from './helpers.js';

function variant(edit: (m: any) => void) {
  const d = mkdtempSync(join(tmpdir(), 'model-'));
  for (const f of readdirSync(dirname(FIXTURE))) if (f.startsWith(basename(FIXTURE) + '.') && f.endsWith('.onnx')) copyFileSync(join(dirname(FIXTURE), f), join(d, f));
  const m = JSON.parse(readFileSync(FIXTURE + '.json', 'utf8'));
  edit(m);
  writeFileSync(join(d, 'tiny.json'), JSON.stringify(m));
  return join(d, 'tiny.json');
}

test('the fixture loads and its manifest matches its graph', async () => {
  const m = await Model.load(FIXTURE + '.json');
  assert.equal(m.manifest.block, 32);
  assert.equal(m.layers, 3);
  assert.equal(m.kvFloats, 2 * 2 * 16 * 16);          // one layer: k|v × heads × tokens × head_dim
  await m.close();
});

test('a queue master loads the manifest and identity only: the same id, and running it is refused', async () => {
  const full = await Model.load(FIXTURE + '.json');
  const bare = await Model.load(FIXTURE + '.json', { graphs: false });
  try {
    assert.equal(bare.id, full.id);                    // the id keys the workers' jobs and every cache
    assert.deepEqual(bare.manifest, full.manifest);
    await assert.rejects(bare.run(0, 1, {}), /without its graphs \(a --queue master/);
  } finally { await full.close(); await bare.close(); }
});

test('mismatches are refused with the field named', async () => {
  const cases: [(m: any) => void, RegExp][] = [
    [m => { m.layers = 4; }, /"graphs" must list \[input,layer0,layer1,layer2,layer3\]/],
    [m => { m.graphs.pop(); }, /"graphs" must list/],
    [m => { m.graphs[2].file = 'missing.onnx'; }, /missing\.onnx .*not found/],
    [m => { m.heads = 4; }, /graphs\[0\] \(input\)\.outputs|this engine reads/],
    [m => { m.format = 'infdit-blockstep'; }, /whole-evaluation export.*re-export/],
    [m => { m.border_rule = 'self'; }, /"border_rule" must be "mask"/],
    [m => { m.format = 'other'; }, /"format"/],
    [m => { m.kv.dtype = 'float16'; }, /kv|dtype/],
    [m => { m.graphs[0].inputs[0].name = 'noisy'; }, /graphs\[0\] \(input\)\.inputs/],
    [m => { m.graphs[1].inputs[4].shape = ['b', 2, 32, 8]; }, /graphs\[1\] \(layer0\)\.inputs/],
    [m => { m.sampling.default_preset = 'nope'; }, /sampling\.default_preset/],
    [m => { m.sampling.presets.detail = { method: 'ddim', steps: 2 }; }, /sampling\.presets\.detail/],
    [m => { m.lr_block = 7; }, /"lr_block"/],
    [m => { delete m.scale; }, /"scale" must be a number/],
  ];
  for (const [edit, re] of cases) await assert.rejects(Model.load(variant(edit)), re);
  await assert.rejects(Model.load('/nonexistent/model.onnx'), /not found: --model must name an exported model/);
  // a graph that disagrees with its manifest (layer 1's file swapped for layer 0's)
  const swapped = variant(m => { m.graphs[2].file = m.graphs[1].file; });
  await assert.rejects(Model.load(swapped), /graphs\[2\] \(layer1\)\.inputs" names|has \[/);
});
