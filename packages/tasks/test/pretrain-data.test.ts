import { describe, expect, it } from 'vitest';
import { Random } from '@floe/model';
import { DEFAULT_PROMPT_WEIGHT, ExampleSampler, PretrainData, taskPartition } from '../src/index.js';

const decoder = new TextDecoder();
const textOf = (tokens: readonly number[]) => decoder.decode(Uint8Array.from(tokens));

describe('pretraining batches', () => {
  const data = new PretrainData(0, 64);

  it('are a function of (seed, step): a resumed run sees the same data', () => {
    expect(new PretrainData(0, 64).batch(17, 4)).toEqual(data.batch(17, 4));
    expect(data.batch(18, 4)).not.toEqual(data.batch(17, 4));
  });

  it('start every row with BOS and predict the next byte', () => {
    const batch = data.batch(3, 32);
    for (const [r, row] of batch.inputIds.entries()) {
      expect(row[0]).toBe(256);
      expect(row.length).toBe(64);
      expect(batch.targets[r]!.slice(0, -1)).toEqual(row.slice(1));
      expect(batch.weights[r]).toHaveLength(64);
    }
  });

  it('mix the tasks roughly by their weights, examples starting at an example boundary', () => {
    let arithmetic = 0;
    const rows = 2000;
    for (const row of data.batch(5, rows).inputIds) {
      const text = decoder.decode(Uint8Array.from(row.slice(1)));
      if (/^-?\d+[+\-*]\d+=-?\d+\n/.test(text)) arithmetic++;
    }
    expect(arithmetic / rows).toBeGreaterThan(0.25);
    expect(arithmetic / rows).toBeLessThan(0.35);
  });
});

describe('packed example rows', () => {
  it('pack whole examples, weighing prompt bytes less than answers', () => {
    const examples = [
      { prompt: '12+34=', answer: '46' },
      { prompt: '9-15=', answer: '-6' },
    ];
    const sampler = new ExampleSampler(examples, 40, 0.25);
    const row = sampler.row(new Random(1));
    expect(row.inputIds[0]).toBe(256);
    expect(row.targets).toHaveLength(40);
    expect(row.weights).toHaveLength(40);
    const text = textOf(row.targets);
    expect(text).toMatch(/^(12\+34=46\n|9-15=-6\n)+/);
    // every byte after "=" up to and including the newline is answer (weight 1), the rest prompt
    let answer = false;
    for (const [i, ch] of [...text].entries()) {
      expect(row.weights[i]).toBe(answer ? 1 : 0.25);
      if (ch === '=') answer = true;
      if (ch === '\n') answer = false;
    }
  });

  it('keep the end of a prompt longer than the window, so its answer is learned', () => {
    const prompt = `Subject: long\n${'word '.repeat(100)}\nlabel:`;
    const sampler = new ExampleSampler([{ prompt, answer: ' spam' }], 32);
    const row = sampler.row(new Random(2));
    expect(textOf(row.targets)).toBe(`${prompt} spam\n`.slice(-32));
    expect(row.weights.slice(-6)).toEqual([1, 1, 1, 1, 1, 1]);
    expect(row.weights[0]).toBe(DEFAULT_PROMPT_WEIGHT);
  });

  it('start every label of a cut prompt at the same position, whatever its length', () => {
    const prompt = `Subject: long\n${'word '.repeat(100)}\nlabel:`;
    const sampler = new ExampleSampler(
      [
        { prompt, answer: ' spam' },
        { prompt, answer: ' ham' },
      ],
      64,
    );
    const random = new Random(4);
    const starts = new Map<string, Set<number>>();
    for (let r = 0; r < 40; r++) {
      const text = textOf(sampler.row(random).targets);
      const label = /\nlabel: (spam|ham)\n/.exec(text);
      expect(label, text).not.toBeNull();
      const at = text.indexOf('label:') + 'label:'.length;
      starts.set(label![1]!, (starts.get(label![1]!) ?? new Set()).add(at));
    }
    // the prompt keeps 64 - " spam\n".length bytes for both labels
    expect(starts.get('spam')).toEqual(new Set([58]));
    expect(starts.get('ham')).toEqual(new Set([58]));
  });

  it('show every email row its label (most messages are longer than the window)', () => {
    const split = taskPartition('email', { seed: 0 }).general.train;
    const sampler = new ExampleSampler(split.examples!, 256);
    const random = new Random(3);
    for (let r = 0; r < 200; r++) {
      const row = sampler.row(random);
      const text = textOf(row.targets);
      const label = /\nlabel: (spam|ham)\n/.exec(text);
      expect(label, text).not.toBeNull();
      const at = text.slice(0, label!.index).length + '\nlabel:'.length;
      expect(row.weights.slice(at, at + label![1]!.length + 2).every((w) => w === 1)).toBe(true);
    }
  });
});
