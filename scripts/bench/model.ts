/**
 * Inference and training speed of the model engines, per preset: ONNX Runtime decode (KV cache) and
 * prefill, tfjs decode (KV cache) and LoRA r=8 training, and the tfjs/ORT logit difference.
 */
import {
  LORA_MODULES,
  MODEL_PRESETS,
  type DecoderModel,
  type LlamaConfig,
  OrtLlama,
  Random,
  TfjsDecoder,
  TfjsLlama,
  TfjsTrainer,
  initWeights,
  loraModulePaths,
  loraShape,
  parameterCount,
  selectTfjsBackend,
  tfjsLora,
} from '@floe/model';
import type { LoraAdapter, LoraFactors } from '@floe/shared';
import type { BenchResult } from '../lib/bench-report.js';

const LORA_RANK = 8;

function randomAdapter(config: LlamaConfig, random: Random): LoraAdapter {
  const modules = new Map<string, LoraFactors>();
  for (const path of loraModulePaths(config, { r: LORA_RANK, lora_alpha: 16, target_modules: [...LORA_MODULES] })) {
    const [outFeatures, inFeatures] = loraShape(config, path);
    modules.set(path, {
      rank: LORA_RANK,
      inFeatures,
      outFeatures,
      A: random.normalArray(LORA_RANK * inFeatures, 0.05),
      B: random.normalArray(outFeatures * LORA_RANK, 0.05),
    });
  }
  return { alpha: 16, modules };
}

function randomTokens(random: Random, n: number): number[] {
  return Array.from({ length: n }, () => random.integer(256));
}

/** Decode tokens/s without a cache: the whole sequence is recomputed for every new token. */
async function recomputeTokPerSec<C>(
  model: DecoderModel<C>,
  adapter: LoraAdapter | undefined,
  prompt: number[],
  steps: number,
): Promise<number> {
  const ids = [...prompt];
  const start = performance.now();
  for (let i = 0; i < steps; i++) {
    await model.forward([ids], { attentionMask: [ids.map(() => 1)], lora: adapter });
    ids.push(65 + (i % 26));
  }
  return steps / ((performance.now() - start) / 1000);
}

/** Decode tokens/s with the KV cache after a prompt; only the single-token steps are timed. */
async function decodeTokPerSec<C>(
  model: DecoderModel<C>,
  adapter: LoraAdapter | undefined,
  prompt: number[],
  steps: number,
): Promise<number> {
  const mask = [prompt.map(() => 1)];
  let state = await model.forward([prompt], { attentionMask: mask, lora: adapter });
  const start = performance.now();
  for (let i = 0; i < steps; i++) {
    mask[0]!.push(1);
    state = await model.forward([[65 + (i % 26)]], { attentionMask: mask, cache: state.cache, lora: adapter });
  }
  return steps / ((performance.now() - start) / 1000);
}

