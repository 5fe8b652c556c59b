/**
 * What the simulation asks of a worker thread, and what the worker tells it back. Each client of a
 * simulation lives in one worker (a worker hosts several) and runs there: as a device in a federated job (the real edge client against
 * the real server), training alone (local-only), or scoring the methods that need no training.
 */
import type { TrainingCost } from '@floe/edge-client';
import type { TaskName } from '@floe/tasks';
import type { ItemScores } from '@floe/shared';

export interface ClientSpec {
  id: string;
  task: TaskName;
  /** The client's data directory (train and held-out test splits). */
  dataDir: string;
  /** Checkpoint directory of the edge model. */
  model: string;
  tier: string;
  /** Bytes per training row. */
  seqLen: number;
  /** ORT intra-op threads. */
  threads: number;
}

export interface FederateTask {
  kind: 'federate';
  client: ClientSpec;
  serverUrl: string;
  joinToken: string;
  jobId: string;
  /** The device's own directory (identity, state, adapters). */
  home: string;
  calibration: TrainingCost;
  /** Fine-tune the cluster's final adapter on local data (Floe) or keep it as is. */
  personalize: boolean;
  /** >= 1: runs slower than its plan assumes (a straggler). */
  throttle: number;
  /** Seeds its local training the same in every method's job (see DeviceOptions.trainingSeed). */
  trainingSeed: number;
  /** The device dies at this step of this round's training, and restarts (it gets the round again). */
  dieAt?: { round: number; step: number };
  /** Also score the final adapter fused with this cloud. */
  cloudUrl?: string;
}

export interface LocalTask {
  kind: 'local';
  client: ClientSpec;
  plan: { rank: number; layers?: number[] | undefined; microBatch: number };
  alpha: number;
  targetModules: string[];
  /** Steps between two held-out figures (a round's worth), and how many such rounds. */
  localSteps: number;
  rounds: number;
  /** Steps after the last round (what personalization costs a federated device). */
  extraSteps: number;
  batchSize: number;
  learningRate: number;
  seed: number;
}

export interface ReferenceTask {
  kind: 'reference';
  client: ClientSpec;
  cloudUrl: string;
}

export type WorkerTask = FederateTask | LocalTask | ReferenceTask;

/** Held-out figures a worker measured, by what it scored. */
export interface WorkerScores {
  /** The edge with the task's final adapter (or the base model, for a reference task). */
  edge: number;
  /** The cloud alone (reference task). */
  cloud?: number;
  /** The edge fused with the cloud. */
  fused?: number;
  /** Share of fused bytes that fell back to the edge (the cloud failed or was late); 0 expected. */
  fusedFallback?: number;
  /** What each held-out item contributed to each figure above, for paired comparisons. */
  items: { edge: ItemScores; cloud?: ItemScores; fused?: ItemScores };
}

export type WorkerEvent =
  /** `deviceId`: the id the server gave the device (federated tasks). */
  | { type: 'plan'; deviceId?: string; rank: number; layers: number[] | null; microBatch: number }
  | { type: 'step'; round: number; step: number; loss: number }
  | {
      type: 'round';
      round: number;
      rank: number;
      clusterId: number;
      bytesUp: number;
      bytesDown: number;
      accepted: boolean;
      steps: number;
    }
  /** The held-out figure after `round` rounds (0: before training). */
  | { type: 'heldOut'; round: number; value: number }
  | { type: 'frame'; event: string; bytes: Uint8Array }
  | { type: 'log'; line: string }
  | { type: 'result'; scores: WorkerScores; rule?: string }
  /** The task failed; the worker waits for the next. */
  | { type: 'error'; message: string };

/** A worker's event, in the name of the task it belongs to. */
export interface WorkerMessage {
  id: number | undefined;
  event: WorkerEvent;
}
