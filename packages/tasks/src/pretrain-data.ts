/**
 * Pretraining batches from the general corpora of all tasks: each row is a window of one task's text,
 * starting with BOS. Batches are a function of (seed, step), so a resumed run sees the same data.
 */
import { ByteTokenizer, Random, type TrainBatch } from '@floe/model';
import { TASKS, type TaskName, taskPartition } from './tasks.js';

/** Rows as a batch in which every target token counts once. */
function batchOf(rows: readonly { inputIds: number[]; targets: number[] }[]): TrainBatch {
  return {
    inputIds: rows.map((r) => r.inputIds),
    targets: rows.map((r) => r.targets),
    weights: rows.map((r) => r.targets.map(() => 1)),
  };
}

/** Random training windows over a set of documents, each row starting with BOS. */
export class WindowSampler {
  private readonly bytes: Uint8Array;
  /** Offsets rows may start at: document starts, or undefined for anywhere (prose). */
  private readonly starts: number[] | undefined;

  constructor(
    documents: readonly string[],
    readonly seqLen: number,
    startAtDocuments: boolean,
  ) {
    const encoder = new TextEncoder();
    const separator = startAtDocuments ? '' : '\n\n';
    const starts: number[] = [];
    let offset = 0;
    for (const doc of documents) {
      starts.push(offset);
      offset += encoder.encode(doc + separator).length;
    }
    this.bytes = encoder.encode(documents.join(separator) + separator);
    this.starts = startAtDocuments ? starts : undefined;
    if (this.bytes.length <= seqLen)
      throw new Error(`${this.bytes.length} bytes of text cannot fill a ${seqLen}-byte window`);
  }

  get byteLength(): number {
    return this.bytes.length;
  }

  /** One row: inputs [BOS, x0..x(S-2)], targets [x0..x(S-1)]. */
  row(random: Random): { inputIds: number[]; targets: number[] } {
    const last = this.bytes.length - this.seqLen;
    const start = this.starts
      ? Math.min(this.starts[random.integer(this.starts.length)] as number, last)
      : random.integer(last);
    const row = [new ByteTokenizer().bos, ...this.bytes.subarray(start, start + this.seqLen)];
    return { inputIds: row.slice(0, -1), targets: row.slice(1) };
  }

  batch(random: Random, rows: number): TrainBatch {
    const picked = Array.from({ length: rows }, () => this.row(random));
    return batchOf(picked);
  }
}

export type Mixture = Record<TaskName, number>;
export const DEFAULT_MIXTURE: Mixture = { speech: 0.5, email: 0.2, arithmetic: 0.3 };

export class PretrainData {
  private readonly samplers: Map<TaskName, WindowSampler>;
  readonly bytesByTask: Record<TaskName, number>;

  constructor(
    readonly seed: number,
    readonly seqLen: number,
    readonly mixture: Mixture = DEFAULT_MIXTURE,
  ) {
    this.samplers = new Map(
      TASKS.map((task) => [
        task,
        new WindowSampler(taskPartition(task, { seed }).general.train.documents, seqLen, task !== 'speech'),
      ]),
    );
    this.bytesByTask = Object.fromEntries(TASKS.map((t) => [t, this.samplers.get(t)?.byteLength ?? 0])) as Record<
      TaskName,
      number
    >;
  }

  batch(step: number, rows: number): TrainBatch {
    const random = new Random(this.seed * 1_000_003 + step);
    const total = TASKS.reduce((n, t) => n + this.mixture[t], 0);
    const picked = Array.from({ length: rows }, () => {
      let pick = random.next() * total;
      const task = TASKS.find((t) => (pick -= this.mixture[t]) < 0) ?? 'speech';
      return (this.samplers.get(task) as WindowSampler).row(random);
    });
    return batchOf(picked);
  }
}
