/**
 * A federation in one process: the server's aggregation strategy and the clients' local LoRA training
 * run side by side, without the network. Each client holds its private partition of a task, trains at
 * its own rank from the adapter the strategy gives it, and reports only the adapter and its sample
 * count. After every round each client's adapter is evaluated on its own held-out split.
 */
import {
  type LlamaConfig,
  OrtLlama,
  OrtTrainer,
  Random,
  type Weights,
  initLora,
  isLoraModuleKind,
  loadCheckpoint,
} from '@floe/model';
import { STRATEGIES, type ClientUpdate } from '@floe/server';
import type { LoraAdapter, StrategyName } from '@floe/shared';
import { type ClientData, type TaskName, evaluateTask, rowSampler, sampleBatch, taskPartition } from '@floe/tasks';

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
}

export interface ClientRoundResult {
  clientId: string;
  rank: number;
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

function headline(task: TaskName, metrics: Awaited<ReturnType<typeof evaluateTask>>): number {
  if (task === 'speech') return (metrics as { bitsPerByte: number }).bitsPerByte;
  if (task === 'email') return (metrics as { accuracy: number }).accuracy;
  return (metrics as { exactMatch: number }).exactMatch;
}

async function evaluateClients(
  config: LlamaConfig,
  weights: Weights,
  task: TaskName,
  clients: ClientData[],
  adapters: (LoraAdapter | undefined)[],
  modules: string[],
): Promise<number[]> {
  const model = await OrtLlama.create(config, weights, { loraModules: modules });
  try {
    const out: number[] = [];
    for (const [i, client] of clients.entries()) {
      out.push(headline(task, await evaluateTask(model, task, client.test, { lora: adapters[i] })));
    }
    return out;
  } finally {
    await model.release();
  }
}

/** Runs the federation; `onRound` sees round 0 (the base model) and every aggregated round. */
export async function runLocalFederation(
  options: LocalFederationOptions,
  onRound: (result: RoundResult) => void = () => undefined,
): Promise<RoundResult[]> {
  const { config, weights } = await loadCheckpoint(options.model);
  const partition = taskPartition(options.task, { seed: options.seed, clients: options.ranks.length });
  const clients = partition.clients;
  const strategy = STRATEGIES[options.strategy];
  const kinds = options.targetModules.filter(isLoraModuleKind);
  const samplers = clients.map((c) => rowSampler(c.train, options.seqLen));
  const random = new Random(options.seed);
  const results: RoundResult[] = [];

  let started = performance.now();
  const baseline = await evaluateClients(
    config,
    weights,
    options.task,
    clients,
    clients.map(() => undefined),
    [],
  );
  const round0: RoundResult = {
    round: 0,
    clients: clients.map((c, i) => ({
      clientId: c.id,
      rank: options.ranks[i] as number,
      trainLoss: Number.NaN,
      metric: baseline[i] as number,
    })),
    seconds: (performance.now() - started) / 1000,
  };
  results.push(round0);
  onRound(round0);

  let aggregate: ReturnType<(typeof strategy)['aggregate']> | undefined;
  for (let round = 1; round <= options.rounds; round++) {
    started = performance.now();
    const updates: ClientUpdate[] = [];
    const losses: number[] = [];
    for (const [i, client] of clients.entries()) {
      const rank = options.ranks[i] as number;
      const start =
        aggregate?.forRank(rank) ??
        initLora(config, { r: rank, lora_alpha: options.alpha, target_modules: kinds }, options.seed + i);
      const trainer = await OrtTrainer.create(config, weights, {
        learningRate: options.learningRate,
        maxGradNorm: 1,
        adapter: start,
        microBatch: options.batch,
        seqLen: options.seqLen,
      });
      let loss = 0;
      for (let step = 0; step < options.localSteps; step++)
        loss = (await trainer.step(sampleBatch(samplers[i]!, random, options.batch))).loss;
      updates.push({
        clientId: client.id,
        numSamples: options.localSteps * options.batch,
        adapter: trainer.adapter() as LoraAdapter,
      });
      losses.push(loss);
      await trainer.dispose();
    }
    aggregate = strategy.aggregate(updates, options.alpha);
    const current = aggregate;
    const adapters = options.ranks.map((rank) => current.forRank(rank));
    const modules = [...(adapters[0]?.modules.keys() ?? [])];
    const metrics = await evaluateClients(config, weights, options.task, clients, adapters, modules);
    const result: RoundResult = {
      round,
      clients: clients.map((c, i) => ({
        clientId: c.id,
        rank: options.ranks[i] as number,
        trainLoss: losses[i] as number,
        metric: metrics[i] as number,
      })),
      seconds: (performance.now() - started) / 1000,
    };
    results.push(result);
    onRound(result);
  }
  return results;
}
