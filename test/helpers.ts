import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const FIXTURE = join(ROOT, 'test/fixtures/tiny');

/** Reference arrays written by model/export.py --fixture. */
export function loadRef() {
  const idx = JSON.parse(readFileSync(FIXTURE + '.ref.json', 'utf8'));
  const bin = readFileSync(FIXTURE + '.ref.bin');
  const get = (k: string) => {
    const e = idx.arrays[k];
    if (!e) throw new Error(`no reference array ${k}`);
    return { shape: e.shape as number[], data: new Float32Array(bin.buffer.slice(bin.byteOffset + e.offset, bin.byteOffset + e.offset + e.length * 4)) };
  };
  return { idx, get };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>) {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
