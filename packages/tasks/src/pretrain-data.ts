/**
 * Training rows from a task's text, each starting with BOS: windows of prose (speech) or packed
 * examples (email, arithmetic). Pretraining batches are a function of (seed, step), so a resumed run
 * sees the same data.
 */
import { ByteTokenizer, Random, type TextTokenizer, type TrainBatch } from '@floe/model';
import { type Example, type Split, TASKS, type TaskName, taskPartition } from './tasks.js';

const BYTES = new ByteTokenizer();

export interface TrainRow {
  inputIds: number[];
  targets: number[];
  /** Loss weight of each target. */
  weights: number[];
}

export interface RowSampler {
  readonly seqLen: number;
  row(random: Random): TrainRow;
}

function batchOf(rows: readonly TrainRow[]): TrainBatch {
  return {
    inputIds: rows.map((r) => r.inputIds),
    targets: rows.map((r) => r.targets),
    weights: rows.map((r) => r.weights),
  };
}

export function sampleBatch(sampler: RowSampler, random: Random, rows: number): TrainBatch {
  return batchOf(Array.from({ length: rows }, () => sampler.row(random)));
}

/** Loss weight of an example's prompt tokens relative to its answer (and the newline ending it). */
export const DEFAULT_PROMPT_WEIGHT = 0.2;

/** Random training windows over prose documents (joined by blank lines); every target counts once. */
export class WindowSampler implements RowSampler {
  private readonly tokens: Uint32Array;
  private readonly bos: number;

  constructor(
    documents: readonly string[],
    readonly seqLen: number,
    tokenizer: TextTokenizer = BYTES,
  ) {
    this.tokens = Uint32Array.from(documents.flatMap((d) => tokenizer.encode(`${d}\n\n`)));
    this.bos = tokenizer.bos;
    if (this.tokens.length <= seqLen)
      throw new Error(`${this.tokens.length} tokens of text cannot fill a ${seqLen}-token window`);
  }

  row(random: Random): TrainRow {
    const start = random.integer(this.tokens.length - this.seqLen);
    const row = [this.bos, ...this.tokens.subarray(start, start + this.seqLen)];
    return { inputIds: row.slice(0, -1), targets: row.slice(1), weights: row.slice(1).map(() => 1) };
  }
}

/**
 * Tokens of a prompt kept in a `seqLen`-token window: the window less the longest `answer\n`, so every
 * answer of a cut prompt starts at the same position (training rows and email evaluation both cut so).
 */
export function promptRoom(seqLen: number, answers: readonly string[], tokenizer: TextTokenizer = BYTES): number {
  const room = seqLen - Math.max(...answers.map((a) => answerTokens(tokenizer, a).length));
  if (room <= 0) throw new Error(`a ${seqLen}-token window leaves no room for a prompt before its answer`);
  return room;
}

/**
 * An answer and the newline that ends it, encoded apart from its prompt: every answer then has one
 * tokenization whatever the prompt, in training rows and in evaluation alike.
 */
export function answerTokens(tokenizer: TextTokenizer, answer: string): number[] {
  return tokenizer.encode(`${answer}\n`);
}

/**
 * Rows packed from randomly drawn examples (`prompt answer\n` each). A row's first example keeps at most the
 * last `promptRoom` bytes of its prompt, so even an email longer than the window shows its
 * label, and every label starts at the same position whatever its length: cutting the whole example to
 * the window's end instead put ` spam` one position before ` ham`, and the cloud checkpoint learned the
 * answer from that position (decision 0011). Answer bytes (and the newline) weigh 1, prompt bytes
 * `promptWeight`. The last example of a row may be cut short.
 */
export class ExampleSampler implements RowSampler {
  private readonly examples: { tokens: number[]; promptTokens: number }[];
  private readonly bos: number;
  /** Tokens a row's first prompt keeps at most (`promptRoom`). */
  readonly promptRoom: number;

  constructor(
    examples: readonly Example[],
    readonly seqLen: number,
    readonly promptWeight = DEFAULT_PROMPT_WEIGHT,
    tokenizer: TextTokenizer = BYTES,
  ) {
    if (examples.length === 0) throw new Error('no examples to sample from');
    this.examples = examples.map((e) => {
      const prompt = tokenizer.encode(e.prompt);
      return { tokens: [...prompt, ...answerTokens(tokenizer, e.answer)], promptTokens: prompt.length };
    });
    this.bos = tokenizer.bos;
    this.promptRoom = promptRoom(
      seqLen,
      examples.map((e) => e.answer),
      tokenizer,
    );
  }

  row(random: Random): TrainRow {
    const tokens: number[] = [this.bos];
    const weights: number[] = [];
    while (tokens.length <= this.seqLen) {
      const example = this.examples[random.integer(this.examples.length)]!;
      const room = this.seqLen + 1 - tokens.length;
      const from = tokens.length === 1 ? Math.max(0, example.promptTokens - this.promptRoom) : 0;
      const to = Math.min(example.tokens.length, from + room);
      for (let i = from; i < to; i++) {
        tokens.push(example.tokens[i]!);
        weights.push(i < example.promptTokens ? this.promptWeight : 1);
      }
    }
    return { inputIds: tokens.slice(0, -1), targets: tokens.slice(1), weights };
  }
}

/** Windows for prose, packed examples for tasks made of examples. */
export function rowSampler(
  split: Split,
  seqLen: number,
  promptWeight = DEFAULT_PROMPT_WEIGHT,
  tokenizer: TextTokenizer = BYTES,
): RowSampler {
  return split.examples
    ? new ExampleSampler(split.examples, seqLen, promptWeight, tokenizer)
    : new WindowSampler(split.documents, seqLen, tokenizer);
}

export type Mixture = Record<TaskName, number>;
export const DEFAULT_MIXTURE: Mixture = { speech: 0.5, email: 0.2, arithmetic: 0.3 };

export class PretrainData {
  private readonly samplers: Map<TaskName, RowSampler>;
  readonly bytesByTask: Record<TaskName, number>;

  constructor(
    readonly seed: number,
    readonly seqLen: number,
    readonly mixture: Mixture = DEFAULT_MIXTURE,
    readonly promptWeight = DEFAULT_PROMPT_WEIGHT,
    tokenizer: TextTokenizer = BYTES,
  ) {
    const splits = TASKS.map((task) => [task, taskPartition(task, { seed }).general.train] as const);
    this.samplers = new Map(splits.map(([task, split]) => [task, rowSampler(split, seqLen, promptWeight, tokenizer)]));
    const encoder = new TextEncoder();
    this.bytesByTask = Object.fromEntries(
      splits.map(([task, split]) => [task, split.documents.reduce((n, d) => n + encoder.encode(d).length, 0)]),
    ) as Record<TaskName, number>;
  }

  batch(step: number, rows: number): TrainBatch {
    const random = new Random(this.seed * 1_000_003 + step);
    const total = TASKS.reduce((n, t) => n + this.mixture[t], 0);
    const picked = Array.from({ length: rows }, () => {
      let pick = random.next() * total;
      const task = TASKS.find((t) => (pick -= this.mixture[t]) < 0) ?? 'speech';
      return (this.samplers.get(task) as RowSampler).row(random);
    });
    return batchOf(picked);
  }
}
