import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import type { LoraAdapter } from '@floe/shared';
import {
  type LlamaConfig,
  OrtTrainer,
  Random,
  TfjsLlama,
  TfjsTrainer,
  type TrainBatch,
  createTfjsTrainer,
  createTrainer,
  selectTfjsBackend,
  tfjsLora,
  ByteTokenizer,
  loadAdapter,
  loadCheckpoint,
  saveAdapter,
  saveCheckpoint,
} from '../src/index.js';
import { randomLora, randomWeights, tinyConfig } from './helpers.js';

beforeAll(async () => {
  await selectTfjsBackend();
});

const CONFIGS: { name: string; config: LlamaConfig }[] = [
  {
    name: 'MHA untied',
    config: tinyConfig({ hidden_size: 16, intermediate_size: 24, num_attention_heads: 2, num_key_value_heads: 2 }),
  },
  {
    name: 'GQA 4:2 tied',
    config: tinyConfig({
      hidden_size: 32,
      intermediate_size: 40,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      tie_word_embeddings: true,
    }),
  },
];

function randomBatch(seed: number, rows: number, seq: number): TrainBatch {
  const random = new Random(seed);
  const ids = Array.from({ length: rows }, () => Array.from({ length: seq + 1 }, () => random.integer(256)));
  return {
    inputIds: ids.map((r) => r.slice(0, -1)),
    targets: ids.map((r) => r.slice(1)),
    weights: ids.map((r) => r.slice(1).map((_, t) => (t % 4 === 3 ? 0 : 0.5 + random.next()))),
  };
}

