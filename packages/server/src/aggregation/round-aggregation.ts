/**
 * One round's aggregation as a self-contained job: stored frames and cluster adapters in, serialized
 * cluster adapters out; the updates are read from the store one at a time and folded (two passes when
 * the job clusters or clips), so the round's memory does not grow with its updates. Everything a worker
 * thread needs travels in the input (bytes, plain data and where the store is), so the event loop only
 * copies buffers while the decoding, clustering and factorization run elsewhere.
 */
import { type Assignment, type FederationState, type RoundUpdate, aggregateRoundStreamed } from '@floe/federation';
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
import { PostgresStore } from '../store/postgres-store.js';
import type { StoredUpdate, WorkerAccess } from '../store/store.js';

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
   * Where the accepted updates are: the store (the worker reads and verifies them itself, one at a time,
   * so frames never cross the event loop nor sit in memory together), or the frames themselves.
   */
  updates: WorkerAccess | { frames: StoredUpdate[] };
}

export interface AggregationOutput {
  adapters: { clusterId: number; safetensors: Uint8Array }[];
  state: FederationState;
  metrics: Metrics;
}

/** The round's stored updates, read anew on each call (the streamed round reads them twice). */
async function* storedUpdates(input: AggregationInput): AsyncGenerator<StoredUpdate> {
  const { updates } = input;
  if ('frames' in updates) {
    yield* updates.frames;
  } else if ('databaseUrl' in updates) {
    yield* PostgresStore.streamUpdates(updates.databaseUrl, input.jobId, input.round);
  } else {
    const store = new SqliteStore(updates.dataDir);
    try {
      yield* store.streamUpdates(input.jobId, input.round);
    } finally {
      await store.close();
    }
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
  const source = async function* (): AsyncGenerator<RoundUpdate> {
    for await (const u of storedUpdates(input)) {
      const assignment = assignments.get(u.clientId);
      if (!assignment) throw new Error(`update of ${u.clientId}, who was not sampled in round ${input.round}`);
      yield {
        clientId: u.clientId,
        numSamples: u.numSamples,
        adapter: fromWireAdapter(decodeMessageOf(u.frame, 'update', { maxBytes: input.maxFrameBytes }).adapter),
        metrics: u.metrics,
        assignment,
      };
    }
  };
  const result = await aggregateRoundStreamed(spec, input.state, (id) => stored.get(id), source, input.round, kernels);
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