export async function run(): Promise<BenchResult> {
  const selection = await selectTfjsBackend();
  console.log(`tfjs backend: ${selection.backend}`);
  const rows: BenchResult['rows'] = [];
  const configs: Record<string, unknown> = {};
  for (const [name, config] of Object.entries(MODEL_PRESETS)) {
    const random = new Random(1);
    const weights = initWeights(config, 1);
    const adapter = randomAdapter(config, random);
    const ort = await OrtLlama.create(config, weights, { loraModules: 'all' });
    const ortBase = await OrtLlama.create(config, weights); // no LoRA inputs to feed
    const tfModel = new TfjsLlama(config, weights);
    const tfDecoder = new TfjsDecoder(tfModel);

    // parity on a batch of 2 x 32 with runtime LoRA
    const ids = [randomTokens(random, 32), randomTokens(random, 32)];
    const ortLogits = (await ort.forward(ids, { lora: adapter })).logits;
    const tfLogits = (await tfDecoder.forward(ids, { attentionMask: ids.map((r) => r.map(() => 1)), lora: adapter }))
      .logits;
    let parity = 0;
    for (let i = 0; i < ortLogits.length; i++) parity = Math.max(parity, Math.abs(ortLogits[i]! - tfLogits[i]!));

    // Decode after a 32-token prompt, base model and with a runtime LoRA adapter.
    const prompt = randomTokens(random, 32);
    await decodeTokPerSec(ortBase, undefined, prompt, 32); // warm-up
    const ortDecode = await decodeTokPerSec(ortBase, undefined, prompt, 256);
    await decodeTokPerSec(ort, adapter, prompt, 32);
    const ortDecodeLora = await decodeTokPerSec(ort, adapter, prompt, 256);
    await decodeTokPerSec(tfDecoder, adapter, prompt, 4);
    const tfjsDecode = await decodeTokPerSec(tfDecoder, undefined, prompt, 48);
    const tfjsDecodeLora = await decodeTokPerSec(tfDecoder, adapter, prompt, 48);
    const tfjsRecompute = await recomputeTokPerSec(tfDecoder, undefined, prompt, 16);

    const long = [randomTokens(random, 256)];
    await ort.forward(long, { lora: adapter });
    const prefillStart = performance.now();
    for (let i = 0; i < 4; i++) await ort.forward(long, { lora: adapter });
    const ortPrefill = (4 * 256) / ((performance.now() - prefillStart) / 1000);

    const lora = tfjsLora(config, adapter, true);
    const trainer = new TfjsTrainer(tfModel, { learningRate: 1e-3, maxGradNorm: 1, lora });
    const batchIds = Array.from({ length: 4 }, () => randomTokens(random, 65));
    const batch = {
      inputIds: batchIds.map((r) => r.slice(0, -1)),
      targets: batchIds.map((r) => r.slice(1)),
      weights: batchIds.map((r) => r.slice(1).map(() => 1)),
    };
    trainer.stepSync(batch);
    const trainStart = performance.now();
    const trainSteps = 3;
    for (let i = 0; i < trainSteps; i++) trainer.stepSync(batch);
    const tfjsTrain = (trainSteps * 4 * 64) / ((performance.now() - trainStart) / 1000);
    await trainer.dispose(); // disposes tfModel too
    await Promise.all([ort.release(), ortBase.release()]);

    const result = {
      parameters: parameterCount(config),
      ortDecodeTokPerSec: ortDecode,
      ortDecodeLoraTokPerSec: ortDecodeLora,
      tfjsDecodeTokPerSec: tfjsDecode,
      tfjsDecodeLoraTokPerSec: tfjsDecodeLora,
      tfjsDecodeNoCacheTokPerSec: tfjsRecompute,
      ortPrefillTokPerSec: ortPrefill,
      tfjsTrainTokPerSec: tfjsTrain,
      parityMaxAbsDiff: parity,
      tfjsBackend: selection.backend,
      decodeSpeedupVsTfjsKvCache: ortDecode / tfjsDecode,
      decodeSpeedupVsTfjsNoCache: ortDecode / tfjsRecompute,
    };
    configs[name] = result;
    rows.push({
      config: name,
      params: result.parameters,
      'ORT decode': Math.round(ortDecode),
      'ORT decode +LoRA': Math.round(ortDecodeLora),
      'tfjs decode': Math.round(tfjsDecode),
      'tfjs decode +LoRA': Math.round(tfjsDecodeLora),
      'tfjs no cache': Math.round(tfjsRecompute),
      'ORT/tfjs': +(ortDecode / tfjsDecode).toFixed(1),
      'ORT/tfjs no cache': +(ortDecode / tfjsRecompute).toFixed(1),
      'ORT prefill': Math.round(ortPrefill),
      'tfjs train +LoRA': Math.round(tfjsTrain),
      'parity |diff|': parity.toExponential(1),
    });
    console.log(`${name}: done`);
  }
  return {
    rows,
    data: {
      tfjsBackend: selection.backend,
      tfjsBackendAttempts: selection.attempts,
      units: 'tokens per second',
      setup: `decode: batch 1 after a 32-token prompt, KV cache unless 'no cache'; +LoRA: r=${LORA_RANK} on all 7 linear kinds as runtime inputs; ORT 1 intra-op thread, fused attention; prefill: 256 tokens with LoRA; train: tfjs, LoRA r=${LORA_RANK}, batch 4 x 64; parity: max |logit difference| tfjs vs ORT, batch 2 x 32 with LoRA`,
      configs,
    },
  };
}
