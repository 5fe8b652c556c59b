/**
 * `pnpm simulate --scenario offload`: the edge model learns when to ask the cloud, against baselines,
 * all on arithmetic with the cloud stand-in as a process on loopback.
 *
 * 1. Problems: training problems from general:train, held-out ones from general:test (disjoint by
 *    construction, checked by overlap). The cloud answers every held-out problem once (cached).
 * 2. Stage 1 (task tuning) gives one adapter that every method starts from.
 * 3. The router learns the task-tuned model's failures on the training problems.
 * 4. GAPG and GRPO train from the task-tuned adapter with the same reward and steps.
 * 5. Every method answers the held-out problems under each budget (the overflow locally); intervals by
 *    bootstrap over problems.
 */
import { type CloudProcess, spawnCloudProcess } from '@floe/cloud-llm';
import {
  CloudAnswers,
  CloudClient,
  PrivacyGuard,
  type Reply,
  RlTrainer,
  type RlStep,
  Router,
  askProbabilities,
  bootstrap,
  greedyReplies,
  randomWishes,
  taskTune,
  underBudget,
} from '@floe/edge-client';
import { OrtLlama, loadCheckpoint } from '@floe/model';
import { type LoraAdapter, Random } from '@floe/shared';
import { type Example, arithmeticDifficulty, arithmeticTask } from '@floe/tasks';
import type { OffloadScenario } from './scenario.js';
import { thisMachine } from '../report/schema.js';
import type { OffloadReport } from './report.js';

export interface OffloadObserver {
  line(text: string): void;
}

/** Methods that may call the cloud under a budget, and the references that do not or always do. */
export const BUDGETED = ['gapg', 'router', 'random', 'grpo'] as const;
export const REFERENCES = ['taskTuned', 'local', 'cloud'] as const;

const correctOf = (replies: readonly Reply[], problems: readonly Example[]) =>
  replies.map((r, i) => r.kind === 'answer' && r.answer === problems[i]!.answer);

