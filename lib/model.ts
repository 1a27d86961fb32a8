/**
 * The model: an ONNX block-step graph plus its JSON manifest, run with onnxruntime-node.
 * The manifest is checked against the graph at load; a mismatch is refused with an error
 * naming the field, so a model never runs with guessed shapes.
 */
import { readFileSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { cpus } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { Sampling } from './sampler.js';

export interface IOSpec { name: string; shape: (number | string)[]; dtype: string }
export interface Manifest {
  format: string; version: number; name: string;
  scale: number; block: number; patch: number; layers: number; heads: number; head_dim: number;
  tokens_per_block: number; grid: number; lr_block: number; flops_per_block_eval: number;
  kv: { dtype: 'float32' | 'float16'; bytes_per_block: number };
  inputs: IOSpec[]; outputs: IOSpec[];
  border_rule: string; target: string; sigma_data: number;
  sampling: Sampling;
  global: { enabled: boolean; input: string | null; thumb?: number | null };
  provenance: Record<string, unknown>;
}

export class ModelError extends Error {}

const need = (m: any, key: string, type: string) => {
  const v = key.split('.').reduce((o, k) => (o == null ? o : o[k]), m);
  if (typeof v !== type) throw new ModelError(`manifest field "${key}" must be a ${type}, got ${JSON.stringify(v)}`);
  return v;
};

export function validateManifest(m: any): Manifest {
  if (m?.format !== 'infdit-blockstep') throw new ModelError(`manifest field "format" must be "infdit-blockstep", got ${JSON.stringify(m?.format)}`);
  if (m.version !== 1) throw new ModelError(`manifest field "version" must be 1, got ${JSON.stringify(m.version)}`);
  for (const k of ['scale', 'block', 'patch', 'layers', 'heads', 'head_dim', 'tokens_per_block', 'grid', 'lr_block',
    'sigma_data', 'sampling.sigma_min', 'sampling.sigma_max', 'sampling.rho']) need(m, k, 'number');
  if (m.border_rule !== 'mask') throw new ModelError(`manifest field "border_rule" must be "mask" (the rule this engine implements), got ${JSON.stringify(m.border_rule)}`);
  if (!['float32', 'float16'].includes(m.kv?.dtype)) throw new ModelError(`manifest field "kv.dtype" must be "float32" or "float16", got ${JSON.stringify(m.kv?.dtype)}`);
  if (m.global?.enabled && !(m.global.input === 'thumb' && Number.isInteger(m.global.thumb) && m.global.thumb > 0))
    throw new ModelError(`manifest field "global" must name input "thumb" and an integer "thumb" size when enabled, got ${JSON.stringify(m.global)}`);
  if (m.block % m.scale || m.block / m.scale !== m.lr_block) throw new ModelError(`manifest field "lr_block" must equal block/scale (${m.block}/${m.scale}), got ${m.lr_block}`);
  if (m.grid * m.patch !== m.block || m.grid * m.grid !== m.tokens_per_block) throw new ModelError(`manifest fields "grid"/"tokens_per_block" disagree with block ${m.block} and patch ${m.patch}`);
  const presets = m.sampling?.presets;
  if (!presets || typeof presets !== 'object' || !presets[m.sampling.default_preset])
    throw new ModelError(`manifest field "sampling.default_preset" must name one of sampling.presets, got ${JSON.stringify(m.sampling?.default_preset)}`);
  for (const [name, p] of Object.entries<any>(presets)) {
    if (!['euler', 'heun'].includes(p.method) || !(Number.isInteger(p.steps) && p.steps >= 1))
      throw new ModelError(`manifest field "sampling.presets.${name}" must be {method: "euler"|"heun", steps: integer ≥ 1}, got ${JSON.stringify(p)}`);
  }
  return m as Manifest;
}

/** Compare the manifest's declared inputs/outputs with what the graph really has. */
function checkGraph(m: Manifest, s: ort.InferenceSession) {
  const meta = (list: readonly any[] | undefined, names: readonly string[]) =>
    names.map((n, i) => ({ name: n, ...(list?.[i] ?? {}) }));
  const check = (decl: IOSpec[], real: any[], what: string) => {
    if (decl.length !== real.length || decl.some((d, i) => d.name !== real[i].name))
      throw new ModelError(`manifest field "${what}" names [${decl.map(d => d.name)}] but the graph has [${real.map(r => r.name)}]`);
    decl.forEach((d, i) => {
      const r = real[i];
      if (r.type && r.type !== d.dtype) throw new ModelError(`manifest field "${what}[${i}].dtype" is ${d.dtype} but the graph's ${d.name} is ${r.type}`);
      if (r.shape && (r.shape.length !== d.shape.length || r.shape.some((v: any, j: number) => typeof d.shape[j] === 'number' && v !== d.shape[j])))
        throw new ModelError(`manifest field "${what}[${i}].shape" is [${d.shape}] but the graph's ${d.name} is [${r.shape}]`);
    });
  };
  check(m.inputs, meta((s as any).inputMetadata, s.inputNames), 'inputs');
  check(m.outputs, meta((s as any).outputMetadata, s.outputNames), 'outputs');
  const kvIn = m.inputs.find(i => i.name === 'kv_nb');
  const want = [3, m.layers, 2, m.heads, m.tokens_per_block, m.head_dim];
  const kvOut = m.outputs.find(o => o.name === 'kv');
  if (kvIn?.dtype !== m.kv.dtype || kvOut?.dtype !== m.kv.dtype)
    throw new ModelError(`manifest field "kv.dtype" is ${m.kv.dtype} but the graph's kv_nb/kv are ${kvIn?.dtype}/${kvOut?.dtype}`);
  if (!kvIn || kvIn.shape.slice(1).join() !== want.join())
    throw new ModelError(`manifest field "inputs.kv_nb.shape" must be [b,${want}] for layers/heads/tokens/head_dim, got ${JSON.stringify(kvIn?.shape)}`);
}

export interface ModelOptions { threads?: number }

export class Model {
  readonly kvFloats: number;          // elements of one block's K/V (all layers)
  readonly blockFloats: number;       // 3·B·B
  readonly ctxSide: number;
  constructor(readonly manifest: Manifest, readonly session: ort.InferenceSession, readonly id: string) {
    this.kvFloats = manifest.layers * 2 * manifest.heads * manifest.tokens_per_block * manifest.head_dim;
    this.blockFloats = 3 * manifest.block * manifest.block;
    this.ctxSide = 3 * manifest.lr_block;
  }

  /** Load `<path>.onnx` with `<path>.json` beside it (path may name either file). */
  static async load(path: string, opts: ModelOptions = {}): Promise<Model> {
    const base = path.replace(/\.(onnx|json)$/, '');
    for (const f of [base + '.onnx', base + '.json'])
      if (!existsSync(f)) throw new ModelError(`model file ${f} not found: --model must name an exported model (<name>.onnx with <name>.json beside it)`);
    let raw: unknown;
    try { raw = JSON.parse(readFileSync(base + '.json', 'utf8')); } catch (e) { throw new ModelError(`manifest ${base}.json is not valid JSON: ${(e as Error).message}`); }
    const manifest = validateManifest(raw);
    const bytes = readFileSync(base + '.onnx');
    const session = await ort.InferenceSession.create(bytes, {
      // 0 means every core: onnxruntime's own default counted fewer here (measured: 2 threads 40 ms vs 51 ms per block at batch 16)
      intraOpNumThreads: opts.threads || cpus().length, interOpNumThreads: 1, graphOptimizationLevel: 'all',
    });
    checkGraph(manifest, session);
    // The model's identity keys every cache on disk: same bytes, same pixels.
    const id = createHash('sha256').update(bytes).update(readFileSync(base + '.json')).digest('hex').slice(0, 16);
    return new Model(manifest, session, id);
  }

  /** One batched block-step call. Arrays are concatenated per block in batch order. */
  async run(b: number, x: Float32Array, up: Float32Array, ctx: Float32Array, sigma: Float32Array, pos: Float32Array,
    kvNb: Float32Array | Uint16Array, present: Float32Array, thumb?: Float32Array): Promise<{ denoised: Float32Array; kv: Float32Array | Uint16Array }> {
    const m = this.manifest, B = m.block, s = this.ctxSide;
    const kvType = m.kv.dtype;
    const feeds: Record<string, ort.Tensor> = {
      x: new ort.Tensor('float32', x, [b, 3, B, B]),
      up: new ort.Tensor('float32', up, [b, 3, B, B]),
      lr_ctx: new ort.Tensor('float32', ctx, [b, 3, s, s]),
      sigma: new ort.Tensor('float32', sigma, [b]),
      pos: new ort.Tensor('float32', pos, [b, 2]),
      kv_nb: new ort.Tensor(kvType, kvNb, [b, 3, m.layers, 2, m.heads, m.tokens_per_block, m.head_dim]),
      present: new ort.Tensor('float32', present, [b, 3]),
    };
    if (m.global.enabled) feeds[m.global.input!] = new ort.Tensor('float32', thumb!, [b, 3, m.global.thumb!, m.global.thumb!]);
    const out = await this.session.run(feeds);
    return { denoised: out.denoised.data as Float32Array, kv: out.kv.data as Float32Array | Uint16Array };
  }
}
