/**
 * A render: one image super-resolved at one scale by one model, seed and sampler, as a chain
 * of lazy stages. 4× is the model's native factor; 16× chains two stages (a stage-2 block asks
 * stage 1 only for the LR pixels under its 3×3 neighbourhood); 2× and 8× take the next native
 * factor and halve it with dzsave's 2×2 rule, so the pyramid's levels agree with it.
 */
import { jpegLevel, type Model } from './model.js';
import { Stage, type LRSource, type RequestOptions } from './engine.js';
import { KVStore } from './kvstore.js';
import type { BlockStore } from './blockstore.js';
import { SamplerPlan, type Preset } from './sampler.js';
import { halve, asPixelSource, type PixelSource, type RGBImage } from './pixels.js';
import { thumbnail } from './thumb.js';
import { RestoredLR } from './restore.js';
import { BaseUp, PreviewGate } from './base.js';

export const SCALES = [2, 4, 8, 16] as const;

export interface RenderOptions {
  model: Model; image: RGBImage | PixelSource; scale: number; seed: number;
  preset?: string; steps?: number; sigmaMax?: number;
  batch: number; kvBytes: number; store: BlockStore;
  /** The input file's JPEG quality 1..100 (lib/tiles/jpeg-quality.ts); 0 or absent: not a JPEG.
   *  Only a model with the JPEG condition uses it. */
  jpegQuality?: number;
  /** Bytes of restored LR tiles kept (a model with a JPEG restorer, a JPEG input); default 64 MiB. */
  restoreBytes?: number;
  /** Bytes of base tiles kept per stage (a model with a base); default 128 MiB (base.ts). */
  baseBytes?: number;
}

export class ImageLR implements LRSource {
  constructor(readonly src: PixelSource) {}
  get width() { return this.src.width; }
  get height() { return this.src.height; }
  async region(x0: number, y0: number, w: number, h: number) { return this.src.regionSync(x0, y0, w, h); }
  regionSync(x0: number, y0: number, w: number, h: number) { return this.src.regionSync(x0, y0, w, h); }
}

class StageLR implements LRSource {
  constructor(readonly s: Stage) {}
  get width() { return this.s.outWidth; }
  get height() { return this.s.outHeight; }
  region(x0: number, y0: number, w: number, h: number, opt: RequestOptions) { return this.s.region(x0, y0, w, h, opt); }
}

export function resolvePreset(model: Model, preset?: string, steps?: number): Preset {
  const smp = model.manifest.sampling;
  const name = preset ?? smp.default_preset;
  const p = smp.presets[name];
  if (!p) throw new RangeError(`preset "${name}" is not one of this model's presets: ${Object.keys(smp.presets).join(', ')}`);
  return steps ? { ...p, steps } : p;
}

export class Render {
  readonly stages: Stage[] = [];
  readonly width: number; readonly height: number;
  readonly halveOutput: boolean;
  readonly kv: KVStore;
  readonly plan: SamplerPlan;
  /** Every stage's base (a model with a base whose graphs run here): stage 1's, and later stages' for a
   *  model trained over the base. */
  readonly bases: BaseUp[] = [];
  /** Previews in flight hold the transformer back (base.ts). */
  readonly gate = new PreviewGate();
  /** Stage 1's JPEG restorer (a JPEG file and a model with one), else undefined. */
  readonly restorer?: RestoredLR;

  constructor(readonly o: RenderOptions) {
    const m = o.model.manifest;
    if (m.scale !== 4) throw new RangeError(`this engine chains 4× models; the model's scale is ${m.scale}`);
    if (!(SCALES as readonly number[]).includes(o.scale)) throw new RangeError(`scale must be one of ${SCALES.join(', ')}, got ${o.scale}`);
    const nStages = o.scale <= 4 ? 1 : 2;
    this.halveOutput = o.scale === 2 || o.scale === 8;
    const p = resolvePreset(o.model, o.preset, o.steps);
    const smp = m.sampling;
    this.plan = new SamplerPlan(p.method, p.steps, smp.sigma_min, o.sigmaMax ?? smp.sigma_max, smp.rho);
    this.kv = new KVStore(o.kvBytes);
    const image = asPixelSource(o.image);
    // a JPEG's LR goes through the model's restorer when it has one (PNG and other lossless files never do)
    const level = jpegLevel(o.jpegQuality ?? 0);   // 0 also for quality 100, whose blocks are not worth a pass
    if (m.restorer && level > 0) this.restorer = new RestoredLR(o.model, image, level, o.restoreBytes);
    let lr: LRSource = this.restorer ?? new ImageLR(image);
    // the global vector is the user's image's, for every stage: a stage-2 thumbnail would need
    // all of stage 1 and break laziness
    const thumb = m.global.enabled ? thumbnail(image, m.global.thumb!) : undefined;
    const withBase = !!m.base && o.model.runsGraphs;
    for (let s = 1; s <= nStages; s++) {
      // only stage 1 reads the file; a later stage's LR is the model's own output, never a JPEG
      const jq = s === 1 ? level : 0;
      // the base of each stage reads that stage's LR (after the restorer: restorer, base, transformer)
      // (a JPEG-aware base reads stage 1's JPEG as it is, with its level: such a model has no restorer)
      const base = withBase && (s === 1 || m.up === 'base') ? new BaseUp(o.model, lr, o.baseBytes, this.gate, m.base!.jq ? jq : 0) : undefined;
      if (base) this.bases.push(base);
      const st = new Stage({ model: o.model, lr, seed: o.seed, stage: s, plan: this.plan, batch: o.batch, kv: this.kv, store: o.store, thumb, jq,
        base: m.up === 'base' ? base : undefined, gate: this.gate });
      this.stages.push(st);
      lr = new StageLR(st);
    }
    const last = this.stages[this.stages.length - 1];
    this.width = this.halveOutput ? Math.ceil(last.outWidth / 2) : last.outWidth;
    this.height = this.halveOutput ? Math.ceil(last.outHeight / 2) : last.outHeight;
  }

  get last() { return this.stages[this.stages.length - 1]; }

  /** The base over stage 1's LR: the previews', and the transformer's up(LR) for a model trained over it. */
  get base(): BaseUp | undefined { return this.bases[0]; }

  /** Final output pixels (HWC uint8) of a rectangle inside the output image. */
  async region(x0: number, y0: number, w: number, h: number, opt: RequestOptions = {}): Promise<RGBImage> {
    if (!this.halveOutput) return { width: w, height: h, data: await this.last.region(x0, y0, w, h, opt) };
    // native pixels 2x0..2x0+2w, clamped to the native image so odd edges replicate as dzsave does
    const NW = this.last.outWidth, NH = this.last.outHeight;
    const nw = Math.min(2 * w, NW - 2 * x0), nh = Math.min(2 * h, NH - 2 * y0);
    const native = { width: nw, height: nh, data: await this.last.region(2 * x0, 2 * y0, nw, nh, opt) };
    return halve(native);
  }

  /** Total and finished blocks of the last stage. */
  progress() { const s = this.last; return { total: s.R * s.C, done: s.doneCount() }; }
}
