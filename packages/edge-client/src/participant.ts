/**
 * A round participant turns a `round_start` into an update (Flower's fit): the LoRA participant trains
 * the round's adapter at the assigned rank on local data; synthetic devices (simulator) are another.
 * Only the adapter, the number of local examples and scalar metrics leave the device.
 */
import {
  type LoraAdapter,
  type RankPlan,
  type RoundStart,
  type Update,
  encodeMessage,
  fromWireAdapter,
  hashString,
  toWireAdapter,
} from '@floe/shared';
import { FederationError } from './errors.js';
import { type LocalTrainer, initialAdapter } from './local-trainer.js';

export type UpdateBody = Omit<Update, 'type'>;

export interface RoundParticipant {
  /** The update for `start`; `signal` aborts when the round is no longer worth finishing. */
  onRound(start: RoundStart, signal?: AbortSignal): Promise<UpdateBody>;
}

export interface TrainedRound {
  start: RoundStart;
  adapter: LoraAdapter;
  loss: number;
  steps: number;
  seconds: number;
}

export interface LoraParticipantOptions {
  trainer: LocalTrainer;
  /** The device's plan: its layers are trained, its rank is what it asked for (the server may lower it). */
  plan: RankPlan;
  /** Seeds the order of local batches (and a start drawn here), with the round and, by default, the job. */
  seed: number;
  /**
   * Whether each job draws its own batches (default): the seed is mixed with the job's id. False: every
   * job draws the same for a round, so that a simulation, whose job ids are random, replays from its seed.
   */
  seedPerJob?: boolean;
  /**
   * SHA-256 of the device's checkpoint: rounds of a job over another base model are refused (training
   * them would send the job updates of a model it does not have). Unchecked when absent.
   */
  baseModelSha256?: string;
  /** Seconds kept free before a round's deadline for sending the update (default 2). */
  uploadMarginSec?: number;
  /**
   * A simulated device's link: the round waits as long as its adapter takes to come down and go up at
   * these rates (loopback moves it at once).
   */
  emulateLink?: { uplinkMbps: number; downlinkMbps: number };
  onStep?: (start: RoundStart, step: number, loss: number) => void;
  onTrained?: (round: TrainedRound) => void;
}

export class LoraParticipant implements RoundParticipant {
  constructor(readonly options: LoraParticipantOptions) {}

  async onRound(start: RoundStart, signal?: AbortSignal): Promise<UpdateBody> {
    const { config } = start;
    const { trainer, plan, emulateLink } = this.options;
    const linkDelay = async (bytes: number, mbps: number) => {
      if (emulateLink && mbps > 0) await new Promise((resolve) => setTimeout(resolve, (8000 * bytes) / (mbps * 1e6)));
    };
    await linkDelay(encodeMessage(start).byteLength, emulateLink?.downlinkMbps ?? 0);
    const expected = this.options.baseModelSha256;
    if (expected && start.config.baseModel.sha256 !== expected) {
      throw new FederationError(
        'wrong_base_model',
        `job ${start.jobId} trains base model ${start.config.baseModel.id} (${start.config.baseModel.sha256.slice(0, 12)}...), this device holds ${expected.slice(0, 12)}...`,
      );
    }
    const seed = hashString(
      this.options.seedPerJob === false
        ? `${this.options.seed}:${start.round}`
        : `${this.options.seed}:${start.jobId}:${start.round}`,
    );
    const adapter = start.adapter
      ? fromWireAdapter(start.adapter)
      : initialAdapter(
          trainer.options.checkpoint.config,
          { rank: config.rank, alpha: config.alpha, targetModules: config.targetModules, layers: plan.layers },
          seed,
        );
    const margin = (this.options.uploadMarginSec ?? 2) * 1000;
    const result = await trainer.train({
      start: adapter,
      steps: config.localSteps,
      batchSize: config.batchSize,
      learningRate: config.learningRate,
      seed,
      // a straggler sends what it has rather than nothing: stop when the next step would miss the deadline
      shouldStop: (_, secondsPerStep) =>
        signal?.aborted === true || Date.now() + secondsPerStep * 1000 + margin > start.deadline,
      onStep: (step, loss) => this.options.onStep?.(start, step, loss),
    });
    this.options.onTrained?.({ start, ...result });
    const update: UpdateBody = {
      jobId: start.jobId,
      round: start.round,
      numSamples: trainer.numExamples,
      plan: {
        rank: config.rank,
        targetModules: config.targetModules,
        ...(plan.layers ? { layers: [...plan.layers] } : {}),
      },
      adapter: toWireAdapter(result.adapter),
      metrics: { loss: result.loss, steps: result.steps, train_seconds: result.seconds },
    };
    await linkDelay(encodeMessage({ type: 'update', ...update }).byteLength, emulateLink?.uplinkMbps ?? 0);
    return update;
  }
}
