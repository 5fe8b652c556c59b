/**
 * One round of a federation as pure functions, shared by the coordination server and every simulation:
 *
 * - `configureRound`: which clients train, at which rank and layers, from which cluster (Flower's
 *   configure_fit); `startAdapter`: the adapter a client starts from; `roundStartMessage`: what it is sent;
 * - `checkPlan` and `checkAdapter`: whether an update may join the aggregate;
 * - `aggregateRound`: clustering on what each client changed, one aggregate per cluster at the job's
 *   largest rank, the new cluster memberships and the round's metrics.
 *
 * Nothing here schedules, sends, stores or loads a model: callers bring the updates and keep the state.
 */
import {
  type JobSpec,
  type LoraAdapter,
  type LoraFactors,
  type Kernels,
  type Metrics,
  type RankPlan,
  type RoundStart,
  Random,
  adapterModuleShapes,
  loraProductNorm,
  hashString,
  moduleLayer,
  truncateRank,
} from '@floe/shared';
import { canonicalOrder, clusterUpdates } from './clustering.js';
import { refineClusters } from './refinement.js';
import { type UpdateSignature, UpdateSketch, updateSignature } from './sketch.js';
import { sampleClients } from './sampling.js';
import { STRATEGIES } from './strategy.js';
import {
  DEFAULT_MAX_FACTOR_NORM,
  type RobustSpec,
  clipToMedian,
  median,
  robustOptions,
  updateWeight,
} from './robust.js';
import { updateProblems } from './validate.js';

/** The parts of a job the round logic reads. */
export type FederationSpec = Pick<
  JobSpec,
  'strategy' | 'clustering' | 'maxRank' | 'alpha' | 'targetModules' | 'baseModel' | 'clientsPerRound'
> &
  Partial<Pick<JobSpec, 'maxClusters' | 'maxUpdateNorm'>> &
  RobustSpec;

/** A client sampled into a round, with what it was asked to train. */
export interface Assignment {
  clientId: string;
  rank: number;
  clusterId: number;
  /** Layers the client adapts; absent: all. */
  layers?: number[];
}

/** What a federation carries from round to round besides the cluster adapters. */
export interface FederationState {
  /** Cluster centroid per cluster id (normalized sketch space), to place clients new to the job. */
  centroids: [number, number[]][];
  /** Last known cluster of every client that ever took part. */
  clusterOf: Record<string, number>;
  /** Sub-splits found last round, waiting for this round to confirm them (refinement.ts). */
  pendingSplits?: Record<string, string>;
}

export const INITIAL_STATE: FederationState = { centroids: [], clusterOf: {} };

/** Largest Frobenius norm of a module's product (alpha / r) B A that a job accepts by default. */
export const DEFAULT_MAX_UPDATE_NORM = 1e4;

export interface Candidate {
  clientId: string;
  /** What the device planned (rank, layers); absent: the job's largest rank on every layer. */
  plan?: RankPlan | undefined;
}

/**
 * Samples up to `clientsPerRound` of `candidates` (reproducibly for `key`) and assigns each its rank
 * (its planned rank up to the job's `maxRank`; fedavg needs one rank, `maxRank`), layers and cluster (its
 * last one, else the lowest cluster that has an adapter).
 */
export function configureRound(
  spec: FederationSpec,
  state: FederationState,
  clusters: readonly number[],
  candidates: readonly Candidate[],
  key: string,
): Assignment[] {
  const plans = new Map(candidates.map((c) => [c.clientId, c.plan]));
  const chosen = sampleClients([...plans.keys()], spec.clientsPerRound, key);
  const defaultCluster = clusters.length > 0 ? Math.min(...clusters) : 0;
  return chosen.map((clientId) => {
    const plan = plans.get(clientId);
    const rank = spec.strategy === 'fedavg' ? spec.maxRank : Math.min(plan?.rank ?? spec.maxRank, spec.maxRank);
    const clusterId = state.clusterOf[clientId] ?? defaultCluster;
    const layers = plan?.layers ? [...plan.layers].sort((a, b) => a - b) : undefined;
    return layers ? { clientId, rank, clusterId, layers } : { clientId, rank, clusterId };
  });
}

export function layersKey(layers: readonly number[] | undefined): string {
  return layers ? [...layers].sort((a, b) => a - b).join(',') : 'all';
}

