/** The aggregation worker (a piscina task): ORT kernel sessions per thread, made on first use. */
import type { Kernels } from '@floe/shared';
import { ortKernels } from './ort-kernels.js';
import { type AggregationInput, type AggregationOutput, aggregateStoredRound } from './round-aggregation.js';

let kernels: Promise<Kernels> | undefined;

export default async function aggregate(input: AggregationInput): Promise<AggregationOutput> {
  kernels ??= ortKernels(1);
  return aggregateStoredRound(input, await kernels);
}
