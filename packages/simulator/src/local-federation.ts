/**
 * A federation in one process, on the same round logic as the server and the same device code as
 * `floe-edge`: the federation core assigns ranks and clusters and aggregates (validation, clustering on
 * deltas, per-cluster aggregation, resize), and each client is a LoRA participant training on its
 * private partition, answering a `round_start` with an update that goes through the wire encoding.
 * Only the network is missing. After every round each client's next start adapter (its cluster's
 * aggregate at its rank) is evaluated on its own held-out split; round 0 is the base model.
 */
import {
  type FederationState,
  INITIAL_STATE,
  type RoundSpec,
  type RoundUpdate,
  aggregateRound,
  checkAdapter,
  checkPlan,
  configureRound,
  initialAdapter,
  roundStartMessage,
  startAdapter,
} from '@floe/federation';
import { LocalTrainer, LoraParticipant } from '@floe/edge-client';
import { architectureOf, loadCheckpoint } from '@floe/model';
import { type LoraAdapter, type StrategyName, fromWireAdapter, toWireAdapter } from '@floe/shared';
import { type TaskName, federationPartition, taskManifest } from '@floe/tasks';

export interface LocalFederationOptions {
  /** Checkpoint directory of the base model. */
  model: string;
  task: TaskName;
  strategy: StrategyName;
  /** One LoRA rank per client (heterogeneous devices); the number of clients is its length. */
  ranks: number[];
  rounds: number;
  localSteps: number;
  learningRate: number;
  alpha: number;
  targetModules: string[];
  batch: number;
  seqLen: number;
  seed: number;
  /** Task-aware clustering (default false: one global adapter). */
  clustering?: boolean;
}

export interface ClientRoundResult {
  clientId: string;
  rank: number;
  clusterId: number;
  trainLoss: number;
  /** The task's headline metric on the client's own test split (bits/byte, accuracy, exact match). */
  metric: number;
}

export interface RoundResult {
  round: number;
  clients: ClientRoundResult[];
  seconds: number;
}

export const METRIC_NAME: Record<TaskName, string> = {
  speech: 'bits/byte',
  email: 'accuracy',
  arithmetic: 'exact match',
};

/** Runs the federation; `onRound` sees round 0 (the base model) and every aggregated round. */
export async function runLocalFederation(
  options: LocalFederationOptions,
  onRound: (result: RoundResult) => void = () => undefined,
): Promise<RoundResult[]> {
  const checkpoint = await loadCheckpoint(options.model);
  const pretrainSeed = Number(checkpoint.metadata?.['seed'] ?? 0);
  const partition = federationPartition(options.task, {
    seed: options.seed,
    clients: options.ranks.length,
    pretrainSeed,
  });
  const spec: RoundSpec = {
    strategy: options.strategy,
    clustering: options.clustering ?? false,
    maxRank: Math.max(...options.ranks),
    alpha: options.alpha,
    targetModules: options.targetModules,
    baseModel: { id: 'local', sha256: '0'.repeat(64), architecture: architectureOf(checkpoint.config) },
    clientsPerRound: options.ranks.length,
    localSteps: options.localSteps,
    learningRate: options.learningRate,
    batchSize: options.batch,
  };
  const clients = partition.clients.map((data, i) => {
    const trainer = new LocalTrainer({
      checkpoint,
      data: { manifest: taskManifest(options.task), train: data.train, test: data.test },
      seqLen: options.seqLen,
      microBatch: options.batch,
    });
    const plan = { rank: options.ranks[i] as number, targetModules: options.targetModules };
    return { id: data.id, plan, trainer, participant: new LoraParticipant({ trainer, plan, seed: options.seed + i }) };
  });
  const results: RoundResult[] = [];
  const initial = initialAdapter(spec, `local:${options.seed}`);
  let state: FederationState = INITIAL_STATE;
  const stored = new Map<number, LoraAdapter>();

  try {
    let started = performance.now();
    const base = await Promise.all(clients.map((c) => c.trainer.evaluate()));
    const round0: RoundResult = {
      round: 0,
      clients: clients.map((c, i) => ({
        clientId: c.id,
        rank: spec.strategy === 'fedavg' ? spec.maxRank : c.plan.rank,
        clusterId: 0,
        trainLoss: Number.NaN,
        metric: base[i]?.value ?? Number.NaN,
      })),
      seconds: (performance.now() - started) / 1000,
    };
    results.push(round0);
    onRound(round0);

    for (let round = 0; round < options.rounds; round++) {
      started = performance.now();
      const assignments = configureRound(
        spec,
        state,
        [...stored.keys()],
        clients.map((c) => ({ clientId: c.id, plan: c.plan })),
        `local:${round}`,
      );
      const updates: RoundUpdate[] = [];
      const losses = new Map<string, number>();
      const rankOf = new Map(assignments.map((a) => [a.clientId, a.rank]));
      for (const assignment of assignments) {
        const client = clients.find((c) => c.id === assignment.clientId)!;
        const start = startAdapter(spec, stored.get(assignment.clusterId), assignment, initial);
        // the round_start the server would send: no deadline to speak of in one process
        const message = roundStartMessage(
          spec,
          { jobId: 'local', round, deadline: Date.now() + 24 * 3600 * 1000 },
          assignment,
          start ? toWireAdapter(start) : null,
        );
        const update = await client.participant.onRound(message);
        const adapter = fromWireAdapter(update.adapter);
        const refusal = checkPlan(spec, assignment, update.plan) ?? checkAdapter(spec, assignment, adapter);
        if (refusal) throw new Error(`${client.id}'s update was refused: ${refusal.code} ${refusal.message}`);
        updates.push({
          clientId: client.id,
          numSamples: update.numSamples,
          adapter,
          metrics: update.metrics,
          assignment,
        });
        losses.set(client.id, update.metrics['loss'] ?? Number.NaN);
      }
      const aggregate = await aggregateRound(spec, state, (id) => stored.get(id), updates, round);
      for (const [clusterId, adapter] of aggregate.adapters) stored.set(clusterId, adapter);
      state = aggregate.state;
      const result: RoundResult = {
        round: round + 1,
        clients: await Promise.all(
          clients.map(async (c) => {
            const clusterId = state.clusterOf[c.id] ?? 0;
            const rank = rankOf.get(c.id) ?? c.plan.rank;
            const next = startAdapter(spec, stored.get(clusterId), { clientId: c.id, rank, clusterId });
            return {
              clientId: c.id,
              rank,
              clusterId,
              trainLoss: losses.get(c.id) ?? Number.NaN,
              metric: (await c.trainer.evaluate(next))?.value ?? Number.NaN,
            };
          }),
        ),
        seconds: (performance.now() - started) / 1000,
      };
      results.push(result);
      onRound(result);
    }
    return results;
  } finally {
    await Promise.all(clients.map((c) => c.trainer.dispose()));
  }
}
