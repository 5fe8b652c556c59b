import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  AdamW,
  Random,
  TfjsLlama,
  TfjsTrainer,
  adapterFromTfjs,
  clipByGlobalNorm,
  initLora,
  selectTfjsBackend,
  tfjsLora,
  type TrainBatch,
} from '../src/index.js';
import { randomIds, randomLora, randomWeights, tinyConfig } from './helpers.js';

beforeAll(async () => {
  await selectTfjsBackend();
});

const config = tinyConfig({ hidden_size: 16, intermediate_size: 24, num_attention_heads: 2, num_key_value_heads: 1 });
const weights = randomWeights(config, 31);

function batchOf(seed: number, batch = 2, seq = 10): TrainBatch {
  const random = new Random(seed);
  const ids = randomIds(random, batch, seq + 1, 256);
  return {
    inputIds: ids.map((r) => r.slice(0, -1)),
    targets: ids.map((r) => r.slice(1)),
    weights: ids.map((r) => r.slice(1).map((_, t) => (t % 3 === 0 ? 0 : 1 + (t % 2)))),
  };
}

describe('tfjs training', () => {
  it('LoRA gradients match central finite differences of the loss', async () => {
    const model = new TfjsLlama(config, weights);
    const lora = tfjsLora(config, randomLora(config, 2, ['q_proj', 'v_proj', 'down_proj'], 32), true);
    const trainer = new TfjsTrainer(model, { learningRate: 1e-3, lora });
    const batch = batchOf(33);
    const { grads } = trainer.gradients(batch);
    const params = [...lora.values()].flatMap((m) => [m.A as tf.Variable, m.B as tf.Variable]);
    const random = new Random(34);
    let checked = 0;
    for (const [k, p] of params.entries()) {
      const g = grads[k]!.dataSync();
      for (let n = 0; n < 3; n++) {
        const i = random.integer(p.size);
        const original = p.dataSync().slice();
        const at = (delta: number) => {
          const data = original.slice();
          data[i]! += delta;
          p.assign(tf.tensor(data, p.shape));
          return trainer.evaluateSync(batch);
        };
        const eps = 1e-2;
        const numeric = (at(eps) - at(-eps)) / (2 * eps);
        p.assign(tf.tensor(original, p.shape));
        expect(Math.abs(numeric - g[i]!)).toBeLessThan(2e-3 + 2e-2 * Math.abs(numeric));
        checked++;
      }
    }
    expect(checked).toBe(params.length * 3);
    expect(params.length).toBe(2 * 3 * config.num_hidden_layers);
    tf.dispose(grads);
    await trainer.dispose();
  });

  it('tokens with weight 0 do not affect the loss; weights scale the others', async () => {
    const model = new TfjsLlama(config, weights);
    const trainer = new TfjsTrainer(model, {
      learningRate: 1e-3,
      lora: tfjsLora(config, initLora(config, { r: 2, lora_alpha: 4, target_modules: ['q_proj'] })),
    });
    const batch = batchOf(35);
    const changed = { ...batch, targets: batch.targets.map((r) => r.map((t, i) => (i % 3 === 0 ? (t + 1) % 256 : t))) };
    expect(trainer.evaluateSync(changed)).toBeCloseTo(trainer.evaluateSync(batch), 6);
    const doubled = { ...batch, weights: batch.weights.map((r) => r.map((w) => w * 2)) };
    expect(trainer.evaluateSync(doubled)).toBeCloseTo(trainer.evaluateSync(batch), 6);
    await trainer.dispose();
  });

  it('LoRA fine-tuning from PEFT init (B = 0) overfits a batch and changes only the adapter', async () => {
    const model = new TfjsLlama(config, weights);
    const adapter = initLora(
      config,
      { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'up_proj', 'down_proj'] },
      36,
    );
    const lora = tfjsLora(config, adapter, true);
    const trainer = new TfjsTrainer(model, { learningRate: 2e-2, maxGradNorm: 1, lora });
    const batch = batchOf(37);
    const first = trainer.stepSync(batch).loss;
    let last = first;
    for (let i = 0; i < 40; i++) last = trainer.stepSync(batch).loss;
    expect(last).toBeLessThan(first * 0.7);
    const trained = adapterFromTfjs(lora, 8);
    expect([...trained.modules.values()].some((f) => f.B.some((x) => x !== 0))).toBe(true);
    expect(model.weights().get('model.layers.0.self_attn.q_proj.weight')!.data).toEqual(
      weights.get('model.layers.0.self_attn.q_proj.weight')!.data,
    );
    await trainer.dispose();
  });

  it('full-model training (pretraining) lowers the loss, embeddings included', async () => {
    const model = new TfjsLlama(config, weights, true);
    const trainer = new TfjsTrainer(model, { learningRate: 1e-2, weightDecay: 0.01, maxGradNorm: 1 });
    const batch = batchOf(38);
    const first = trainer.stepSync(batch).loss;
    let last = first;
    for (let i = 0; i < 20; i++) last = trainer.stepSync(batch).loss;
    expect(last).toBeLessThan(first * 0.8);
    const embed = model.weights().get('model.embed_tokens.weight')!.data;
    expect(embed).not.toEqual(weights.get('model.embed_tokens.weight')!.data);
    await trainer.dispose();
  });
});

describe('optimizer pieces', () => {
  it('AdamW takes a first step of lr * sign(g), plus decoupled decay on matrices only', () => {
    const matrix = tf.variable(tf.tensor2d([1, -2, 3], [1, 3]));
    const gain = tf.variable(tf.tensor1d([1, -2, 3]));
    const opt = new AdamW({ learningRate: 0.1, weightDecay: 0.5 });
    opt.apply([matrix, gain], [tf.tensor2d([0.3, -4, 0], [1, 3]), tf.tensor1d([0.3, -4, 0])]);
    // m_hat = g, v_hat = g^2 -> m_hat / (|g| + eps) = sign(g); decay adds wd * p for matrices
    const [a, b, c] = matrix.dataSync();
    expect(a).toBeCloseTo(1 - 0.1 * (1 + 0.5 * 1), 5);
    expect(b).toBeCloseTo(-2 - 0.1 * (-1 + 0.5 * -2), 5);
    expect(c).toBeCloseTo(3 - 0.1 * (0 + 0.5 * 3), 5);
    expect([...gain.dataSync()].map((x) => +x.toFixed(5))).toEqual([0.9, -1.9, 3]);
    opt.dispose();
    tf.dispose([matrix, gain]);
  });

  it('clips to the global norm and reports the norm before clipping', () => {
    const grads = [tf.tensor1d([3, 0]), tf.tensor1d([0, 4])];
    const { grads: clipped, norm } = clipByGlobalNorm(grads, 1);
    expect(norm).toBeCloseTo(5, 6);
    const after = Math.hypot(...clipped.flatMap((g) => [...g.dataSync()]));
    expect(after).toBeCloseTo(1, 4);
    expect(clipByGlobalNorm(grads, 10).grads).toBe(grads);
  });
});
