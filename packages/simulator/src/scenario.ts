/**
 * A simulation's scenario: which clients, on which devices, for how long, and what goes wrong. The
 * defaults are the README's main job; `quick` is the CI scenario. A config file holds any subset of the
 * fields (JSON), flags override it, and the whole is checked against this schema before anything runs.
 */
import Type, { type Static } from 'typebox';
import { TIERS } from '@floe/edge-client';
import { TASKS } from '@floe/tasks';

const Share = (description: string) => Type.Number({ minimum: 0, maximum: 1, description });

export const Scenario = Type.Object(
  {
    tasks: Type.Array(Type.Union([Type.Literal('speech'), Type.Literal('email'), Type.Literal('arithmetic')]), {
      minItems: 1,
      uniqueItems: true,
      description: 'tasks whose clients take part',
    }),
    clientsPerTask: Type.Integer({ minimum: 2, maximum: 8, description: 'clients of each task' }),
    tiers: Type.Array(Type.String(), {
      minItems: 1,
      description: `device tiers (${Object.keys(TIERS).join(', ')}), dealt in turn to each task's clients`,
    }),
    rounds: Type.Integer({ minimum: 1, maximum: 100 }),
    localSteps: Type.Integer({ minimum: 1, maximum: 10_000, description: 'local steps per round' }),
    learningRate: Type.Number({ exclusiveMinimum: 0, maximum: 1 }),
    batchSize: Type.Integer({ minimum: 1, maximum: 256 }),
    maxRank: Type.Integer({ minimum: 1, maximum: 64, description: 'rank of the global adapter (FedAvg trains at it)' }),
    alpha: Type.Number({ exclusiveMinimum: 0 }),
    targetModules: Type.Array(Type.String(), { minItems: 1, uniqueItems: true }),
    participation: Type.Number({
      exclusiveMinimum: 0,
      maximum: 1,
      description: 'share of the clients sampled for each round',
    }),
    stragglers: Share('share of the clients that run slower than their plan assumes'),
    stragglerSlowdown: Type.Number({ minimum: 1, description: 'how much slower a straggler runs' }),
    dropouts: Share('share of the clients that die in the middle of one round and restart'),
    mix: Share("share of each client's training data drawn from its task's other clients (0: non-IID as partitioned)"),
    roundDeadlineSec: Type.Number({ exclusiveMinimum: 0, maximum: 86_400 }),
    heldOutBytes: Type.Integer({ minimum: 256, description: 'held-out prose scored per client (bytes)' }),
    heldOutExamples: Type.Integer({ minimum: 10, description: 'held-out examples scored per client (at most)' }),
    seed: Type.Integer({ minimum: 0 }),
    seqLen: Type.Integer({ minimum: 16, maximum: 256, description: 'bytes per training row' }),
    edgeModel: Type.String({ description: 'checkpoint directory of the edge model' }),
    cloudModel: Type.String({ description: 'checkpoint directory of the cloud stand-in' }),
    calibration: Type.Optional(
      Type.String({
        description:
          "a calibration file (runs/.cache/calibration-*.json) to plan with instead of measuring this host; used only when it was measured for the scenario's model and shapes",
      }),
    ),
  },
  { additionalProperties: false },
);
export type Scenario = Static<typeof Scenario>;

export const DEFAULT_SCENARIO: Scenario = {
  tasks: [...TASKS],
  clientsPerTask: 4,
  tiers: ['phone-low', 'phone-high', 'laptop'],
  rounds: 5,
  localSteps: 20,
  learningRate: 3e-3,
  batchSize: 8,
  maxRank: 8,
  alpha: 16,
  targetModules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'],
  participation: 1,
  stragglers: 0,
  stragglerSlowdown: 4,
  dropouts: 0,
  mix: 0,
  roundDeadlineSec: 300,
  heldOutBytes: 16_384,
  heldOutExamples: 100,
  seed: 0,
  seqLen: 128,
  edgeModel: 'models/edge-small',
  cloudModel: 'models/cloud',
};

/**
 * The CI scenario: the default's clients and methods, in fewer steps on less held-out prose, planned with
 * a calibration measured once on the 2-core machine the project is developed on (the plans it gives are
 * bound by the tiers' memory, not their speed), so that CI plans alike on any CPU and skips the probes.
 */
export const QUICK_SCENARIO: Scenario = {
  ...DEFAULT_SCENARIO,
  // three rounds: a cluster's sub-split needs two to be confirmed (decision 0024)
  rounds: 3,
  localSteps: 8,
  heldOutBytes: 4096,
  heldOutExamples: 40,
  calibration: 'packages/simulator/calibration/quick.json',
};

export class ScenarioError extends Error {}

/** What the schema cannot say of a scenario; throws ScenarioError with the reason. */
export function checkScenario(scenario: Scenario): void {
  if (scenario.dropouts > 0 && scenario.rounds < 2) {
    throw new ScenarioError('dropouts need at least 2 rounds (a device dies in a round before the last)');
  }
  const unknownTiers = scenario.tiers.filter((t) => !TIERS[t]);
  if (unknownTiers.length > 0) {
    throw new ScenarioError(`unknown tier ${unknownTiers.join(',')}; known: ${Object.keys(TIERS).join(', ')}`);
  }
}
