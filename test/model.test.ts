/** A model is checked against its manifest at load; a mismatch is refused naming the field. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Model } from '../lib/model.js';
import { FIXTURE } from './helpers.js';

function variant(edit: (m: any) => void) {
  const d = mkdtempSync(join(tmpdir(), 'model-'));
  copyFileSync(FIXTURE + '.onnx', join(d, 'm.onnx'));
  const m = JSON.parse(readFileSync(FIXTURE + '.json', 'utf8'));
  edit(m);
  writeFileSync(join(d, 'm.json'), JSON.stringify(m));
  return join(d, 'm.onnx');
}

test('the fixture loads and its manifest matches its graph', async () => {
  const m = await Model.load(FIXTURE + '.onnx');
  assert.equal(m.manifest.block, 32);
  assert.equal(m.kvFloats, 2 * 2 * 2 * 16 * 16);
});

test('mismatches are refused with the field named', async () => {
  const cases: [(m: any) => void, RegExp][] = [
    [m => { m.layers = 3; }, /inputs\.kv_nb\.shape|kv_nb/],
    [m => { m.border_rule = 'self'; }, /"border_rule" must be "mask"/],
    [m => { m.format = 'other'; }, /"format"/],
    [m => { m.kv.dtype = 'float16'; }, /kv_nb|dtype/],
    [m => { m.inputs[0].name = 'noisy'; }, /"inputs" names/],
    [m => { m.inputs[1].shape = ['b', 3, 64, 64]; }, /"inputs\[1\]\.shape"/],
    [m => { m.sampling.default_preset = 'nope'; }, /sampling\.default_preset/],
    [m => { m.sampling.presets.detail = { method: 'ddim', steps: 2 }; }, /sampling\.presets\.detail/],
    [m => { m.lr_block = 7; }, /"lr_block"/],
    [m => { delete m.scale; }, /"scale" must be a number/],
  ];
  for (const [edit, re] of cases) await assert.rejects(Model.load(variant(edit)), re);
  await assert.rejects(Model.load('/nonexistent/model.onnx'), /not found: --model must name an exported model/);
});