/** Only the modules of `layers` (all when undefined). */
export function restrictLayers(adapter: LoraAdapter, layers: readonly number[] | undefined): LoraAdapter {
  if (!layers) return adapter;
  const keep = new Set(layers);
  return {
    alpha: adapter.alpha,
    modules: new Map([...adapter.modules].filter(([path]) => keep.has(moduleLayer(path) ?? -1))),
  };
}

/**
 * The adapter every client of a job starts round 0 from, at the job's `maxRank`: PEFT's initialization
 * (A Kaiming-uniform, bound 1/sqrt(in); B = 0, so the model starts as the base) drawn from the job's seed
 * per module. One shared start matters: clients that drew their own random A would send products
 * dominated by their own A, and task-aware clustering would group them by seed instead of by task.
 */
export function initialAdapter(spec: FederationSpec, seed: string): LoraAdapter {
  const modules = new Map<string, LoraFactors>();
  for (const [path, [out, inn]] of adapterModuleShapes(spec.baseModel.architecture, spec.targetModules)) {
    const random = new Random(hashString(`${seed}:${path}`));
    modules.set(path, {
      rank: spec.maxRank,
      inFeatures: inn,
      outFeatures: out,
      A: random.uniformArray(spec.maxRank * inn, 1 / Math.sqrt(inn)),
      B: new Float32Array(out * spec.maxRank),
    });
  }
  return { alpha: spec.alpha, modules };
}

/**
 * What a client of `assignment` starts from: its cluster's stored aggregate (kept at the job's
 * `maxRank`) resized to its rank by the strategy, or before the first aggregate the job's initial
 * adapter cut to its rank (the first rows of A: the same start for every rank); then restricted to
 * the client's layers.
 */
export function startAdapter(
  spec: FederationSpec,
  stored: LoraAdapter | undefined,
  assignment: Assignment,
  initial?: LoraAdapter,
): LoraAdapter | undefined {
  if (stored) return restrictLayers(STRATEGIES[spec.strategy].resize(stored, assignment.rank), assignment.layers);
  if (!initial) return undefined;
  const cut: LoraAdapter = {
    alpha: initial.alpha,
    modules: new Map([...initial.modules].map(([path, f]) => [path, truncateRank(f, assignment.rank)])),
  };
  return restrictLayers(cut, assignment.layers);
}

/** A job as its `round_start` messages describe it. */
export type RoundSpec = FederationSpec & Pick<JobSpec, 'localSteps' | 'learningRate' | 'batchSize'>;

/** The `round_start` asking the client of `assignment` to train from `adapter` (wire form). */
export function roundStartMessage(
  spec: RoundSpec,
  round: { jobId: string; round: number; deadline: number },
  assignment: Assignment,
  adapter: RoundStart['adapter'],
): RoundStart {
  return {
    type: 'round_start',
    ...round,
    clusterId: assignment.clusterId,
    config: {
      baseModel: spec.baseModel,
      targetModules: spec.targetModules,
      rank: assignment.rank,
      alpha: spec.alpha,
      localSteps: spec.localSteps,
      learningRate: spec.learningRate,
      batchSize: spec.batchSize,
    },
    adapter,
  };
}

export interface Refusal {
  code: string;
  message: string;
}

/** Whether the plan an update claims is the one its client was assigned (rank, the job's modules, layers). */
export function checkPlan(spec: FederationSpec, assignment: Assignment, plan: RankPlan): Refusal | undefined {
  if (plan.rank !== assignment.rank) {
    return { code: 'wrong_rank', message: `planned rank ${assignment.rank}, update has rank ${plan.rank}` };
  }
  if ([...plan.targetModules].sort().join(',') !== [...spec.targetModules].sort().join(',')) {
    return { code: 'wrong_modules', message: `the job adapts ${spec.targetModules.join(', ')}` };
  }
  if (layersKey(plan.layers) !== layersKey(assignment.layers)) {
    return { code: 'wrong_layers', message: 'the update adapts other layers than the client planned' };
  }
  return undefined;
}

