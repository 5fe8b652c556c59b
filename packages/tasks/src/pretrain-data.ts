/**
 * Training rows from a task's text, each starting with BOS: windows of prose (speech) or packed
 * examples (email, arithmetic). Pretraining batches are a function of (seed, step), so a resumed run
 * sees the same data.
 */
import { ByteTokenizer, Random, type TrainBatch } from '@floe/model';
import { type Example, type Split, TASKS, type TaskName, taskPartition } from './tasks.js';

const BOS = new ByteTokenizer().bos;

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

/** Loss weight of an example's prompt bytes relative to its answer (and the newline ending it). */
export const DEFAULT_PROMPT_WEIGHT = 0.2;

/** Random training windows over prose documents (joined by blank lines); every target counts once. */
export class WindowSampler implements RowSampler {
  private readonly bytes: Uint8Array;

  constructor(
    documents: readonly string[],
    readonly seqLen: number,
  ) {
    this.bytes = new TextEncoder().encode(documents.map((d) => `${d}\n\n`).join(''));
    if (this.bytes.length <= seqLen)
      throw new Error(`${this.bytes.length} bytes of text cannot fill a ${seqLen}-byte window`);
  }

  row(random: Random): TrainRow {
    const start = random.integer(this.bytes.length - this.seqLen);
    const row = [BOS, ...this.bytes.subarray(start, start + this.seqLen)];
    return { inputIds: row.slice(0, -1), targets: row.slice(1), weights: row.slice(1).map(() => 1) };
  }
}

/**
 * Bytes of a prompt kept in a `seqLen`-byte window: the window less the longest `answer\n`, so every
 * answer of a cut prompt starts at the same position (training rows and email evaluation both cut so).
 */
export function promptRoom(seqLen: number, answers: readonly string[]): number {
  const encoder = new TextEncoder();
  const room = seqLen - Math.max(...answers.map((a) => encoder.encode(`${a}\n`).length));
  if (room <= 0) throw new Error(`a ${seqLen}-byte window leaves no room for a prompt before its answer`);
  return room;
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
  private readonly examples: { bytes: Uint8Array; promptBytes: number }[];
  /** Bytes a row's first prompt keeps at most (`promptRoom`). */
  readonly promptRoom: number;

  constructor(
    examples: readonly Example[],
    readonly seqLen: number,
    readonly promptWeight = DEFAULT_PROMPT_WEIGHT,
  ) {
    if (examples.length === 0) throw new Error('no examples to sample from');
    const encoder = new TextEncoder();
    this.examples = examples.map((e) => ({
      bytes: encoder.encode(`${e.prompt}${e.answer}\n`),
      promptBytes: encoder.encode(e.prompt).length,
    }));
    this.promptRoom = promptRoom(
      seqLen,
      examples.map((e) => e.answer),
    );
  }

  row(random: Random): TrainRow {
    const tokens: number[] = [BOS];
    const weights: number[] = [];
    while (tokens.length <= this.seqLen) {
      const { bytes, promptBytes } = this.examples[random.integer(this.examples.length)]!;
      const room = this.seqLen + 1 - tokens.length;
      const from = tokens.length === 1 ? Math.max(0, promptBytes - this.promptRoom) : 0;
      const to = Math.min(bytes.length, from + room);
      for (let i = from; i < to; i++) {
        tokens.push(bytes[i]!);
        weights.push(i < promptBytes ? this.promptWeight : 1);
      }
    }
    return { inputIds: tokens.slice(0, -1), targets: tokens.slice(1), weights };
  }
}

/** Windows for prose, packed examples for tasks made of examples. */
export function rowSampler(split: Split, seqLen: number, promptWeight = DEFAULT_PROMPT_WEIGHT): RowSampler {
  return split.examples
    ? new ExampleSampler(split.examples, seqLen, promptWeight)
    : new WindowSampler(split.documents, seqLen);
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
  ) {
    const splits = TASKS.map((task) => [task, taskPartition(task, { seed }).general.train] as const);
    this.samplers = new Map(splits.map(([task, split]) => [task, rowSampler(split, seqLen, promptWeight)]));
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
