import { beforeAll, describe, expect, it } from 'vitest';
import {
  type LlamaConfig,
  OrtLlama,
  Random,
  TfjsLlama,
  selectTfjsBackend,
  tfjsLora,
  type LoraModuleKind,
} from '../src/index.js';
import { maxAbsDiff, randomIds, randomLora, randomWeights, tinyConfig } from './helpers.js';

const CASES: { name: string; config: LlamaConfig; lora: LoraModuleKind[]; rank: number }[] = [
  { name: 'MHA, untied, LoRA on q,v', config: tinyConfig(), lora: ['q_proj', 'v_proj'], rank: 4 },
  {
    name: 'GQA 6:2, tied embeddings, LoRA everywhere',
    config: tinyConfig({
      hidden_size: 48,
      num_attention_heads: 6,
      num_key_value_heads: 2,
      tie_word_embeddings: true,
      num_hidden_layers: 3,
    }),
    lora: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    rank: 3,
  },
  {
    name: 'MQA 4:1, explicit head_dim, rope_theta 500000',
    config: tinyConfig({ num_key_value_heads: 1, head_dim: 12, rope_theta: 500000, intermediate_size: 64 }),
    lora: ['o_proj', 'down_proj'],
    rank: 8,
  },
];

beforeAll(async () => {
  await selectTfjsBackend();
});

const KERNELS = CASES.flatMap((c) => (['fused', 'onnx'] as const).map((attention) => ({ ...c, attention })));

describe.each(KERNELS)(
  'tfjs and ONNX Runtime ($attention attention) agree: $name',
  ({ config, lora, rank, attention }) => {
    const weights = randomWeights(config, 11);
    const adapter = randomLora(config, rank, lora, 12);
    const random = new Random(13);
    // row 1 is left-padded by 3
    const ids = randomIds(random, 2, 14, 256);
    const mask = [new Array<number>(14).fill(1), [0, 0, 0, ...new Array<number>(11).fill(1)]];
    ids[1]!.fill(config.pad_token_id, 0, 3);

    it('logits match to 1e-4 with and without runtime LoRA', async () => {
      const tfModel = new TfjsLlama(config, weights);
      const ortModel = await OrtLlama.create(config, weights, { loraModules: [...adapter.modules.keys()], attention });
      const tfLora = tfjsLora(config, adapter);
      try {
        for (const withLora of [false, true]) {
          const { logits: expected, cache } = tfModel.forward(ids, {
            attentionMask: mask,
            lora: withLora ? tfLora : undefined,
          });
          const { logits } = await ortModel.forward(ids, { attentionMask: mask, lora: withLora ? adapter : undefined });
          const diff = maxAbsDiff(logits, expected.dataSync());
          expect(diff).toBeLessThan(1e-4);
          expected.dispose();
          cache.keys.forEach((t) => t.dispose());
          cache.values.forEach((t) => t.dispose());
        }
        // LoRA must actually change the output, or the comparison above proves nothing
        const base = await ortModel.forward(ids, { attentionMask: mask });
        const adapted = await ortModel.forward(ids, { attentionMask: mask, lora: adapter });
        expect(maxAbsDiff(base.logits, adapted.logits)).toBeGreaterThan(1e-2);
      } finally {
        tfModel.dispose();
        await ortModel.release();
      }
    });

    it('KV-cache decoding gives the logits of full recomputation', async () => {
      const ortModel = await OrtLlama.create(config, weights, { loraModules: [...adapter.modules.keys()], attention });
      try {
        const full = await ortModel.forward(ids, { attentionMask: mask, lora: adapter });
        const V = config.vocab_size;
        const prefix = 6;
        let step = await ortModel.forward(
          ids.map((r) => r.slice(0, prefix)),
          {
            attentionMask: mask.map((r) => r.slice(0, prefix)),
            lora: adapter,
          },
        );
        // padded query positions attend to nothing real; their logits are unused and not compared
        const real = (logits: Float32Array, from: number) => zeroPadded(logits, mask, V, from);
        let worst = maxAbsDiff(real(step.logits, 0), real(rowsSlice(full.logits, 2, 14, V, 0, prefix), 0));
        for (let t = prefix; t < 14; t++) {
          step = await ortModel.forward(
            ids.map((r) => [r[t]!]),
            {
              attentionMask: mask.map((r) => r.slice(0, t + 1)),
              cache: step.cache,
              lora: adapter,
            },
          );
          worst = Math.max(worst, maxAbsDiff(step.logits, rowsSlice(full.logits, 2, 14, V, t, t + 1)));
        }
        expect(step.cache.length).toBe(14);
        expect(worst).toBeLessThan(1e-4);
      } finally {
        await ortModel.release();
      }
    });
  },
);

/** Copy of [batch, n, V] logits with positions that are padding (per mask, from position `from`) zeroed. */
function zeroPadded(logits: Float32Array, mask: number[][], V: number, from: number): Float32Array {
  const out = logits.slice();
  const n = logits.length / V / mask.length;
  mask.forEach((row, b) => {
    for (let i = 0; i < n; i++) if (row[from + i] === 0) out.fill(0, (b * n + i) * V, (b * n + i + 1) * V);
  });
  return out;
}

/** Positions [from, to) of each row of a [batch, seq, V] array. */
function rowsSlice(
  logits: Float32Array,
  batch: number,
  seq: number,
  V: number,
  from: number,
  to: number,
): Float32Array {
  const out = new Float32Array(batch * (to - from) * V);
  for (let b = 0; b < batch; b++)
    out.set(logits.subarray((b * seq + from) * V, (b * seq + to) * V), b * (to - from) * V);
  return out;
}