/** Whether an adapter has exactly the modules and shapes of `assignment`, the job's alpha and a bounded norm. */
export function checkAdapter(spec: FederationSpec, assignment: Assignment, adapter: LoraAdapter): Refusal | undefined {
  const problems = updateProblems(adapter, {
    modules: adapterModuleShapes(spec.baseModel.architecture, spec.targetModules, assignment.layers),
    rank: assignment.rank,
    alpha: spec.alpha,
    maxNorm: spec.maxUpdateNorm ?? DEFAULT_MAX_UPDATE_NORM,
    // fedavg and hetlora average A and B on their own: each factor needs a bound of its own
    ...(spec.strategy === 'flexlora' ? {} : { maxFactorNorm: spec.maxFactorNorm ?? DEFAULT_MAX_FACTOR_NORM }),
  });
  const first = problems[0];
  if (!first) return undefined;
  const text = problems
    .slice(0, 3)
    .map((p) => JSON.stringify(p))
    .join('; ');
  return { code: first.code, message: `${problems.length} problem(s): ${text}` };
}

/** An accepted update on its way into the aggregate. */
export interface RoundUpdate {
  clientId: string;
  /** Aggregation weight: the number of local examples behind the update. */
  numSamples: number;
  adapter: LoraAdapter;
  metrics: Metrics;
  assignment: Assignment;
}

export interface RoundAggregate {
  /** One aggregate per cluster that had updates this round, at the job's `maxRank`. */
  adapters: Map<number, LoraAdapter>;
  /** Cluster of each update, in input order. */
  clusterIds: number[];
  state: FederationState;
  /**
   * Medians of the clients' metrics (`client.<name>`), samples (claims capped); with clustering, the
   * silhouette and the view that split (`cluster_view`: 0 none, 1 direction, 2 profile).
   */
  metrics: Metrics;
}

// one projection for every round and job: sketches of two rounds must be comparable
const sketcher = new UpdateSketch(64, 0);

/**
 * Aggregates a round's accepted updates. With clustering on, each update's change from the adapter it
 * started from (decision 0010) is clustered by direction or by where it acts (clustering.ts), with the
 * previous memberships for stable ids; every cluster is then aggregated by the job's strategy.
 * `stored` gives the aggregate a cluster started this round from.
 */
export async function aggregateRound(
  spec: FederationSpec,
  state: FederationState,
  stored: (clusterId: number) => LoraAdapter | undefined,
  updates: readonly RoundUpdate[],
  round: number,
  kernels: Kernels = {},
): Promise<RoundAggregate> {
  const signature = signer(spec, stored);
  const clustered = spec.clustering
    ? clusterRound(
        spec,
        state,
        updates.map((u) => signature(u)),
        updates.map((u) => u.clientId),
        round,
      )
    : unclustered(state, updates.length);
  const { clusterIds } = clustered;

  const strategy = STRATEGIES[spec.strategy];
  const groups = new Map<number, RoundUpdate[]>();
  updates.forEach((u, i) => {
    const id = clusterIds[i] as number;
    groups.set(id, [...(groups.get(id) ?? []), u]);
  });
  const robust = robustOptions(spec);
  const space = spec.strategy === 'flexlora' ? 'product' : 'factors';
  const adapters = new Map<number, LoraAdapter>();
  for (const [clusterId, members] of groups) {
    {
      const clipped =
        spec.clipUpdates === 'median'
          ? clipToMedian(
              members.map((u) => u.adapter),
              space,
              (f) => loraProductNorm(f, spec.alpha),
            )
          : members.map((u) => u.adapter);
      const weighted = members.map((u, i) => ({
        clientId: u.clientId,
        numSamples: updateWeight(spec, u.numSamples),
        adapter: clipped[i] as LoraAdapter,
      }));
      const aggregate = await strategy.aggregate(weighted, spec.alpha, {
        robust,
        maxRank: spec.maxRank,
        kernels,
      });
      adapters.set(clusterId, aggregate.forRank(spec.maxRank));
    }
  }
  return roundResult(spec, state, updates, clustered, adapters);
}

/** What clustering decided for a round's updates (all in one cluster when the job does not cluster). */
export interface RoundClusters {
  clusterIds: number[];
  centroids: Map<number, number[]>;
  pendingSplits: Record<string, string>;
  metrics: Metrics;
}

export function unclustered(state: FederationState, count: number): RoundClusters {
  return {
    clusterIds: Array.from({ length: count }, () => 0),
    centroids: new Map(state.centroids),
    pendingSplits: {},
    metrics: {},
  };
}

