import { describe, expect, it } from 'vitest';
import {
  type LlamaConfig,
  OrtLlama,
  SPECIAL_TOKENS,
  type Weights,
  createTfjsTrainer,
  initWeights,
  selectTfjsBackend,
} from '@floe/model';
import { arithmeticDifficulty, evaluateArithmetic, evaluateEmail, evaluateSpeech } from '../src/index.js';

const config: LlamaConfig = {
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
  tie_word_embeddings: false,
  bos_token_id: SPECIAL_TOKENS.bos,
  eos_token_id: SPECIAL_TOKENS.eos,
  pad_token_id: SPECIAL_TOKENS.pad,
};

/**
 * A model whose next-byte logits are `logits` whatever the context: embeddings are all ones and
 * every block weight is zero, so the final hidden state is a ones vector and logit v = sum(lm_head[v]).
 */
function constantModel(logits: (v: number) => number): Weights {
  const weights = initWeights(config, 0, 0);
  weights.get('model.embed_tokens.weight')!.data.fill(1);
  const head = weights.get('lm_head.weight')!.data;
  for (let v = 0; v < config.vocab_size; v++) head.fill(logits(v) / config.hidden_size, v * 16, (v + 1) * 16);
  return weights;
}

const text = 'We hold these truths to be self-evident, that all men are created equal. '.repeat(3);

describe('speech metrics', () => {
  it('a uniform model scores log2(259) bits per byte and picks byte 0 every time', async () => {
    const model = await OrtLlama.create(
      config,
      constantModel(() => 0),
    );
    const metrics = await evaluateSpeech(model, [text, 'short']);
    expect(metrics.bytes).toBe(text.length + 5);
    expect(metrics.bitsPerByte).toBeCloseTo(Math.log2(259), 5);
    expect(metrics.nextTokenAccuracy).toBe(0);
    await model.release();
  });

  it('agrees with the training loss of the same windows (bits = nats / ln 2)', async () => {
    await selectTfjsBackend();
    const weights = initWeights(config, 3, 0.3);
    const model = await OrtLlama.create(config, weights);
    const metrics = await evaluateSpeech(model, [text.slice(0, 63)]);
    const bytes = [...new TextEncoder().encode(text.slice(0, 63))];
    const trainer = createTfjsTrainer(config, weights, { learningRate: 0 });
    const nats = trainer.evaluateSync({
      inputIds: [[config.bos_token_id, ...bytes.slice(0, -1)]],
      targets: [bytes],
      weights: [bytes.map(() => 1)],
    });
    expect(metrics.bitsPerByte).toBeCloseTo(nats / Math.LN2, 4);
    await Promise.all([model.release(), trainer.dispose()]);
  });
});

describe('email metrics', () => {
  const examples = [
    { prompt: 'Subject: hi\nlunch?\nlabel:', answer: ' ham' },
    { prompt: 'Subject: WIN\nfree money\nlabel:', answer: ' spam' },
    { prompt: 'Subject: re: draft\nsee attached\nlabel:', answer: ' ham' },
  ];

  // The score is the summed log-likelihood of the whole continuation, so the constant models favour
  // every letter of their label (a model favouring only "s" would lose " spam" to the shorter " ham").
  const favour = (letters: string) => (v: number) => (letters.includes(String.fromCharCode(v)) ? 6 : 0);

  it('a model that favours the letters of "spam" labels everything spam', async () => {
    const model = await OrtLlama.create(config, constantModel(favour('spam')));
    expect(await evaluateEmail(model, examples)).toEqual({ accuracy: 1 / 3, examples: 3 });
    await model.release();
  });

  it('a model that favours the letters of "ham" labels everything ham', async () => {
    const model = await OrtLlama.create(config, constantModel(favour('ham')));
    expect(await evaluateEmail(model, examples)).toEqual({ accuracy: 2 / 3, examples: 3 });
    await model.release();
  });

  it('scores a prompt longer than the context on its end, as training rows keep it', async () => {
    const model = await OrtLlama.create(config, initWeights(config, 5, 0.5));
    const long = Array.from({ length: 16 }, (_, i) => ({
      prompt: `Subject: note ${i}\n${'lorem ipsum dolor sit amet '.repeat(4 + (i % 5))}${i * 7919}\nlabel:`,
      answer: i % 3 === 0 ? ' spam' : ' ham',
    }));
    const context = 40; // the model has 64 positions; the prompts are 130 to 250 bytes
    const ends = long.map((e) => ({ ...e, prompt: e.prompt.slice(-(context - ' spam\n'.length)) }));
    const onEnds = await evaluateEmail(model, ends, { contextTokens: 64 });
    expect(await evaluateEmail(model, long, { contextTokens: context })).toEqual(onEnds);
    expect(onEnds.examples).toBe(16);
    await model.release();
  });
});

