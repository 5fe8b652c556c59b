/**
 * What clustering looks at of an update: a random-projection sketch of its products and the norm of
 * each module's change.
 */
import { type LoraAdapter, hashString, loraDeltaNorm } from '@floe/shared';

/**
 * A d-dimensional sketch of the concatenated products (alpha / r) B A of an adapter: coordinate k is
 * sum over modules of <u_k v_k^T, dW> = (u_k^T B)(A v_k) * alpha / r, with fixed Gaussian u_k, v_k per
 * module. Costs d * r * (out + in) per module instead of forming dW.
 */
export class UpdateSketch {
  private readonly projections = new Map<string, { u: Float32Array[]; v: Float32Array[] }>();

  constructor(
    readonly dimensions = 128,
    readonly seed = 0,
  ) {}

  private projection(path: string, out: number, inn: number): { u: Float32Array[]; v: Float32Array[] } {
    const key = `${path}:${out}x${inn}`;
    let p = this.projections.get(key);
    if (!p) {
      let state = (this.seed ^ hashString(key)) >>> 0;
      const gaussian = () => {
        // Box-Muller over a small LCG: reproducible for the same (seed, module)
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        const a = (state + 1) / 4294967297;
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        const b = state / 4294967296;
        return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b);
      };
      const vector = (n: number) => Float32Array.from({ length: n }, gaussian);
      p = {
        u: Array.from({ length: this.dimensions }, () => vector(out)),
        v: Array.from({ length: this.dimensions }, () => vector(inn)),
      };
      this.projections.set(key, p);
    }
    return p;
  }

  sketch(adapter: LoraAdapter): Float64Array {
    const out = new Float64Array(this.dimensions);
    for (const [path, f] of [...adapter.modules].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const { u, v } = this.projection(path, f.outFeatures, f.inFeatures);
      const scale = adapter.alpha / f.rank;
      for (let k = 0; k < this.dimensions; k++) {
        const uk = u[k] as Float32Array;
        const vk = v[k] as Float32Array;
        let dot = 0;
        for (let j = 0; j < f.rank; j++) {
          let uB = 0;
          for (let i = 0; i < f.outFeatures; i++) uB += (uk[i] as number) * (f.B[i * f.rank + j] as number);
          let Av = 0;
          const row = j * f.inFeatures;
          for (let i = 0; i < f.inFeatures; i++) Av += (f.A[row + i] as number) * (vk[i] as number);
          dot += uB * Av;
        }
        out[k] = (out[k] as number) + dot * scale;
      }
    }
    return out;
  }
}

/** What clustering looks at of one update. */
export interface UpdateSignature {
  /** UpdateSketch of the change of the products. */
  sketch: Float64Array;
  /** Frobenius norm of the change of each module's product. */
  moduleNorms: Map<string, number>;
  /**
   * The update's plan (rank and layers): what besides its data shapes its profile. Significance tests
   * shuffle only among updates of one stratum, so a split explained by plans alone is not a split.
   */
  stratum: string;
}

/** The signature of `adapter` as a change from `start` (from zero when absent). */
export function updateSignature(
  sketcher: UpdateSketch,
  adapter: LoraAdapter,
  start?: LoraAdapter,
  stratum = '',
): UpdateSignature {
  const own = sketcher.sketch(adapter);
  const from = start ? sketcher.sketch(start) : undefined;
  const moduleNorms = new Map(
    [...adapter.modules].map(([path, f]) => [path, loraDeltaNorm(f, start?.modules.get(path), adapter.alpha)] as const),
  );
  return { sketch: from ? own.map((x, i) => x - (from[i] as number)) : own, moduleNorms, stratum };
}