/** Each update's signature for clustering: what it changed from the adapter it started from. */
export function signer(
  spec: FederationSpec,
  stored: (clusterId: number) => LoraAdapter | undefined,
): (u: Pick<RoundUpdate, 'adapter' | 'assignment'>) => UpdateSignature {
  const starts = new Map<string, LoraAdapter | undefined>();
  return (u) => {
    const key = `${u.assignment.clusterId}:${u.assignment.rank}:${layersKey(u.assignment.layers)}`;
    if (!starts.has(key)) starts.set(key, startAdapter(spec, stored(u.assignment.clusterId), u.assignment));
    return updateSignature(
      sketcher,
      u.adapter,
      starts.get(key),
      `${u.assignment.rank}:${layersKey(u.assignment.layers)}`,
    );
  };
}

/** Clusters a round's updates by their signatures, with the previous centroids for stable ids. */
export function clusterRound(
  spec: FederationSpec,
  state: FederationState,
  signatures: UpdateSignature[],
  clientIds: string[],
  round: number,
): RoundClusters {
  let centroids = new Map(state.centroids);
  const clustering = clusterUpdates(signatures, {
    maxClusters: Math.min(spec.maxClusters ?? 8, signatures.length),
    previous: centroids,
    previousIds: clientIds.map((id) => state.clusterOf[id]),
    seed: round,
  });
  centroids = new Map([...centroids, ...clustering.centroids]);
  // the sub-split test (its first medoid, its shuffles) depends on its input's order: give it the
  // canonical one, so that a round's clusters are a function of its updates
  const order = canonicalOrder(signatures);
  const refined = refineClusters({
    signatures: order.map((i) => signatures[i]!),
    clientIds: order.map((i) => clientIds[i]!),
    clusterIds: order.map((i) => clustering.ids[i]!),
    pending: state.pendingSplits ?? {},
    usedIds: [...Object.values(state.clusterOf), ...centroids.keys()],
    seed: round,
  });
  const clusterIds = new Array<number>(signatures.length);
  order.forEach((original, position) => (clusterIds[original] = refined.clusterIds[position]!));
  for (const id of refined.created) {
    centroids.set(id, meanDirection(signatures.filter((_, i) => clusterIds[i] === id).map((s) => s.sketch)));
  }
  return {
    clusterIds,
    centroids,
    pendingSplits: refined.pending,
    metrics: {
      silhouette: clustering.silhouette,
      cluster_view: { none: 0, direction: 1, profile: 2 }[clustering.view],
      subsplits: refined.created.length,
    },
  };
}

/** The round's aggregate from its cluster adapters: memberships, state and metrics. */
export function roundResult(
  spec: FederationSpec,
  state: FederationState,
  updates: readonly Pick<RoundUpdate, 'clientId' | 'numSamples' | 'metrics'>[],
  clustered: RoundClusters,
  adapters: Map<number, LoraAdapter>,
): RoundAggregate {
  const { clusterIds, centroids, pendingSplits } = clustered;
  const metrics: Metrics = { ...medianMetrics(updates), ...clustered.metrics };
  const clusterOf = { ...state.clusterOf };
  updates.forEach((u, i) => (clusterOf[u.clientId] = clusterIds[i] as number));
  metrics.samples = updates.reduce((n, u) => n + updateWeight({ ...spec, weighting: 'samples' }, u.numSamples), 0);
  const next: FederationState = { centroids: [...centroids], clusterOf };
  if (Object.keys(pendingSplits).length > 0) next.pendingSplits = pendingSplits;
  return { adapters, clusterIds, state: next, metrics };
}

/** The normalized mean of normalized sketches: a cluster's centroid in the direction view. */
function meanDirection(sketches: readonly Float64Array[]): number[] {
  const out = new Array<number>(sketches[0]?.length ?? 0).fill(0);
  for (const sketch of sketches) {
    const norm = Math.hypot(...sketch) || 1;
    sketch.forEach((x, k) => (out[k] = (out[k] as number) + x / norm));
  }
  const norm = Math.hypot(...out) || 1;
  return out.map((x) => x / norm);
}

/**
 * The median over clients of every metric they reported, as `client.<name>` (at most 24 names). Not a
 * sample-weighted mean: a client's claimed count must not steer it, and one extreme value (1e308) can
 * neither move it far nor overflow it.
 */
function medianMetrics(updates: readonly { metrics: Metrics }[]): Metrics {
  const values = new Map<string, number[]>();
  for (const u of updates) {
    for (const [name, value] of Object.entries(u.metrics)) values.set(name, [...(values.get(name) ?? []), value]);
  }
  return Object.fromEntries(
    [...values].slice(0, 24).map(([name, all]) => [`client.${name}`.slice(0, 64), median(all)]),
  );
}