/** max over entries |a - b| / max |b|: the tensor's error relative to its scale. */
function relativeError(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

describe.each(CONFIGS)('ONNX Runtime training graph, $name', ({ config }) => {
  const weights = randomWeights(config, 41);
  const batch = randomBatch(42, 3, 12);

  async function compareWithTfjs(adapter: LoraAdapter | undefined): Promise<number> {
    const ort = await OrtTrainer.create(config, weights, { learningRate: 1e-3, adapter, microBatch: 3, seqLen: 12 });
    const model = new TfjsLlama(config, weights, !adapter);
    const lora = adapter ? tfjsLora(config, adapter, true) : undefined;
    const tfTrainer = new TfjsTrainer(model, { learningRate: 1e-3, ...(lora ? { lora } : {}) });
    const expected = tfTrainer.gradients(batch);
    const { lossSum, weightSum, grads } = await ort.gradients(batch);
    expect(lossSum / weightSum).toBeCloseTo(expected.loss, 4);
    const tfParams = lora ? [...lora.values()].flatMap((m) => [m.A, m.B]) : [...model.params.values()];
    const names = ort.parameters().map((p) => p.tensor);
    expect(names.length).toBe(tfParams.length);
    let worst = 0;
    names.forEach((tensor, i) => {
      const tfGrad = expected.grads[i]!.dataSync() as Float32Array;
      const ortGrad = grads[i]!.map((g) => g / weightSum);
      expect(tensor.shape).toEqual(tfParams[i]!.shape);
      worst = Math.max(worst, relativeError(ortGrad, tfGrad));
    });
    tf.dispose(expected.grads);
    await Promise.all([tfTrainer.dispose(), ort.dispose()]);
    return worst;
  }

  it('LoRA gradients equal tfjs autograd for every trainable tensor (relative error < 1e-3)', async () => {
    const adapter = randomLora(
      config,
      3,
      ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
      43,
    );
    expect(await compareWithTfjs(adapter)).toBeLessThan(1e-3);
  });

  it('full-model gradients (pretraining) equal tfjs autograd for every weight (relative error < 1e-3)', async () => {
    expect(await compareWithTfjs(undefined)).toBeLessThan(1e-3);
  });

  it('gradients match finite differences of the loss on sampled entries', async () => {
    const adapter = randomLora(config, 2, ['q_proj', 'v_proj', 'down_proj'], 44);
    const ort = await OrtTrainer.create(config, weights, { learningRate: 1e-3, adapter, microBatch: 3, seqLen: 12 });
    const { weightSum, grads } = await ort.gradients(batch);
    const random = new Random(45);
    let checked = 0;
    for (const [i, { value }] of ort.parameters().entries()) {
      for (let n = 0; n < 2; n++) {
        const j = random.integer(value.length);
        const original = value[j]!;
        const eps = 1e-2;
        value[j] = original + eps;
        const plus = await ort.evaluate(batch);
        value[j] = original - eps;
        const minus = await ort.evaluate(batch);
        value[j] = original;
        const numeric = (plus - minus) / (2 * eps);
        expect(Math.abs(numeric - grads[i]![j]! / weightSum)).toBeLessThan(2e-3 + 2e-2 * Math.abs(numeric));
        checked++;
      }
    }
    expect(checked).toBe(2 * ort.parameters().length);
    await ort.dispose();
  });
});

describe('ONNX Runtime trainer', () => {
  const config = CONFIGS[1]!.config;
  const weights = randomWeights(config, 51);

  it('accumulating over micro-batches gives the gradient of the whole batch', async () => {
    const adapter = randomLora(config, 2, ['q_proj', 'up_proj'], 52);
    const batch = randomBatch(53, 4, 10);
    const whole = await OrtTrainer.create(config, weights, { learningRate: 1e-3, adapter, microBatch: 4, seqLen: 10 });
    const split = await OrtTrainer.create(config, weights, { learningRate: 1e-3, adapter, microBatch: 3, seqLen: 16 });
    const a = await whole.gradients(batch);
    const b = await split.gradients(batch);
    expect(b.weightSum).toBeCloseTo(a.weightSum, 4);
    expect(b.lossSum).toBeCloseTo(a.lossSum, 3);
    a.grads.forEach((g, i) => expect(relativeError(b.grads[i]!, g)).toBeLessThan(1e-4));
    await Promise.all([whole.dispose(), split.dispose()]);
  });

  it('refuses rows longer than its graph and left-padded rows', async () => {
    const trainer = await OrtTrainer.create(config, weights, { learningRate: 1e-3, microBatch: 2, seqLen: 8 });
    await expect(trainer.step(randomBatch(54, 2, 9))).rejects.toThrow(/sequence length is 8/);
    const batch = { ...randomBatch(55, 1, 6), attentionMask: [[0, 1, 1, 1, 1, 1]] };
    await expect(trainer.step(batch)).rejects.toThrow(/right-padded/);
    await trainer.dispose();
  });

  it("engine 'auto' picks ONNX Runtime; 'tfjs' gives the tfjs trainer", async () => {
    const auto = await createTrainer(config, weights, { learningRate: 1e-3, microBatch: 2, seqLen: 8 });
    const tfjs = await createTrainer(config, weights, { learningRate: 1e-3, engine: 'tfjs' });
    expect([auto.engine, tfjs.engine]).toEqual(['ort', 'tfjs']);
    await Promise.all([auto.dispose(), tfjs.dispose()]);
  });
});

describe('ONNX Runtime and tfjs training from the same start on the same batches', () => {
  const config = tinyConfig({
    hidden_size: 32,
    intermediate_size: 64,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    tie_word_embeddings: true,
  });
  const text = new ByteTokenizer().encode(
    'Fellow citizens, the state of the union is strong. We hold these truths to be self-evident. '.repeat(8),
  );
  function batchAt(step: number): TrainBatch {
    const random = new Random(1000 + step);
    const rows = Array.from({ length: 4 }, () => {
      const start = random.integer(text.length - 33);
      return text.slice(start, start + 33);
    });
    return {
      inputIds: rows.map((r) => r.slice(0, -1)),
      targets: rows.map((r) => r.slice(1)),
      weights: rows.map((r) => r.slice(1).map(() => 1)),
    };
  }

  it.each([
    { mode: 'LoRA r=4', steps: 300, lr: 1e-2 },
    { mode: 'full model', steps: 200, lr: 3e-3 },
  ])('$mode: final losses within 2% after $steps steps', async ({ mode, steps, lr }) => {
    const weights = randomWeights(config, 61);
    const adapter =
      mode === 'full model' ? undefined : randomLora(config, 4, ['q_proj', 'v_proj', 'up_proj', 'down_proj'], 62);
    const options = { learningRate: lr, maxGradNorm: 1, weightDecay: 0.01, adapter };
    const ort = await OrtTrainer.create(config, weights, { ...options, microBatch: 4, seqLen: 32 });
    const tfjs = createTfjsTrainer(config, weights, options);
    let ortLoss = 0;
    let tfjsLoss = 0;
    let first = 0;
    for (let step = 0; step < steps; step++) {
      const batch = batchAt(step);
      ortLoss = (await ort.step(batch)).loss;
      tfjsLoss = tfjs.stepSync(batch).loss;
      if (step === 0) first = ortLoss;
    }
    const held = batchAt(100_000);
    const [ortHeld, tfjsHeld] = [await ort.evaluate(held), tfjs.evaluateSync(held)];
    expect(ortLoss).toBeLessThan(first * 0.8);
    expect(Math.abs(ortLoss - tfjsLoss) / tfjsLoss).toBeLessThan(0.02);
    expect(Math.abs(ortHeld - tfjsHeld) / tfjsHeld).toBeLessThan(0.02);
    await Promise.all([ort.dispose(), tfjs.dispose()]);
  });
});

describe('a step with a normalizer of its own (policy gradient)', () => {
  it('makes positively weighted rows likelier and negatively weighted ones less likely, alike in ORT and tfjs', async () => {
    const config = CONFIGS[1]!.config;
    const weights = randomWeights(config, 71);
    const adapter = randomLora(config, 4, ['q_proj', 'v_proj'], 72);
    const batch = randomBatch(73, 2, 16);
    const signed: TrainBatch = { ...batch, weights: batch.weights.map((row, r) => row.map(() => (r === 0 ? 1 : -1))) };
    const rowOnly = (r: number): TrainBatch => ({
      inputIds: [batch.inputIds[r]!],
      targets: [batch.targets[r]!],
      weights: [batch.weights[r]!.map(() => 1)],
    });
    const options = { learningRate: 1e-2, adapter };
    const ort = await OrtTrainer.create(config, weights, { ...options, microBatch: 2, seqLen: 16 });
    const tfjs = createTfjsTrainer(config, weights, options);
    const before = [await ort.evaluate(rowOnly(0)), await ort.evaluate(rowOnly(1))];
    // all weights sum to 0: the default normalizer refuses such a batch
    await expect(ort.step(signed)).rejects.toThrow(/positive loss weight/);
    await expect(ort.step(signed, undefined, { normalizer: 0 })).rejects.toThrow(/not positive/);
    // the reported loss is sum(w * nll) / normalizer: (16 tokens x mean nll of row 0 - the same of row 1) / 2
    const expected = (16 * before[0]! - 16 * before[1]!) / 2;
    expect((await ort.step(signed, undefined, { normalizer: 2 })).loss).toBeCloseTo(expected, 3);
    expect(tfjs.stepSync(signed, undefined, { normalizer: 2 }).loss).toBeCloseTo(expected, 3);
    const after = [await ort.evaluate(rowOnly(0)), await ort.evaluate(rowOnly(1))];
    expect(after[0]).toBeLessThan(before[0]!);
    expect(after[1]).toBeGreaterThan(before[1]!);
    const [a, b] = [ort.adapter()!, tfjs.adapter()!];
    for (const [path, f] of a.modules) {
      expect(relativeError(f.A, b.modules.get(path)!.A)).toBeLessThan(1e-3);
      expect(relativeError(f.B, b.modules.get(path)!.B)).toBeLessThan(1e-3);
    }
    await Promise.all([ort.dispose(), tfjs.dispose()]);
  });
});

describe('trained results leave the trainer as ordinary adapters and checkpoints', () => {
  const config = CONFIGS[1]!.config;
  const weights = randomWeights(config, 71);
  const batch = randomBatch(72, 2, 10);

  it('an ORT-trained adapter, saved and loaded in PEFT layout, reproduces the trainer loss in tfjs', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'floe-adapter-'));
    const adapter = randomLora(config, 2, ['q_proj', 'down_proj'], 73);
    const trainer = await OrtTrainer.create(config, weights, {
      learningRate: 1e-2,
      adapter,
      microBatch: 2,
      seqLen: 10,
    });
    for (let i = 0; i < 5; i++) await trainer.step(batch);
    await saveAdapter(dir, trainer.adapter()!);
    const { adapter: loaded } = await loadAdapter(dir);
    const check = createTfjsTrainer(config, weights, { learningRate: 0, adapter: loaded });
    expect(check.evaluateSync(batch)).toBeCloseTo(await trainer.evaluate(batch), 4);
    expect(check.evaluateSync(batch)).not.toBeCloseTo(
      createTfjsTrainer(config, weights, { learningRate: 0, adapter }).evaluateSync(batch),
      3,
    );
    await Promise.all([trainer.dispose(), check.dispose(), rm(dir, { recursive: true })]);
  });

  it('ORT-pretrained weights, saved as a checkpoint, reproduce the trainer loss in tfjs', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'floe-ckpt-'));
    const trainer = await OrtTrainer.create(config, weights, { learningRate: 1e-2, microBatch: 2, seqLen: 10 });
    for (let i = 0; i < 5; i++) await trainer.step(batch);
    await saveCheckpoint(dir, { config, weights: trainer.weights() });
    const loaded = await loadCheckpoint(dir);
    const check = createTfjsTrainer(loaded.config, loaded.weights, { learningRate: 0 });
    expect(check.evaluateSync(batch)).toBeCloseTo(await trainer.evaluate(batch), 4);
    await Promise.all([trainer.dispose(), check.dispose(), rm(dir, { recursive: true })]);
  });
});