/**
 * A model whose next byte depends only on the current one: with every block weight zero the final
 * hidden state is RMSNorm(embedding of the last byte), so one-hot embeddings make lm_head a bigram table.
 * `next` maps a byte to the byte it predicts; every other byte predicts `fallback`.
 */
function bigramModel(next: Record<string, string>, fallback: string): Weights {
  const weights = initWeights(config, 0, 0);
  const embed = weights.get('model.embed_tokens.weight')!.data;
  const head = weights.get('lm_head.weight')!.data;
  const contexts = Object.keys(next);
  for (let v = 0; v < config.vocab_size; v++) {
    const slot = contexts.indexOf(String.fromCharCode(v));
    embed[v * 16 + (slot < 0 ? contexts.length : slot)] = 1;
  }
  contexts.forEach((byte, slot) => (head[next[byte]!.charCodeAt(0) * 16 + slot] = 1));
  head[fallback.charCodeAt(0) * 16 + contexts.length] = 1;
  return weights;
}

describe('arithmetic metrics', () => {
  const examples = [
    { prompt: '3+4=', answer: '7' },
    { prompt: '9-2=', answer: '7' },
    { prompt: '2+2=', answer: '4' },
    { prompt: '10+11=', answer: '21' },
    { prompt: '6*5=', answer: '30' },
  ];

  it('counts an answer right exactly when the greedy output up to the newline is the answer', async () => {
    // answers "7" then a newline after "=": right on the two problems whose answer is 7
    const model = await OrtLlama.create(config, bigramModel({ '=': '7', '7': '\n' }, 'x'));
    const margins: number[] = [];
    const metrics = await evaluateArithmetic(model, examples, { batch: 2, onDecision: (m) => margins.push(m) });
    expect(metrics).toEqual({
      exactMatch: 2 / 5,
      examples: 5,
      byDifficulty: {
        '* 1': { exactMatch: 0, examples: 1 },
        '+ 1': { exactMatch: 1 / 2, examples: 2 },
        '+ 2': { exactMatch: 0, examples: 1 },
        '- 1': { exactMatch: 1, examples: 1 },
      },
    });
    // one decision per problem, each a clear choice: the chosen logit is 4 (RMSNorm of a one-hot), the rest 0
    expect(margins).toHaveLength(5);
    for (const margin of margins) expect(margin).toBeCloseTo(4, 3);
    await model.release();
  });

  it('counts a right answer followed by more text as wrong', async () => {
    // "7" again after "7": the output never ends where the answer does
    const model = await OrtLlama.create(config, bigramModel({ '=': '7', '7': '7' }, 'x'));
    expect((await evaluateArithmetic(model, examples)).exactMatch).toBe(0);
    await model.release();
  });

  it('names difficulties by operation and the longer operand', () => {
    expect(arithmeticDifficulty('12+345=')).toBe('+ 3');
    expect(arithmeticDifficulty('7*8=')).toBe('* 1');
    expect(arithmeticDifficulty('hello')).toBe('other');
  });
});
