/**
 * Fusing the edge's and the cloud's next-byte distributions (both over the 257 outcomes):
 * - `linear`: `lambda * cloud + (1 - lambda) * edge`;
 * - `product`: product of experts, `cloud^w * edge^(1-w)` renormalized;
 * - `entropy` (the default): a router with no trained parameters, a linear mixture whose cloud weight
 *   grows as the edge is less sure than the cloud: `w = exp(-H_c/T) / (exp(-H_c/T) + exp(-H_e/T))`;
 * - `proxy`: proxy-tuning, `cloud * edge_tuned / edge_base` renormalized (the tuned adapter's shift of
 *   the edge applied to the cloud; both edge models run on the device).
 */
import { BYTE_OUTCOMES, type ByteDistribution } from '@floe/model';

export const FUSION_MODES = ['entropy', 'linear', 'product', 'proxy'] as const;
export type FusionMode = (typeof FUSION_MODES)[number];

export interface FusionOptions {
  mode: FusionMode;
  /** Cloud weight of `linear` and `product` (default 0.5). */
  weight?: number;
  /** Temperature of the entropy router, in bits (default 1). */
  temperature?: number;
}

/** Entropy in bits. */
export function entropyBits(p: ByteDistribution): number {
  let h = 0;
  for (const x of p) if (x > 0) h -= x * Math.log2(x);
  return h;
}

function normalized(p: Float64Array): ByteDistribution {
  const total = p.reduce((a, b) => a + b, 0);
  for (let i = 0; i < p.length; i++) p[i] = (p[i] as number) / total;
  return p;
}

/** Smallest probability a fused outcome keeps, so that no byte is ever impossible. */
const FLOOR = 1e-12;

export function fuse(
  options: FusionOptions,
  edge: ByteDistribution,
  cloud: ByteDistribution,
  edgeBase?: ByteDistribution,
): ByteDistribution {
  const out = new Float64Array(BYTE_OUTCOMES);
  switch (options.mode) {
    case 'linear': {
      const w = options.weight ?? 0.5;
      for (let i = 0; i < BYTE_OUTCOMES; i++) out[i] = w * (cloud[i] as number) + (1 - w) * (edge[i] as number);
      return out;
    }
    case 'entropy': {
      const w = routerWeight(edge, cloud, options.temperature ?? 1);
      for (let i = 0; i < BYTE_OUTCOMES; i++) out[i] = w * (cloud[i] as number) + (1 - w) * (edge[i] as number);
      return out;
    }
    case 'product': {
      const w = options.weight ?? 0.5;
      for (let i = 0; i < BYTE_OUTCOMES; i++) {
        out[i] = Math.max(FLOOR, cloud[i] as number) ** w * Math.max(FLOOR, edge[i] as number) ** (1 - w);
      }
      return normalized(out);
    }
    case 'proxy': {
      if (!edgeBase) throw new Error('proxy-tuning needs the base edge distribution beside the tuned one');
      for (let i = 0; i < BYTE_OUTCOMES; i++) {
        out[i] =
          (Math.max(FLOOR, cloud[i] as number) * Math.max(FLOOR, edge[i] as number)) /
          Math.max(FLOOR, edgeBase[i] as number);
      }
      return normalized(out);
    }
  }
}

/** The entropy router's cloud weight. */
export function routerWeight(edge: ByteDistribution, cloud: ByteDistribution, temperature = 1): number {
  const he = entropyBits(edge);
  const hc = entropyBits(cloud);
  return 1 / (1 + Math.exp((hc - he) / temperature));
}
