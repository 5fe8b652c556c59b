/**
 * The router baseline of offloading: a classifier on the prompt alone that predicts whether the edge
 * model will fail it, trained on the same problems RL trains on (labels: the task-tuned model's own
 * greedy answers). At a budget b it offloads the prompts it scores above the (1 - b) quantile of its
 * training scores. A small tfjs network (one hidden layer) on features of the arithmetic prompt; what
 * it cannot see is whether the cloud would do better, which is what GAPG's reward teaches.
 */
import * as tf from '@tensorflow/tfjs';
import { selectTfjsBackend } from '@floe/model';
import { Random } from '@floe/shared';

const PROBLEM = /^(\d+)([+\-*])(\d+)=$/;
const OPERATIONS = ['+', '-', '*'];
const MAX_DIGITS = 4;

/** Operation, each operand's digit count and leading magnitude, and operation x largest digit count. */
export function promptFeatures(prompt: string): number[] {
  const features = new Array<number>(3 + 2 * MAX_DIGITS + 2 + 3 * MAX_DIGITS).fill(0);
  const match = PROBLEM.exec(prompt);
  if (!match) return features;
  const [a, op, b] = [match[1]!, match[2]!, match[3]!];
  const o = OPERATIONS.indexOf(op);
  const digits = (n: string) => Math.min(n.length, MAX_DIGITS);
  features[o] = 1;
  features[3 + digits(a) - 1] = 1;
  features[3 + MAX_DIGITS + digits(b) - 1] = 1;
  features[3 + 2 * MAX_DIGITS] = Number(a) / 10 ** a.length;
  features[3 + 2 * MAX_DIGITS + 1] = Number(b) / 10 ** b.length;
  features[3 + 2 * MAX_DIGITS + 2 + o * MAX_DIGITS + Math.max(digits(a), digits(b)) - 1] = 1;
  return features;
}

export interface RouterOptions {
  epochs?: number;
  seed?: number;
}

export class Router {
  private constructor(
    private readonly model: tf.Sequential,
    /** Scores of the training prompts, sorted, to turn a budget into a threshold. */
    private readonly trainingScores: number[],
  ) {}

  /** Trains on `prompts` labelled 1 where the edge failed. */
  static async train(
    prompts: readonly string[],
    failed: readonly boolean[],
    options: RouterOptions = {},
  ): Promise<Router> {
    if (prompts.length === 0 || prompts.length !== failed.length) throw new Error('the router needs labelled prompts');
    await selectTfjsBackend();
    const seed = options.seed ?? 0;
    const features = prompts.map(promptFeatures);
    const model = tf.sequential({
      layers: [
        tf.layers.dense({
          inputShape: [features[0]!.length],
          units: 16,
          activation: 'relu',
          kernelInitializer: tf.initializers.glorotUniform({ seed }),
        }),
        tf.layers.dense({
          units: 1,
          activation: 'sigmoid',
          kernelInitializer: tf.initializers.glorotUniform({ seed }),
        }),
      ],
    });
    model.compile({ optimizer: tf.train.adam(0.01), loss: 'binaryCrossentropy' });
    // tfjs shuffles with Math.random; a seeded order per epoch keeps the router reproducible
    const random = new Random(seed + 1);
    for (let epoch = 0; epoch < (options.epochs ?? 40); epoch++) {
      const order = random.shuffled([...prompts.keys()]);
      const x = tf.tensor2d(order.map((i) => features[i]!));
      const y = tf.tensor2d(order.map((i) => [failed[i] ? 1 : 0]));
      await model.fit(x, y, { epochs: 1, batchSize: 64, shuffle: false, verbose: 0 });
      tf.dispose([x, y]);
    }
    const router = new Router(model, []);
    router.trainingScores.push(...router.scores(prompts).sort((a, b) => a - b));
    return router;
  }

  /** The predicted probability that the edge fails each prompt. */
  scores(prompts: readonly string[]): number[] {
    return tf.tidy(() => {
      const out = this.model.predict(tf.tensor2d(prompts.map(promptFeatures))) as tf.Tensor;
      return Array.from(out.dataSync());
    });
  }

  /** The score above which a prompt is offloaded so that a `budget` share of training prompts would be. */
  threshold(budget: number): number {
    const n = this.trainingScores.length;
    const index = Math.min(n - 1, Math.max(0, Math.floor((1 - budget) * n)));
    return this.trainingScores[index] as number;
  }

  dispose(): void {
    this.model.dispose();
  }
}