export async function runOffload(scenario: OffloadScenario, observer: OffloadObserver): Promise<OffloadReport> {
  const started = performance.now();
  const wall: Record<string, number> = {};
  const timed = async <T>(name: string, run: () => Promise<T>): Promise<T> => {
    const from = performance.now();
    observer.line(`${name}: started`);
    try {
      return await run();
    } finally {
      wall[name] = (performance.now() - from) / 1000;
      observer.line(`${name}: ${wall[name].toFixed(0)} s`);
    }
  };

  const { general } = arithmeticTask({ seed: scenario.seed });
  const random = new Random(scenario.seed + 11);
  const train = random.shuffled(general.train.examples ?? []).slice(0, scenario.trainProblems);
  const held = random.shuffled(general.test.examples ?? []).slice(0, scenario.evalProblems);
  const trainPrompts = new Set(train.map((p) => p.prompt));
  const overlap = held.filter((p) => trainPrompts.has(p.prompt)).length;
  if (overlap > 0) throw new Error(`${overlap} held-out problems are also training problems`);

  const checkpoint = await loadCheckpoint(scenario.edgeModel);
  let cloudProcess: CloudProcess | undefined;
  const sessions: { release(): Promise<void> }[] = [];
  let routerToDispose: Router | undefined;
  try {
    observer.line('starting the cloud stand-in on loopback');
    cloudProcess = await spawnCloudProcess(['--model', scenario.cloudModel, '--host', '127.0.0.1', '--port', '0']);
    const client = new CloudClient(
      { baseURL: `${cloudProcess.url}/v1`, apiKey: 'none', model: 'floe-cloud', timeoutMs: 60_000 },
      new PrivacyGuard({ policy: 'block' }),
    );
    const cloud = new CloudAnswers(client, { concurrency: 8 });
    const cloudCorrect = await timed('cloud answers to the held-out problems', async () => {
      // a failed call is retried once; a problem the cloud still cannot answer would count as its error
      // in every method, so the run stops instead
      const first = await Promise.all(held.map((p) => cloud.correct(p)));
      const second = await Promise.all(
        held.map((p, i) => (first[i] === undefined ? cloud.correct(p) : Promise.resolve(first[i]))),
      );
      const missing = second.filter((v) => v === undefined).length;
      if (missing > 0) throw new Error(`the cloud stand-in gave no answer to ${missing} held-out problems`);
      return second as boolean[];
    });

    const taskTuned = await timed('stage 1: task tuning', () =>
      taskTune({
        checkpoint,
        problems: train,
        helpShare: scenario.helpShare,
        steps: scenario.taskTuningSteps,
        seed: scenario.seed,
        onStep: (step, loss) => {
          if (step % 50 === 0 || step === scenario.taskTuningSteps) {
            observer.line(`  task tuning step ${step}/${scenario.taskTuningSteps}: loss ${loss.toFixed(3)}`);
          }
        },
      }),
    );
    const model = await OrtLlama.create(checkpoint.config, checkpoint.weights, {
      loraModules: [...taskTuned.modules.keys()].sort(),
    });
    sessions.push(model);
    const replies = (adapter: LoraAdapter, problems: readonly Example[], help: boolean) =>
      greedyReplies(
        model,
        adapter,
        problems.map((p) => p.prompt),
        { help },
      );

    const taskTunedLocal = correctOf(await replies(taskTuned, held, false), held);
    const router = await timed('router', async () => {
      const failed = correctOf(await replies(taskTuned, train, false), train).map((ok) => !ok);
      return Router.train(
        train.map((p) => p.prompt),
        failed,
        { seed: scenario.seed },
      );
    });
    routerToDispose = router;
    const routerScores = router.scores(held.map((p) => p.prompt));

    const rl = async (algorithm: 'gapg' | 'grpo') => {
      const trainer = await RlTrainer.create({
        checkpoint,
        start: taskTuned,
        problems: train,
        cloud,
        algorithm,
        group: scenario.group,
        promptsPerStep: scenario.promptsPerStep,
        learningRate: scenario.rlLearningRate,
        reward: scenario.reward,
        seed: scenario.seed,
      });
      try {
        for (let step = 0; step < scenario.rlSteps; step++) {
          const s = await trainer.next();
          if (s.step % 5 === 0 || s.step === scenario.rlSteps)
            observer.line(`  ${algorithm} ${describeStep(s, scenario.rlSteps)}`);
        }
        return { adapter: trainer.adapter(), history: [...trainer.history] };
      } finally {
        await trainer.dispose();
      }
    };
    const gapg = await timed('stage 2: GAPG', () => rl('gapg'));
    const grpo = await timed('baseline: GRPO', () => rl('grpo'));

    const evaluated = await timed('held-out answers', async () => {
      const trainPrompts = train.map((p) => p.prompt);
      const heldPrompts = held.map((p) => p.prompt);
      const policy = async (adapter: LoraAdapter) => ({
        asks: (await replies(adapter, held, true)).map((r) => r.kind === 'help'),
        askProbability: await askProbabilities(model, adapter, heldPrompts),
        trainingAsks: (await replies(adapter, train, true)).map((r) => r.kind === 'help'),
        trainingAskProbability: await askProbabilities(model, adapter, trainPrompts),
        local: correctOf(await replies(adapter, held, false), held),
      });
      return { gapg: await policy(gapg.adapter), grpo: await policy(grpo.adapter) };
    });
    /**
     * What an RL policy asks the cloud for at a budget: what it asks on its own and, when that is less
     * than the budget on the training prompts, also the prompts it is most inclined to ask about: its
     * probability of opening the tag above the level at which its asks and these together reach the
     * budget's share of training prompts. A policy that asks for more than the budget gets only its own
     * asks (the budget cuts them in arrival order).
     */
    const policyWants = (p: (typeof evaluated)['gapg'], budget: number) => {
      const own = p.trainingAsks.filter(Boolean).length;
      const room = Math.floor(budget * train.length) - own;
      if (room <= 0) return p.asks;
      const others = p.trainingAskProbability.filter((_, i) => !p.trainingAsks[i]).sort((a, b) => b - a);
      const level = others[Math.min(others.length - 1, room - 1)] as number;
      return p.asks.map((asked, i) => asked || (p.askProbability[i] as number) >= level);
    };

    const n = held.length;
    const atBudget = (budget: number) => ({
      gapg: underBudget(policyWants(evaluated.gapg, budget), evaluated.gapg.local, cloudCorrect, budget),
      router: underBudget(
        routerScores.map((s) => s > router.threshold(budget)),
        taskTunedLocal,
        cloudCorrect,
        budget,
      ),
      random: underBudget(randomWishes(n, budget, scenario.seed), taskTunedLocal, cloudCorrect, budget),
      grpo: underBudget(policyWants(evaluated.grpo, budget), evaluated.grpo.local, cloudCorrect, budget),
    });
    const share = (xs: readonly boolean[]) => xs.filter(Boolean).length / Math.max(1, xs.length);
    const main = atBudget(scenario.budget);
    const correct: Record<string, readonly boolean[]> = {
      ...Object.fromEntries(BUDGETED.map((m) => [m, main[m].correct])),
      taskTuned: taskTunedLocal,
      local: evaluated.gapg.local,
      cloud: cloudCorrect,
    };
    const intervals = bootstrap(
      correct,
      [
        ['gapg', 'router'],
        ['router', 'random'],
        ['random', 'taskTuned'],
        ['gapg', 'random'],
        ['gapg', 'grpo'],
      ],
      { seed: scenario.seed },
    );
    const curve = scenario.curve.flatMap((budget) => {
      const outcome = atBudget(budget);
      return [
        ...BUDGETED.map((method) => ({
          budget,
          method,
          accuracy: outcome[method].accuracy,
          callRatio: outcome[method].callRatio,
        })),
        { budget, method: 'taskTuned', accuracy: share(taskTunedLocal), callRatio: 0 },
        { budget, method: 'local', accuracy: share(evaluated.gapg.local), callRatio: 0 },
        { budget, method: 'cloud', accuracy: share(cloudCorrect), callRatio: 1 },
      ];
    });
    return {
      scenario: 'offload',
      byKind: byKind(held, {
        taskTuned: taskTunedLocal,
        cloud: cloudCorrect,
        offloaded: Object.fromEntries(BUDGETED.map((m) => [m, main[m].offloaded])),
        asks: { gapg: evaluated.gapg.asks, grpo: evaluated.grpo.asks },
        askProbability: { gapg: evaluated.gapg.askProbability, grpo: evaluated.grpo.askProbability },
      }),
      config: { ...scenario },
      machine: thisMachine(),
      problems: { train: train.length, heldOut: n, overlap: 0 },
      budget30: {
        budget: scenario.budget,
        systemAccuracy: {
          gapg: main.gapg.accuracy,
          router: main.router.accuracy,
          random: main.random.accuracy,
          grpo: main.grpo.accuracy,
          taskTuned: share(taskTunedLocal),
          local: share(evaluated.gapg.local),
          cloud: share(cloudCorrect),
        },
        callRatio: {
          gapg: main.gapg.callRatio,
          router: main.router.callRatio,
          random: main.random.callRatio,
          grpo: main.grpo.callRatio,
        },
        /** What each RL policy asks for before the budget cuts it. */
        askRatio: { gapg: share(evaluated.gapg.asks), grpo: share(evaluated.grpo.asks) },
        intervals,
      },
      curve,
      grpoCallRatioTrace: grpo.history.map((s) => s.callRatio),
      gapgTrace: gapg.history,
      grpoTrace: grpo.history,
      cloudCalls: { ...cloud.stats, prompts: cloud.size },
      wallSeconds: { ...wall, total: (performance.now() - started) / 1000 },
    };
  } finally {
    routerToDispose?.dispose();
    await Promise.all(sessions.map((s) => s.release()));
    await cloudProcess?.stop();
  }
}

