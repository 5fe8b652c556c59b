/**
 * Pretraining batches from the general corpora of all tasks: each row is a window of one task's text,
 * starting with BOS. Batches are a function of (seed, step), so a resumed run sees the same data.
 */
import { ByteTokenizer, Random, type TrainBatch } from '@floe/model';
import { TASKS, type TaskName, taskPartition } from './tasks.js';

interface Stream {
  bytes: Uint8Array;
  /** Offsets rows may start at: document starts (examples) or undefined for anywhere (prose). */
  starts: number[] | undefined;
}

export type Mixture = Record<TaskName, number>;
export const DEFAULT_MIXTURE: Mixture = { speech: 0.5, email: 0.2, arithmetic: 0.3 };

export class PretrainData {
  private readonly streams: Map<TaskName, Stream>;
  readonly bytesByTask: Record<TaskName, number>;

  constructor(
    readonly seed: number,
    readonly seqLen: number,
    readonly mixture: Mixture = DEFAULT_MIXTURE,
  ) {
    const encoder = new TextEncoder();
    this.streams = new Map();
    for (const task of TASKS) {
      const docs = taskPartition(task, { seed }).general.train.documents;
      const separator = task === 'speech' ? '\n\n' : '';
      const starts: number[] = [];
      let offset = 0;
      for (const doc of docs) {
        starts.push(offset);
        offset += encoder.encode(doc + separator).length;
      }
      this.streams.set(task, {
        bytes: encoder.encode(docs.join(separator) + separator),
        starts: task === 'speech' ? undefined : starts,
      });
    }
    this.bytesByTask = Object.fromEntries(TASKS.map((t) => [t, this.streams.get(t)?.bytes.length ?? 0])) as Record<
      TaskName,
      number
    >;
  }

  batch(step: number, rows: number): TrainBatch {
    const random = new Random(this.seed * 1_000_003 + step);
    const bos = new ByteTokenizer().bos;
    const total = TASKS.reduce((n, t) => n + this.mixture[t], 0);
    const inputIds: number[][] = [];
    const targets: number[][] = [];
    for (let r = 0; r < rows; r++) {
      let pick = random.next() * total;
      const task = TASKS.find((t) => (pick -= this.mixture[t]) < 0) ?? 'speech';
      const { bytes, starts } = this.streams.get(task) as Stream;
      const last = bytes.length - this.seqLen;
      const start = starts ? Math.min(starts[random.integer(starts.length)] as number, last) : random.integer(last);
      const row = [bos, ...bytes.subarray(start, start + this.seqLen)];
      inputIds.push(row.slice(0, -1));
      targets.push(row.slice(1));
    }
    return { inputIds, targets, weights: targets.map((row) => row.map(() => 1)) };
  }
}
