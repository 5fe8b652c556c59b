/**
 * One round's aggregation as a self-contained job: stored frames and cluster adapters in, serialized
 * cluster adapters out. Everything a worker thread needs travels in the input (bytes and plain data),
 * so the event loop only copies buffers while the decoding, clustering and factorization run elsewhere.
 */
import { type Assignment, type FederationState, type RoundUpdate, aggregateRound } from '@floe/federation';
import {
  type JobSpec,
  type LoraAdapter,
  type Kernels,
  type Metrics,
  adapterFromTensors,
  adapterToTensors,
  decodeMessageOf,
  fromWireAdapter,
  parseSafetensors,
  serializeSafetensors,
} from '@floe/shared';
import { SqliteStore } from '../store/sqlite-store.js';
import type { StoredUpdate } from '../store/store.js';

export interface AggregationInput {
  jobId: string;
  spec: JobSpec;
  state: FederationState;
  round: number;
  maxFrameBytes: number;
  /** The job's stored cluster adapters (what each cluster started this round from). */
  clusters: { clusterId: number; safetensors: Uint8Array }[];
  /** What the round asked of each sampled client. */
  assignments: Assignment[];
  /**
   * Where the accepted updates are: the SQLite store's directory (the worker reads and verifies them
   * itself, so hundreds of megabytes of frames never cross the event loop), or the frames themselves.
   */
  updates: { dataDir: string } | { frames: StoredUpdate[] };
}

export interface AggregationOutput {
  adapters: { clusterId: number; safetensors: Uint8Array }[];
  state: FederationState;
  metrics: Metrics;
}

async function storedUpdates(input: AggregationInput): Promise<StoredUpdate[]> {
  if ('frames' in input.updates) return input.updates.frames;
  const store = new SqliteStore(input.updates.dataDir);
  try {
    return await store.updates(input.jobId, input.round);
  } finally {
    await store.close();
  }
}

/** Whatever computes round aggregates: the worker pool in the server, the same function inline elsewhere. */
export interface RoundAggregator {
  aggregate(input: AggregationInput): Promise<AggregationOutput>;
}

export async function aggregateStoredRound(input: AggregationInput, kernels: Kernels = {}): Promise<AggregationOutput> {
  const { spec } = input;
  const stored = new Map<number, LoraAdapter>(
    input.clusters.map((c) => [
      c.clusterId,
      adapterFromTensors([...parseSafetensors(c.safetensors).tensors.values()], spec.alpha),
    ]),
  );
  const assignments = new Map(input.assignments.map((a) => [a.clientId, a]));
  const updates: RoundUpdate[] = (await storedUpdates(input)).map((u) => {
    const assignment = assignments.get(u.clientId);
    if (!assignment) throw new Error(`update of ${u.clientId}, who was not sampled in round ${input.round}`);
    return {
      clientId: u.clientId,
      numSamples: u.numSamples,
      adapter: fromWireAdapter(decodeMessageOf(u.frame, 'update', { maxBytes: input.maxFrameBytes }).adapter),
      metrics: u.metrics,
      assignment,
    };
  });
  const result = await aggregateRound(spec, input.state, (id) => stored.get(id), updates, input.round, kernels);
  const adapters = [...result.adapters].map(([clusterId, adapter]) => ({
    clusterId,
    safetensors: serializeSafetensors(adapterToTensors(adapter), 'F32', {
      job: input.jobId,
      round: String(input.round),
      cluster: String(clusterId),
      strategy: spec.strategy,
      alpha: String(spec.alpha),
      rank: String(spec.maxRank),
    }),
  }));
  return { adapters, state: result.state, metrics: result.metrics };
}
