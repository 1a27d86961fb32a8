/** EDM Euler / Heun over a Karras σ schedule (model/infdit/sample.py is the reference). */
export type Method = 'euler' | 'heun';
export interface Preset { method: Method; steps: number }
export interface Sampling {
  sigma_min: number; sigma_max: number; rho: number; default_preset: string;
  presets: Record<string, Preset>;
}

export function karrasSigmas(steps: number, sMin: number, sMax: number, rho: number): number[] {
  if (steps === 1) return [sMax, 0];
  const a = sMax ** (1 / rho), b = sMin ** (1 / rho);
  const s: number[] = [];
  for (let i = 0; i < steps; i++) s.push((a + (i / (steps - 1)) * (b - a)) ** rho);
  return [...s, 0];
}

/**
 * A plan of network evaluations: evaluation n runs the denoiser at sigma[n] on the state it
 * names. Heun's extra evaluations are ordinary nodes of the DAG, so the engine only ever
 * sees "evaluation n of block (r,c)".
 */
export class SamplerPlan {
  readonly evals: { sigma: number; step: number; corrector: boolean }[] = [];
  readonly sigmas: number[];
  constructor(readonly method: Method, readonly steps: number, readonly sMin: number, readonly sMax: number, readonly rho: number) {
    this.sigmas = karrasSigmas(steps, sMin, sMax, rho);
    for (let i = 0; i < steps; i++) {
      this.evals.push({ sigma: this.sigmas[i], step: i, corrector: false });
      if (method === 'heun' && this.sigmas[i + 1] > 0) this.evals.push({ sigma: this.sigmas[i + 1], step: i, corrector: true });
    }
  }
  get count() { return this.evals.length; }
}

/** Per-block sampler state: x (the current iterate), and Heun's pending predictor. */
export interface BlockSampleState { x: Float32Array; xPred?: Float32Array; d?: Float32Array }

/** The input the denoiser sees at evaluation n. */
export function evalInput(plan: SamplerPlan, n: number, st: BlockSampleState): Float32Array {
  return plan.evals[n].corrector ? st.xPred! : st.x;
}

/** Advance the state with the denoiser's output D at evaluation n. */
export function advance(plan: SamplerPlan, n: number, st: BlockSampleState, D: Float32Array): void {
  const e = plan.evals[n];
  const s0 = plan.sigmas[e.step], s1 = plan.sigmas[e.step + 1];
  const x = st.x;
  if (!e.corrector) {
    const d = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) d[i] = (x[i] - D[i]) / s0;
    const heunNext = plan.method === 'heun' && s1 > 0;
    if (heunNext) {
      const xp = new Float32Array(x.length);
      for (let i = 0; i < x.length; i++) xp[i] = x[i] + (s1 - s0) * d[i];
      st.d = d; st.xPred = xp;
    } else {
      for (let i = 0; i < x.length; i++) x[i] = x[i] + (s1 - s0) * d[i];
    }
  } else {
    const d = st.d!, xp = st.xPred!;
    for (let i = 0; i < x.length; i++) {
      const d2 = Math.fround((xp[i] - D[i]) / s1);
      const dm = Math.fround(0.5 * Math.fround(d[i] + d2));
      x[i] = x[i] + (s1 - s0) * dm;
    }
    st.d = undefined; st.xPred = undefined;
  }
}
