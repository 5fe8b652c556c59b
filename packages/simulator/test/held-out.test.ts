/**
 * The simulation's one held-out evaluation (through byte sources, so the cloud and fused sources can be
 * scored the same way) agrees with @floe/tasks' batched evaluators on the edge model: same bits per byte,
 * same labels chosen, same greedy answers.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoadedCheckpoint, ModelByteSource, OrtLlama, loadCheckpoint } from '@floe/model';
import { evaluateArithmetic, evaluateLabels, evaluateSpeech, federationPartition, taskManifest } from '@floe/tasks';
import { WINDOW_BYTES, proseWindows, scoreHeldOut, sourceModel } from '../src/index.js';

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
  });
});
