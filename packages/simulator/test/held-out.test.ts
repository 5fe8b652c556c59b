/**
 * The simulation's one held-out evaluation (through byte sources, so the cloud and fused sources can be
 * scored the same way) agrees with @floe/tasks' batched evaluators on the edge model: same bits per byte,
 * same labels chosen, same greedy answers.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoadedCheckpoint, ModelByteSource, OrtLlama, loadCheckpoint } from '@floe/model';
import { evaluateArithmetic, evaluateLabels, evaluateSpeech, federationPartition, taskManifest } from '@floe/tasks';
import { initialAdapter } from '@floe/edge-client';
import { WINDOW_BYTES, proseWindows, scoreHeldOut, sourceModel } from '../src/index.js';
import { ClientEvaluator } from '../src/client-evaluator.js';

const MODEL = path.join(import.meta.dirname, '..', '..', '..', 'models', 'edge-small');
const SEQ = 128;

describe('scoreHeldOut on the edge model', () => {
  let checkpoint: LoadedCheckpoint;
  let model: OrtLlama;

  beforeAll(async () => {
    checkpoint = await loadCheckpoint(MODEL);
    model = await OrtLlama.create(checkpoint.config, checkpoint.weights, {});
  });
  afterAll(async () => model?.release());

  it('gives the bits per byte of the batched evaluator on ASCII prose', async () => {
    const [client] = federationPartition('speech', { seed: 0, clients: 4, pretrainSeed: 0 }).clients;
    const text = client!.test.documents[0]!.slice(0, 3 * WINDOW_BYTES + 40);
    expect(proseWindows([text]).map((w) => w.length)).toEqual([WINDOW_BYTES, WINDOW_BYTES, WINDOW_BYTES, 40]);
    const ours = await scoreHeldOut(
      sourceModel(new ModelByteSource(model)),
      { documents: [text] },
      taskManifest('speech'),
      {
        seqLen: SEQ,
      },
    );
    const batched = await evaluateSpeech(model, [text]);
    expect(ours.count).toBe(batched.bytes);
    expect(ours.value).toBeCloseTo(batched.bitsPerByte, 4);
    // one item per window: its bits and its bytes, which add up to the figure
    expect(ours.items.weights).toEqual([WINDOW_BYTES, WINDOW_BYTES, WINDOW_BYTES, 40]);
    const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
    expect(sum(ours.items.sums) / sum(ours.items.weights)).toBe(ours.value);
    for (const bits of ours.items.sums) expect(bits).toBeGreaterThan(0);
  });

  it('chooses the labels the batched evaluator chooses, on the same end of each email', async () => {
    const [client] = federationPartition('email', { seed: 0, clients: 4, pretrainSeed: 0 }).clients;
    const examples = client!.test.examples!.slice(0, 24);
    const manifest = taskManifest('email');
    const ours = await scoreHeldOut(sourceModel(new ModelByteSource(model)), { documents: [], examples }, manifest, {
      seqLen: SEQ,
    });
    const batched = await evaluateLabels(model, examples, manifest.labels!, { contextTokens: SEQ });
    expect(ours.value).toBe(batched.accuracy);
  });

  it('answers arithmetic greedily as the batched generator does', async () => {
    const [, client] = federationPartition('arithmetic', { seed: 0, clients: 4, pretrainSeed: 0 }).clients;
    const examples = client!.test.examples!.slice(0, 40);
    const ours = await scoreHeldOut(
      sourceModel(new ModelByteSource(model)),
      { documents: [], examples },
      taskManifest('arithmetic'),
      { seqLen: SEQ },
    );
    const batched = await evaluateArithmetic(model, examples);
    expect(ours.value).toBe(batched.exactMatch);
    expect(ours.count).toBe(40);
    // one item per problem, in order: 1 where the generator, asked that problem alone, gets it right
    expect(ours.items.weights).toEqual(examples.map(() => 1));
    const alone = [];
    for (const example of examples) alone.push((await evaluateArithmetic(model, [example])).exactMatch);
    expect(ours.items.sums).toEqual(alone);
  });

  it('scores a fresh LoRA start as the base model and any other adapter through it', async () => {
    const [client] = federationPartition('speech', { seed: 0, clients: 4, pretrainSeed: 0 }).clients;
    const test = { documents: [client!.test.documents[0]!.slice(0, 2 * WINDOW_BYTES)] };
    const manifest = taskManifest('speech');
    const evaluator = new ClientEvaluator(
      checkpoint,
      { manifest, train: client!.train, test },
      { seqLen: SEQ, threads: 1 },
    );
    const plan = { rank: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] };
    const start = initialAdapter(checkpoint.config, plan, 1);
    const base = (await scoreHeldOut(sourceModel(new ModelByteSource(model)), test, manifest, { seqLen: SEQ })).value;
    expect((await evaluator.edge(start)).value).toBe(base);
    // one non-zero column of B in one module: no longer the base model
    const moved = initialAdapter(checkpoint.config, plan, 1);
    const [, factors] = [...moved.modules][0]!;
    for (let i = 0; i < factors.outFeatures; i++) factors.B[i * factors.rank] = 0.5;
    const withLora = await OrtLlama.create(checkpoint.config, checkpoint.weights, {
      loraModules: [...moved.modules.keys()],
    });
    try {
      const direct = await scoreHeldOut(
        sourceModel(new ModelByteSource(withLora, 'edge+lora', moved)),
        test,
        manifest,
        {
          seqLen: SEQ,
        },
      );
      expect(Math.abs(direct.value - base)).toBeGreaterThan(1e-3); // the change is visible at all
      expect((await evaluator.edge(moved)).value).toBeCloseTo(direct.value, 6);
    } finally {
      await withLora.release();
      await evaluator.dispose();
    }
  });
});
