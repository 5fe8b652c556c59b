/**
 * A worker thread hosting some of a simulation's clients (see protocol.ts): runs the tasks it is sent,
 * side by side (a federated round needs every device at once; ORT runs them off this thread), and
 * reports each task's events. It lives as long as the simulation, so each client's model and
 * evaluation sessions are loaded once.
 * As a device it is the real edge client (`startDevice`, as `floe-edge join` runs it) against the real
 * server; every frame it sends is handed to the simulation's frame inspector on the way out.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { parentPort } from 'node:worker_threads';
import { type Device, type DeviceOutcome, LocalTrainer, initialAdapter, startDevice } from '@floe/edge-client';
import { type LoadedCheckpoint, loadCheckpoint } from '@floe/model';
import { type LoraAdapter, fromWireAdapter } from '@floe/shared';
import { type LocalData, readDataDir } from '@floe/tasks';
import { ClientEvaluator } from '../client-evaluator.js';
import type {
  FederateTask,
  LocalTask,
  ReferenceTask,
  WorkerEvent,
  WorkerMessage,
  WorkerScores,
  WorkerTask,
} from './protocol.js';

/** The task being run, in whose name events are posted (one per async context). */
const taskIds = new AsyncLocalStorage<number>();
const post = (event: WorkerEvent, transfer: ArrayBuffer[] = []) =>
  parentPort?.postMessage({ id: taskIds.getStore(), event } satisfies WorkerMessage, transfer);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Loaded {
  checkpoint: LoadedCheckpoint;
  data: LocalData;
  evaluator: ClientEvaluator;
}
const checkpoints = new Map<string, Promise<LoadedCheckpoint>>();
const loaded = new Map<string, Loaded>();

/** The client's checkpoint, data and evaluator, loaded for its first task and kept. */
async function evaluatorFor(task: WorkerTask, cloudUrl?: string): Promise<Loaded> {
  const key = `${task.client.id}|${cloudUrl ?? ''}`;
  let entry = loaded.get(key);
  if (!entry) {
    let checkpoint = checkpoints.get(task.client.model);
    if (!checkpoint) checkpoints.set(task.client.model, (checkpoint = loadCheckpoint(task.client.model)));
    const data = readDataDir(task.client.dataDir);
    const options = { seqLen: task.client.seqLen, threads: 1, cloudUrl };
    entry = { checkpoint: await checkpoint, data, evaluator: new ClientEvaluator(await checkpoint, data, options) };
    loaded.set(key, entry);
  }
  return entry;
}

async function federate(task: FederateTask): Promise<void> {
  const { client } = task;
  const { evaluator } = await evaluatorFor(task, task.cloudUrl);
  // the figure of each round's start adapter, scored one at a time beside the training
  let scoring = Promise.resolve();
  let scoringFailed: Error | undefined;
  const scoreRound = (round: number, adapter: LoraAdapter | undefined) => {
    // a failure is kept for the task's result, not left unhandled (that would end the worker and its other clients)
    scoring = scoring
      .then(async () => post({ type: 'heldOut', round, value: (await evaluator.edge(adapter)).value }))
      .catch((error: unknown) => {
        scoringFailed ??= error instanceof Error ? error : new Error(String(error));
      });
  };
  let die: (() => void) | undefined;
  const start = (): Promise<Device> =>
    startDevice({
      serverUrl: task.serverUrl,
      joinToken: task.joinToken,
      home: task.home,
      model: client.model,
      data: client.dataDir,
      tier: client.tier,
      job: task.jobId,
      seqLen: client.seqLen,
      threads: client.threads,
      calibration: task.calibration,
      evaluateRounds: false,
      evaluateAtEnd: false, // this worker scores every method itself, one way
      personalize: task.personalize,
      throttle: task.throttle,
      trainingSeed: task.trainingSeed,
      log: (line) => post({ type: 'log', line }),
      onStep: (round, step, loss) => {
        post({ type: 'step', round, step, loss });
        if (round === task.dieAt?.round && step >= task.dieAt.step && die) die();
      },
      onFrameSent: (event, bytes) => {
        const copy = bytes.slice();
        post({ type: 'frame', event, bytes: copy }, [copy.buffer]);
      },
    });

  let outcome: DeviceOutcome | undefined;
  for (let life = 0; !outcome; life++) {
    const device = await start();
    const { plan } = device.plan;
    if (life === 0)
      post({
        type: 'plan',
        deviceId: device.clientId,
        rank: plan.rank,
        layers: plan.layers ?? null,
        microBatch: device.plan.microBatch,
      });
    device.client.on('round_sent', (sent) => {
      post({
        type: 'round',
        round: sent.start.round,
        rank: sent.start.config.rank,
        clusterId: sent.start.clusterId,
        bytesUp: sent.bytesUp,
        bytesDown: sent.bytesDown,
        accepted: sent.reply.type === 'update_ack' && sent.reply.accepted,
        steps: sent.update.metrics['steps'] ?? 0,
      });
      scoreRound(sent.start.round, sent.start.adapter ? fromWireAdapter(sent.start.adapter) : undefined);
    });
    const died = new Promise<'died'>((resolve) => {
      die = life === 0 && task.dieAt ? () => resolve('died') : undefined;
    });
    let ended: DeviceOutcome | 'died';
    try {
      ended = await Promise.race([device.finished, died]);
    } finally {
      await device.stop(); // its socket and sessions go whether the job ended, it died or it failed
    }
    if (ended === 'died') {
      die = undefined;
      post({ type: 'log', line: `died in round ${task.dieAt?.round} at step ${task.dieAt?.step}; restarting` });
      await sleep(1000);
      continue;
    }
    outcome = ended;
  }
  await scoring;
  if (scoringFailed !== undefined) throw scoringFailed;
  const adapter = outcome.personalization?.adapter;
  if (outcome.status !== 'completed' || !adapter) throw new Error(`job ${task.jobId} ended ${outcome.status}`);
  const edge = await evaluator.edge(adapter);
  const scores: WorkerScores = { edge: edge.value, items: { edge: edge.items } };
  if (task.cloudUrl) {
    const fused = await evaluator.fused(adapter);
    scores.fused = fused.value;
    scores.fusedFallback = fused.fallback;
    scores.items.fused = fused.items;
  }
  post({ type: 'result', scores, ...(outcome.personalization ? { rule: outcome.personalization.rule } : {}) });
}