/**
 * Each kind of held-out problem (operation and digits): how often the edge and the cloud get it right,
 * and where each method spends its budget. It shows why an ordering holds or not: offloading pays only
 * on kinds the edge gets wrong and the cloud right.
 */
function byKind(
  problems: readonly Example[],
  outcomes: {
    taskTuned: readonly boolean[];
    cloud: readonly boolean[];
    offloaded: Record<string, readonly boolean[]>;
    asks: Record<string, readonly boolean[]>;
    askProbability: Record<string, readonly number[]>;
  },
) {
  const kinds = new Map<string, number[]>();
  problems.forEach((p, i) => {
    const kind = arithmeticDifficulty(p.prompt).replace(' ', '');
    const indices = kinds.get(kind) ?? [];
    indices.push(i);
    kinds.set(kind, indices);
  });
  const meanOver = (indices: readonly number[], values: readonly (boolean | number)[]) =>
    indices.reduce((sum, i) => sum + Number(values[i]), 0) / indices.length;
  const each = (indices: readonly number[], record: Record<string, readonly (boolean | number)[]>) =>
    Object.fromEntries(Object.entries(record).map(([method, values]) => [method, meanOver(indices, values)]));
  const order = (kind: string) => `${'+-*'.indexOf(kind[0] ?? '')}${kind.slice(1)}`;
  return [...kinds.entries()]
    .sort(([a], [b]) => order(a).localeCompare(order(b)))
    .map(([kind, indices]) => ({
      kind,
      problems: indices.length,
      taskTuned: meanOver(indices, outcomes.taskTuned),
      cloud: meanOver(indices, outcomes.cloud),
      offloaded: each(indices, outcomes.offloaded),
      asks: each(indices, outcomes.asks),
      askProbability: each(indices, outcomes.askProbability),
    }));
}

export function describeStep(s: RlStep, steps: number): string {
  return (
    `step ${s.step}/${steps}: reward ${s.reward.toFixed(3)}, call ratio ${s.callRatio.toFixed(2)}, ` +
    `local accuracy ${s.accuracy.toFixed(2)}, kept ${s.kept}/${s.drawn} prompts, ${s.seconds.toFixed(1)} s`
  );
}
