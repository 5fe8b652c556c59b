/**
 * Synthetic devices: real protocol clients (enrollment, socket.io, framed msgpack) whose "training"
 * draws an adapter from a known distribution instead of running the model. They exercise the server
 * at scale (tests, `pnpm bench server`) where what matters is the coordination, not the learning;
 * each distribution is a fixed random adapter direction plus per-client noise, so updates of two
 * distributions are separable and those of one are not.
 */
import { ServerConnection, enroll } from '@floe/edge-client';
import {
  type DeviceProfile,
  type LoraAdapter,
  type LoraFactors,
  type Update,
  type RankPlan,
  type RoundEnd,
  type RoundStart,
  type UpdateAck,
  type ErrorMessage,
  Random,
  hashString,
  adapterModuleShapes,
  fromWireAdapter,
  toWireAdapter,
} from '@floe/shared';

export interface UpdateDistribution {
  /** Which distribution: its shared direction is drawn from this seed. */
  seed: number;
  /** Standard deviation of the shared direction's entries. */
  scale: number;
  /** Standard deviation of each client's own noise, relative to `scale`. */
  noise: number;
  /**
   * Weight of a direction that every distribution shares (default 0): real updates of different tasks
   * share a component, so with weight w the products of two distributions have cosine about
   * (w^2 / (w^2 + 1))^2 (0.6 at w = 1.85) instead of the near 0 of independent random directions.
   */
  common?: number;
}

const COMMON_SEED = 0x5eed;

/**
 * An adapter for `start` (the round's modules, rank and alpha): the adapter the round started from
 * (zero in round 0) plus a step drawn from `distribution`, with client-specific noise from `clientSeed`,
 * as if local training had moved it in its data's direction.
 */
export function sampleAdapter(
  start: RoundStart,
  layers: readonly number[] | undefined,
  distribution: UpdateDistribution,
  clientSeed: number,
): LoraAdapter {
  const { config } = start;
  const shapes = adapterModuleShapes(config.baseModel.architecture, config.targetModules, layers);
  const base = start.adapter ? fromWireAdapter(start.adapter) : undefined;
  const modules = new Map<string, LoraFactors>();
  for (const [path, [out, inn]] of shapes) {
    // the distribution's direction is rank one, u v^T per module, so devices of every rank share it
    const shared = new Random(distribution.seed * 7919 + hashString(path));
    const everyone = new Random(COMMON_SEED * 7919 + hashString(path));
    const own = new Random(clientSeed * 104_729 + start.round * 31 + hashString(path));
    const w = distribution.common ?? 0;
    const u = Float32Array.from({ length: out }, () => shared.normal() + w * everyone.normal());
    const v = Float32Array.from({ length: inn }, () => shared.normal() + w * everyone.normal());
    const { rank } = config;
    // the noise of every component together weighs the same at any rank, as in trained updates (whose
    // change norms do not grow with the rank): a rank-8 device is no noisier than a rank-2 one
    const noise = distribution.noise / Math.sqrt(rank);
    const A = Float32Array.from({ length: rank * inn }, (_, k) => {
      const direction = k < inn ? (v[k] as number) : 0;
      return distribution.scale * (direction + noise * own.normal());
    });
    const B = Float32Array.from({ length: out * rank }, (_, k) => {
      const direction = k % rank === 0 ? (u[Math.floor(k / rank)] as number) : 0;
      return distribution.scale * (direction + noise * own.normal());
    });
    const from = base?.modules.get(path);
    if (from && from.rank === rank) {
      A.forEach((_, k) => (A[k] = (A[k] as number) + (from.A[k] as number)));
      B.forEach((_, k) => (B[k] = (B[k] as number) + (from.B[k] as number)));
    }
    modules.set(path, { rank, inFeatures: inn, outFeatures: out, A, B });
  }
  return { alpha: config.alpha, modules };
}

export interface SyntheticDeviceOptions {
  serverUrl: string;
  joinToken: string;
  plan: RankPlan;
  distribution: UpdateDistribution;
  clientSeed: number;
  numSamples?: number;
  profile?: DeviceProfile;
  /** Rewrites the update before sending (to test refusals); default sends it as drawn. */
  tamper?: (start: RoundStart, update: Omit<Update, 'type'>) => Omit<Update, 'type'>;
  /** How long it "trains" before answering a round_start (default: it answers at once). */
  answerDelayMs?: (start: RoundStart) => number;
}

export interface SyntheticDevice {
  clientId: string;
  credential: string;
  connection: ServerConnection;
  acks: (UpdateAck | ErrorMessage)[];
  rounds: RoundStart[];
  ends: RoundEnd[];
  stop(): void;
}

export const DEFAULT_PROFILE: DeviceProfile = {
  tier: 'medium',
  memoryMiB: 2048,
  computeGflops: 10,
  uplinkMbps: 20,
  downlinkMbps: 50,
  roundBudgetSec: 60,
};

/** Enrolls, connects and answers every round_start with an adapter drawn from its distribution. */
export async function startSyntheticDevice(options: SyntheticDeviceOptions): Promise<SyntheticDevice> {
  const profile = options.profile ?? DEFAULT_PROFILE;
  const { clientId, credential } = await enroll(options.serverUrl, options.joinToken, profile);
  const connection = await ServerConnection.open(options.serverUrl, credential, { profile, plan: options.plan });
  const device: SyntheticDevice = {
    clientId,
    credential,
    connection,
    acks: [],
    rounds: [],
    ends: [],
    stop: () => connection.close(),
  };
  connection.on('round_end', (end) => device.ends.push(end));
  connection.on('round_start', (start) => {
    device.rounds.push(start);
    const adapter = sampleAdapter(start, options.plan.layers, options.distribution, options.clientSeed);
    let update: Omit<Update, 'type'> = {
      jobId: start.jobId,
      round: start.round,
      numSamples: options.numSamples ?? 100,
      plan: { ...options.plan, rank: start.config.rank },
      adapter: toWireAdapter(adapter),
      metrics: { loss: 1 + options.distribution.seed + 1 / (start.round + 1) },
    };
    if (options.tamper) update = options.tamper(start, update);
    const send = () =>
      connection.sendUpdate(update).then(
        (ack) => device.acks.push(ack),
        () => undefined, // the round moved on without us (a timeout); the server counts it as dropped
      );
    const delay = options.answerDelayMs?.(start) ?? 0;
    if (delay > 0) setTimeout(() => void send(), delay);
    else void send();
  });
  return device;
}
