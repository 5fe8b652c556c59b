/**
 * Edge decode speed (issue 15, item 6). Two measures:
 * - forced decoding per preset (random weights, a 32-token prompt, then 256 one-token steps, as
 *   `pnpm bench model`): OrtLlama (the previous engine) against OrtDecoder, base, with a runtime LoRA
 *   adapter and with the adapter merged, and 8 rows decoded together;
 * - generation with the trained edge-small on held-out speech (8 prompts of 100 bytes, 200 bytes
 *   each, greedy and sampled): the previous engine, the decode engine one run per byte, and
 *   speculative decoding with byte n-gram drafts learnt from the general training split.
 * Each figure is the median of 3 passes taken in turn, since this machine's speed drifts.
 */
import path from 'node:path';
import {
  type ByteSource,
  LORA_MODULES,
  MODEL_PRESETS,
  ModelByteSource,
  NgramDrafter,
  OrtDecoder,
  OrtLlama,
  Random,
  SpeculativeByteSource,
  generateBytes,
  initLora,
  initWeights,
  loadCheckpoint,
  supportsGqa,
} from '@floe/model';
import type { LoraAdapter } from '@floe/shared';
import { speechTask } from '@floe/tasks';
import type { BenchResult } from '../lib/bench-report.js';

const ROOT = path.join(import.meta.dirname, '..', '..');
/** The figure issue 15 starts from: batch-1 decode of edge-small, tokens/s on this machine. */
const ISSUE_BASELINE = 1125;
const PASSES = 3;
const STEPS = 256;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function medianOf(passes: (() => Promise<number>)[]): Promise<number[]> {
  const results: number[][] = passes.map(() => []);
  for (let p = 0; p < PASSES; p++) for (const [i, pass] of passes.entries()) results[i]!.push(await pass());
  return results.map(median);
}

function randomAdapter(config: (typeof MODEL_PRESETS)[keyof typeof MODEL_PRESETS]): LoraAdapter {
  const adapter = initLora(config, { r: 8, lora_alpha: 16, target_modules: [...LORA_MODULES] }, 2);
  const random = new Random(3);
  for (const f of adapter.modules.values()) for (let i = 0; i < f.B.length; i++) f.B[i] = random.normal() * 0.05;
  return adapter;
}

async function forcedDecode(): Promise<{ rows: BenchResult['rows']; configs: Record<string, unknown> }> {
  const rows: BenchResult['rows'] = [];
  const configs: Record<string, unknown> = {};
  for (const [name, config] of Object.entries(MODEL_PRESETS)) {
    if (!supportsGqa(config)) continue;
    const weights = initWeights(config, 1);
    const adapter = randomAdapter(config);
    const random = new Random(1);
    const prompt = Array.from({ length: 32 }, () => random.integer(256));
    const previous = await OrtLlama.create(config, weights);
    const previousLora = await OrtLlama.create(config, weights, { loraModules: 'all' });
    const engine = await OrtDecoder.create(config, weights);
    const engineLora = await OrtDecoder.create(config, weights, { loraModules: 'all' });
    const merged = await OrtDecoder.create(config, weights, { mergedAdapter: adapter });

    const timeOrtLlama = (model: OrtLlama, lora?: LoraAdapter) => async () => {
      const mask = [prompt.map(() => 1)];
      let state = await model.forward([prompt], { attentionMask: mask, lora });
      const start = performance.now();
      for (let i = 0; i < STEPS; i++) {
        mask[0]!.push(1);
        state = await model.forward([[65 + (i % 26)]], { attentionMask: mask, cache: state.cache, lora });
      }
      return STEPS / ((performance.now() - start) / 1000);
    };
    const timeEngine =
      (decoder: OrtDecoder, lora?: LoraAdapter, rows = 1) =>
      async () => {
        const batch = decoder.batch(rows);
        await batch.append(
          Array.from({ length: rows }, () => prompt),
          lora,
        );
        const start = performance.now();
        for (let i = 0; i < STEPS; i++)
          await batch.append(
            Array.from({ length: rows }, (_, b) => [65 + ((i + b) % 26)]),
            lora,
          );
        return (rows * STEPS) / ((performance.now() - start) / 1000);
      };
    await timeEngine(engine)(); // warm-up
    await timeOrtLlama(previous)();
    const [before, beforeLora, after, afterLora, afterMerged, batch8] = await medianOf([
      timeOrtLlama(previous),
      timeOrtLlama(previousLora, adapter),
      timeEngine(engine),
      timeEngine(engineLora, adapter),
      timeEngine(merged),
      timeEngine(engineLora, adapter, 8),
    ]);
    await Promise.all([previous, previousLora, engine, engineLora, merged].map((m) => m.release()));
    const figures = {
      ortLlamaTokPerSec: before,
      ortLlamaLoraTokPerSec: beforeLora,
      decoderTokPerSec: after,
      decoderLoraTokPerSec: afterLora,
      decoderMergedAdapterTokPerSec: afterMerged,
      decoderBatch8LoraTokPerSec: batch8,
    };
    configs[name] = figures;
    rows.push({
      measure: `forced, ${name}`,
      OrtLlama: Math.round(before as number),
      '+LoRA': Math.round(beforeLora as number),
      decoder: Math.round(after as number),
      'decoder +LoRA': Math.round(afterLora as number),
      'merged adapter': Math.round(afterMerged as number),
      'batch 8 +LoRA': Math.round(batch8 as number),
    });
    console.log(`${name}: forced decode done`);
  }
  return { rows, configs };
}