describe('resuming', () => {
  it('a trainer restored from a saved state continues exactly as the original', async () => {
    const config = CONFIGS[0]!.config;
    const weights = randomWeights(config, 81);
    const options = { learningRate: 1e-2, maxGradNorm: 1, microBatch: 2, seqLen: 10 };
    const original = await OrtTrainer.create(config, weights, options);
    for (let i = 0; i < 3; i++) await original.step(randomBatch(82 + i, 2, 10));
    const resumed = await OrtTrainer.create(config, weights, options);
    resumed.restore(original.state());
    const a = await original.step(randomBatch(90, 2, 10));
    const b = await resumed.step(randomBatch(90, 2, 10));
    expect(b).toEqual(a);
    expect(resumed.state().step).toBe(4);
    await Promise.all([original.dispose(), resumed.dispose()]);
  });
});

describe('reusing a LoRA trainer', () => {
  it('reset to an adapter trains exactly as a new trainer from that adapter (moments and step count included)', async () => {
    const config = CONFIGS[1]!.config;
    const weights = randomWeights(config, 91);
    const start = randomLora(config, 2, ['q_proj', 'v_proj'], 92);
    const other = randomLora(config, 2, ['q_proj', 'v_proj'], 93);
    const options = { learningRate: 1e-2, maxGradNorm: 1, microBatch: 2, seqLen: 10 };
    const fresh = await OrtTrainer.create(config, weights, { ...options, adapter: start });
    const reused = await OrtTrainer.create(config, weights, { ...options, adapter: other });
    for (let i = 0; i < 3; i++) await reused.step(randomBatch(94 + i, 2, 10));
    reused.reset(start);
    for (let i = 0; i < 3; i++) {
      const batch = randomBatch(100 + i, 2, 10);
      expect(await reused.step(batch)).toEqual(await fresh.step(batch));
    }
    const [a, b] = [reused.adapter()!, fresh.adapter()!];
    for (const [path, f] of b.modules) {
      expect(a.modules.get(path)!.A).toEqual(f.A);
      expect(a.modules.get(path)!.B).toEqual(f.B);
    }
    // an adapter of another shape is refused, not half-applied
    expect(() => reused.reset(randomLora(config, 4, ['q_proj', 'v_proj'], 95))).toThrow(/needs rank 2/);
    expect(() => reused.reset(randomLora(config, 2, ['q_proj'], 96))).toThrow(/reset:/);
    await Promise.all([fresh.dispose(), reused.dispose()]);
  });
});
