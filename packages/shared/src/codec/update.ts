import type { LoraAdapter } from '../adapter/peft.js';
import { adapterFromTensors, adapterToTensors } from '../adapter/peft.js';
import type { Metrics, RankPlan, TensorDType, WireAdapter } from '../protocol/schemas.js';
import { decodeMessageOf, encodeMessage, type DecodeOptions } from './message.js';
import { fromWireTensor, toWireTensor } from './tensor.js';

/** A client's contribution to one round, in memory. */
export interface AdapterUpdate {
  jobId: string;
  round: number;
  numSamples: number;
  plan: RankPlan;
  adapter: LoraAdapter;
  metrics: Metrics;
}

export function toWireAdapter(adapter: LoraAdapter, dtype: TensorDType = 'f32'): WireAdapter {
  return { alpha: adapter.alpha, tensors: adapterToTensors(adapter).map((t) => toWireTensor(t, dtype)) };
}

export function fromWireAdapter(wire: WireAdapter): LoraAdapter {
  return adapterFromTensors(wire.tensors.map(fromWireTensor), wire.alpha);
}

export function encodeAdapterUpdate(update: AdapterUpdate, dtype: TensorDType = 'f32'): Uint8Array {
  return encodeMessage({
    type: 'update',
    jobId: update.jobId,
    round: update.round,
    numSamples: update.numSamples,
    plan: update.plan,
    adapter: toWireAdapter(update.adapter, dtype),
    metrics: update.metrics,
  });
}

export function decodeAdapterUpdate(bytes: unknown, options: DecodeOptions = {}): AdapterUpdate {
  const message = decodeMessageOf(bytes, 'update', options);
  return {
    jobId: message.jobId,
    round: message.round,
    numSamples: message.numSamples,
    plan: message.plan,
    adapter: fromWireAdapter(message.adapter),
    metrics: message.metrics,
  };
}