async function generation(): Promise<{ rows: BenchResult['rows']; data: Record<string, unknown> }> {
  const { config, weights } = await loadCheckpoint(path.join(ROOT, 'models', 'edge-small'));
  const speech = speechTask();
  const drafter = NgramDrafter.fromTexts(speech.general.train.documents);
  const prompts = speech.general.test.documents.slice(0, 8).map((d) => d.slice(0, 100));
  const previous = new ModelByteSource(await OrtLlama.create(config, weights));
  const decoder = await OrtDecoder.create(config, weights);
  const rows: BenchResult['rows'] = [];
  const data: Record<string, unknown> = {};
  for (const temperature of [0, 0.8]) {
    const plain = new SpeculativeByteSource(decoder);
    const speculative = new SpeculativeByteSource(decoder, { drafter });
    const texts = new Map<ByteSource, string[]>();
    const time = (source: ByteSource) => async () => {
      let bytes = 0;
      const out: string[] = [];
      const start = performance.now();
      for (const [i, prompt] of prompts.entries()) {
        const g = await generateBytes(source, prompt, { maxBytes: 200, temperature, seed: i });
        bytes += g.bytes.length;
        out.push(g.text);
      }
      texts.set(source, out);
      return bytes / ((performance.now() - start) / 1000);
    };
    const [before, after, spec] = await medianOf([time(previous), time(plain), time(speculative)]);
    const reference = texts.get(previous) ?? [];
    const identical = [plain, speculative].every((s) => texts.get(s)?.every((t, i) => t === reference[i]));
    if (!identical) throw new Error('the decode engine generated other text than OrtLlama');
    const stats = speculative.stats;
    const key = temperature === 0 ? 'greedy' : `sampled_t${temperature}`;
    data[key] = {
      ortLlamaBytesPerSec: before,
      decoderBytesPerSec: after,
      speculativeBytesPerSec: spec,
      speculativeVsIssueBaseline: (spec as number) / ISSUE_BASELINE,
      speculativeVsOrtLlama: (spec as number) / (before as number),
      bytesPerRun: stats.pushed / stats.runs,
      draftAcceptance: stats.accepted / stats.drafted,
      identicalText: identical,
    };
    rows.push({
      measure: `edge-small ${key}, held-out speech`,
      OrtLlama: Math.round(before as number),
      decoder: Math.round(after as number),
      speculative: Math.round(spec as number),
      'x issue baseline': +((spec as number) / ISSUE_BASELINE).toFixed(2),
      'bytes/run': +(stats.pushed / stats.runs).toFixed(2),
      'draft acceptance': +(stats.accepted / stats.drafted).toFixed(2),
    });
    console.log(`generation ${key} done`);
  }
  await decoder.release();
  return { rows, data };
}

export async function run(): Promise<BenchResult> {
  const forced = await forcedDecode();
  const generated = await generation();
  return {
    rows: [...forced.rows, ...generated.rows],
    data: {
      units: 'tokens (bytes) per second, median of 3 passes',
      issueBaselineTokPerSec: ISSUE_BASELINE,
      setup:
        `forced: batch 1 (or 8 rows) after a 32-token prompt, ${STEPS} one-token steps, random weights, LoRA r=8 on every linear kind; ` +
        'generation: models/edge-small, 8 held-out speech prompts (general:test, first 100 bytes), 200 bytes each, ' +
        'drafts of up to 4 bytes from byte n-grams (orders 8, 5, 3) of general:train; ORT 1 intra-op thread',
      forced: forced.configs,
      generation: generated.data,
    },
  };
}