async function trainAlone(task: LocalTask): Promise<void> {
  const { checkpoint, data, evaluator } = await evaluatorFor(task);
  const trainer = new LocalTrainer({
    checkpoint,
    data,
    seqLen: task.client.seqLen,
    microBatch: task.plan.microBatch,
    threads: task.client.threads,
  });
  post({ type: 'plan', rank: task.plan.rank, layers: task.plan.layers ?? null, microBatch: task.plan.microBatch });
  let adapter = initialAdapter(
    checkpoint.config,
    { rank: task.plan.rank, alpha: task.alpha, targetModules: task.targetModules, layers: task.plan.layers },
    task.seed,
  );
  post({ type: 'heldOut', round: 0, value: (await evaluator.edge(adapter)).value });
  const phases = [...Array.from({ length: task.rounds }, () => task.localSteps), task.extraSteps];
  try {
    for (const [round, steps] of phases.entries()) {
      if (steps === 0) continue;
      const result = await trainer.train({
        start: adapter,
        steps,
        batchSize: task.batchSize,
        learningRate: task.learningRate,
        seed: task.seed * 1000 + round,
        onStep: (step, loss) => post({ type: 'step', round, step, loss }),
      });
      adapter = result.adapter;
      if (round < task.rounds - 1)
        post({ type: 'heldOut', round: round + 1, value: (await evaluator.edge(adapter)).value });
    }
  } finally {
    await trainer.dispose();
  }
  const final = await evaluator.edge(adapter);
  post({ type: 'result', scores: { edge: final.value, items: { edge: final.items } } });
}

async function reference(task: ReferenceTask): Promise<void> {
  const { evaluator } = await evaluatorFor(task, task.cloudUrl);
  const edge = await evaluator.edge();
  const cloud = await evaluator.cloudAlone();
  const fused = await evaluator.fused();
  post({
    type: 'result',
    scores: {
      edge: edge.value,
      cloud: cloud.value,
      fused: fused.value,
      fusedFallback: fused.fallback,
      items: { edge: edge.items, cloud: cloud.items, fused: fused.items },
    },
  });
}

const runners = { federate, local: trainAlone, reference } as Record<
  WorkerTask['kind'],
  (task: WorkerTask) => Promise<void>
>;
parentPort?.on('message', (message: { id: number; task: WorkerTask } | { close: true }) => {
  // between two synchronous ORT runs, never inside one (see WorkerPool.close)
  if ('close' in message) process.exit(0);
  const { id, task } = message;
  void taskIds.run(id, () =>
    runners[task.kind](task).catch((error: unknown) =>
      post({ type: 'error', message: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
    ),
  );
});
