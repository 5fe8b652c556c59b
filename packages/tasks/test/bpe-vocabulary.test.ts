/**
 * Tasks over a subword vocabulary (the cloud's BPE): training rows keep the prompt/answer weighting in
 * tokens, bits per byte divide token log-likelihoods by the tokens' bytes, a byte-level tokenizer is
 * refused on a BPE model, and a byte checkpoint moves to the BPE vocabulary row by row.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  BpeTokenizer,
  ByteTokenizer,
  type LlamaConfig,
  OrtLlama,
  Random,
  SPECIAL_TOKENS,
  initWeights,
  transferVocabulary,
} from '@floe/model';
import { ExampleSampler, WindowSampler, evaluateEmail, evaluateSpeech } from '../src/index.js';

const bpe = BpeTokenizer.load(path.join(import.meta.dirname, '..', '..', '..', 'models', 'cloud', 'tokenizer.json'));
const utf8 = (text: string) => new TextEncoder().encode(text);

const byteConfig: LlamaConfig = {
  model_type: 'llama',
  vocab_size: 259,
  hidden_size: 16,
  intermediate_size: 32,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 2,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: true,
  bos_token_id: SPECIAL_TOKENS.bos,
  eos_token_id: SPECIAL_TOKENS.eos,
  pad_token_id: SPECIAL_TOKENS.pad,
};
const bpeConfig: LlamaConfig = {
  ...byteConfig,
  vocab_size: bpe.vocabSize,
  bos_token_id: bpe.bos,
  eos_token_id: bpe.eos,
  pad_token_id: bpe.pad,
};

const speech = 'Mr. Speaker, the state of our Union is strong, and 1862 was a year of trial. '.repeat(4);

describe('a subword vocabulary in tasks', () => {
  it('scores a uniform BPE model at tokens x log2(V) bits over the bytes of the text', async () => {
    const model = await OrtLlama.create(bpeConfig, initWeights(bpeConfig, 0, 0));
    const metrics = await evaluateSpeech(model, [speech, 'short'], { tokenizer: bpe, contextTokens: 32 });
    const tokens = bpe.encode(speech).length + bpe.encode('short').length;
    expect(tokens).toBeLessThan(utf8(speech).length / 2);
    expect(metrics.tokens).toBe(tokens);
    expect(metrics.bytes).toBe(utf8(speech).length + 5);
    expect(metrics.bitsPerByte).toBeCloseTo((tokens * Math.log2(bpe.vocabSize)) / metrics.bytes, 5);
    await model.release();
  });

  it('refuses the byte tokenizer on a BPE model and the BPE on a byte model', async () => {
    const model = await OrtLlama.create(bpeConfig, initWeights(bpeConfig, 0, 0));
    await expect(evaluateSpeech(model, [speech])).rejects.toThrow(
      /vocab_size 4096 in config.json, 259 in the tokenizer/,
    );
    await model.release();
    const bytes = await OrtLlama.create(byteConfig, initWeights(byteConfig, 0, 0));
    const example = { prompt: 'Subject: hi\nlabel:', answer: ' ham' };
    await expect(evaluateEmail(bytes, [example], { tokenizer: bpe })).rejects.toThrow(/does not fit/);
    await bytes.release();
  });

  it('weighs prompt tokens and answer tokens apart in BPE training rows', () => {
    const example = { prompt: 'Subject: cheap watches\nlabel:', answer: ' spam' };
    const sampler = new ExampleSampler([example], 24, 0.25, bpe);
    const row = sampler.row(new Random(1));
    const prompt = bpe.encode(example.prompt);
    const answer = bpe.encode(' spam\n');
    expect(row.targets.slice(0, prompt.length + answer.length)).toEqual([...prompt, ...answer]);
    expect(row.inputIds[0]).toBe(bpe.bos);
    expect(row.weights.slice(0, prompt.length)).toEqual(new Array(prompt.length).fill(0.25));
    expect(row.weights.slice(prompt.length, prompt.length + answer.length)).toEqual(new Array(answer.length).fill(1));
    const window = new WindowSampler([speech], 16, bpe).row(new Random(2));
    expect(window.inputIds).toHaveLength(16);
    expect(window.inputIds[0]).toBe(bpe.bos);
  });

  it('moves a byte checkpoint to the BPE: bytes keep their rows, subwords start at their bytes mean', () => {
    const weights = initWeights(byteConfig, 5, 0.5);
    const moved = transferVocabulary({ config: byteConfig, weights, tokenizer: new ByteTokenizer() }, bpe);
    expect(moved.config.vocab_size).toBe(bpe.vocabSize);
    expect(moved.config.eos_token_id).toBe(bpe.eos);
    const h = byteConfig.hidden_size;
    const before = weights.get('model.embed_tokens.weight')!.data;
    const after = moved.weights.get('model.embed_tokens.weight')!.data;
    const row = (data: Float32Array, id: number) => Array.from(data.subarray(id * h, (id + 1) * h));
    const the = bpe.encode(' the');
    expect(the).toHaveLength(1);
    const mean = Array.from({ length: h }, (_, i) =>
      [...utf8(' the')].reduce((sum, b) => sum + before[b * h + i]! / 4, 0),
    );
    row(after, the[0]!).forEach((x, i) => expect(x).toBeCloseTo(mean[i]!, 6));
    const seven = bpe.encode('7')[0]!;
    expect(row(after, seven)).toEqual(row(before, utf8('7')[0]!));
    expect(row(after, bpe.eos)).toEqual(row(before, SPECIAL_TOKENS.eos));
    expect(moved.weights.get('model.layers.0.mlp.up_proj.weight')).toBe(
      weights.get('model.layers.0.mlp.up_proj.weight'),
    );
    expect(() => transferVocabulary({ config: bpeConfig, weights: moved.weights, tokenizer: bpe }, bpe)).toThrow(
      /from a byte-level checkpoint/,
    );
  });
});
