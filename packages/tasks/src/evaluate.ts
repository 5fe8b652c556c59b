/**
 * Task metrics on any model behind the DecoderModel interface (ORT or tfjs):
 * - speech: bits per byte (token log-likelihoods over the tokens' bytes) and next-token accuracy, over
 *   non-overlapping windows of the training length that each start with BOS;
 * - email: label accuracy, by comparing the log-likelihood of the continuations " spam" and " ham" after the
 *   prompt (its end, when it is longer than the training length);
 * - arithmetic: greedy exact match, overall and per operation and digit count.
 */
import {
  ByteTokenizer,
  type DecoderModel,
  type Generation,
  type TextTokenizer,
  checkTokenizer,
  generate,
} from '@floe/model';
import type { LoraAdapter } from '@floe/shared';
import { answerTokens, promptRoom } from './pretrain-data.js';
import type { DataManifest } from './data-dir.js';
import type { Example, Split, TaskName } from './tasks.js';

export interface EvalOptions {
  lora?: LoraAdapter | undefined;
  /** Rows per forward pass. */
  batch?: number;
  onProgress?: (done: number, total: number) => void;
  /** Tokens the model sees at once, BOS included (default TRAINED_CONTEXT): speech windows, email prompts. */
  contextTokens?: number;
  /**
   * Called for every discrete choice a metric counts (a next-byte argmax, a label, a greedy answer) with
   * its margin: the gap to the runner-up in logits or log-likelihood. Float results differ in their last
   * bits between CPUs, so a choice within that noise of a tie may go the other way on another machine.
   */
  onDecision?: (margin: number) => void;
  /** The model's vocabulary (default bytes); checked against its config. */
  tokenizer?: TextTokenizer | undefined;
}

const BYTES = new ByteTokenizer();

function tokenizerOf<C>(model: DecoderModel<C>, options: EvalOptions): TextTokenizer {
  const tokenizer = options.tokenizer ?? BYTES;
  checkTokenizer(model.config, tokenizer);
  return tokenizer;
}

/** log p(target) for each position of each row, from logits [rows, seq, vocab]. */
function logProbsOfTargets(logits: Float32Array, vocab: number, rows: number[][], targets: number[][]): number[][] {
  const seq = rows[0]?.length ?? 0;
  return targets.map((row, b) =>
    row.map((target, t) => {
      const offset = (b * seq + t) * vocab;
      let max = -Infinity;
      for (let v = 0; v < vocab; v++) max = Math.max(max, logits[offset + v] as number);
      let sum = 0;
      for (let v = 0; v < vocab; v++) sum += Math.exp((logits[offset + v] as number) - max);
      return (logits[offset + target] as number) - max - Math.log(sum);
    }),
  );
}

/** The argmax of one row of logits and its gap to the runner-up. */
function argmaxAt(logits: Float32Array, vocab: number, offset: number): { token: number; margin: number } {
  let best = 0;
  let second = -Infinity;
  for (let v = 1; v < vocab; v++) {
    const logit = logits[offset + v] as number;
    if (logit > (logits[offset + best] as number)) {
      second = logits[offset + best] as number;
      best = v;
    } else if (logit > second) second = logit;
  }
  return { token: best, margin: (logits[offset + best] as number) - second };
}

/** Scores rows (right-padded) and returns log p of each row's targets (undefined targets are skipped). */
async function scoreRows<C>(model: DecoderModel<C>, rows: number[][], targets: number[][], options: EvalOptions) {
  const width = Math.max(...rows.map((r) => r.length));
  const padded = rows.map((r) => [...r, ...new Array<number>(width - r.length).fill(model.config.pad_token_id)]);
  const mask = rows.map((r) => [
    ...new Array<number>(r.length).fill(1),
    ...new Array<number>(width - r.length).fill(0),
  ]);
  const { logits } = await model.forward(padded, { attentionMask: mask, lora: options.lora });
  return { logits, width, logProbs: logProbsOfTargets(logits, model.config.vocab_size, padded, targets) };
}

export interface SpeechMetrics {
  bitsPerByte: number;
  /** Share of positions whose argmax is the next token: next-byte accuracy for a byte-level model. */
  nextTokenAccuracy: number;
  bytes: number;
  tokens: number;
}

/** The window every committed checkpoint was pretrained on (`pnpm models:pretrain --seq`). */
export const TRAINED_CONTEXT = 256;

/** Tokens a model is shown at once: the requested context, at most its positions. */
function contextOf<C>(model: DecoderModel<C>, options: EvalOptions): number {
  return Math.min(model.config.max_position_embeddings, options.contextTokens ?? TRAINED_CONTEXT);
}

export async function evaluateSpeech<C>(
  model: DecoderModel<C>,
  documents: readonly string[],
  options: EvalOptions = {},
): Promise<SpeechMetrics> {
  // windows as long as the training windows (BOS + 255 bytes): positions a checkpoint never trained on
  // measure extrapolation, not modelling (the cloud model lost 0.3 bits per byte on them)
  const tokenizer = tokenizerOf(model, options);
  const window = contextOf(model, options) - 1;
  const windows: number[][] = [];
  for (const doc of documents) {
    const ids = tokenizer.encode(doc);
    for (let start = 0; start < ids.length; start += window) windows.push(ids.slice(start, start + window));
  }
  const batch = options.batch ?? 8;
  let nats = 0;
  let correct = 0;
  let count = 0;
  let bytes = 0;
  for (let i = 0; i < windows.length; i += batch) {
    const chunk = windows.slice(i, i + batch);
    const inputs = chunk.map((w) => [model.config.bos_token_id, ...w.slice(0, -1)]);
    const { logits, width, logProbs } = await scoreRows(model, inputs, chunk, options);
    chunk.forEach((w, b) => {
      w.forEach((target, t) => {
        nats -= logProbs[b]?.[t] as number;
        const choice = argmaxAt(logits, model.config.vocab_size, (b * width + t) * model.config.vocab_size);
        if (choice.token === target) correct++;
        options.onDecision?.(choice.margin);
      });
      count += w.length;
      bytes += tokenizer.bytes(w).length;
    });
    options.onProgress?.(Math.min(i + batch, windows.length), windows.length);
  }
  return { bitsPerByte: nats / bytes / Math.LN2, nextTokenAccuracy: correct / count, bytes, tokens: count };
}

export interface EmailMetrics {
  accuracy: number;
  examples: number;
}

export const EMAIL_LABELS = [' spam', ' ham'] as const;

/** Email: a label accuracy over " spam" and " ham". */
export function evaluateEmail<C>(
  model: DecoderModel<C>,
  examples: readonly Example[],
  options: EvalOptions = {},
): Promise<EmailMetrics> {
  return evaluateLabels(model, examples, EMAIL_LABELS, options);
}

/**
 * Label accuracy: an example is right when its answer is the label whose continuation of the prompt is
 * the most likely (summed log-likelihood; ties go to the first label).
 */
export async function evaluateLabels<C>(
  model: DecoderModel<C>,
  examples: readonly Example[],
  labels: readonly string[],
  options: EvalOptions = {},
): Promise<EmailMetrics> {
  const perBatch = Math.max(1, Math.floor((options.batch ?? 8) / labels.length));
  const tokenizer = tokenizerOf(model, options);
  const context = contextOf(model, options);
  // a long prompt keeps what training rows keep of it (ExampleSampler)
  const room = promptRoom(context, labels, tokenizer);
  let correct = 0;
  for (let i = 0; i < examples.length; i += perBatch) {
    const chunk = examples.slice(i, i + perBatch);
    const rows: number[][] = [];
    const targets: number[][] = [];
    const labelStart: number[] = [];
    for (const example of chunk) {
      const prompt = [tokenizer.bos, ...tokenizer.encode(example.prompt).slice(-room)];
      for (const label of labels) {
        const full = [...prompt, ...tokenizer.encode(label)];
        rows.push(full.slice(0, -1));
        targets.push(full.slice(1));
        labelStart.push(prompt.length - 1);
      }
    }
    const { logProbs } = await scoreRows(model, rows, targets, options);
    const score = (r: number) => (logProbs[r] ?? []).slice(labelStart[r]).reduce((a, b) => a + b, 0);
    chunk.forEach((example, k) => {
      const scores = labels.map((_, l) => score(k * labels.length + l));
      let best = 0;
      scores.forEach((x, l) => {
        if (x > (scores[best] as number)) best = l;
      });
      if (labels[best] === example.answer) correct++;
      const runnerUp = Math.max(...scores.filter((_, l) => l !== best));
      options.onDecision?.((scores[best] as number) - runnerUp);
    });
    options.onProgress?.(Math.min(i + perBatch, examples.length), examples.length);
  }
  return { accuracy: correct / examples.length, examples: examples.length };
}

/**
 * Mean negative log-likelihood, in nats per answer byte, of each example's answer (and the newline that
 * ends it) after its prompt: a smooth stand-in for exact match where too few examples make exact match
 * noisy (choosing between two adapters on a device's validation split).
 */
export async function answerLoss<C>(
  model: DecoderModel<C>,
  examples: readonly Example[],
  options: EvalOptions = {},
): Promise<{ nats: number; bytes: number }> {
  const tokenizer = tokenizerOf(model, options);
  const batch = options.batch ?? 16;
  const context = contextOf(model, options);
  let nats = 0;
  let bytes = 0;
  for (let i = 0; i < examples.length; i += batch) {
    const chunk = examples.slice(i, i + batch);
    const rows: number[][] = [];
    const targets: number[][] = [];
    const starts: number[] = [];
    for (const example of chunk) {
      const answer = answerTokens(tokenizer, example.answer);
      const prompt = [tokenizer.bos, ...tokenizer.encode(example.prompt).slice(-(context - answer.length))];
      const full = [...prompt, ...answer];
      rows.push(full.slice(0, -1));
      targets.push(full.slice(1));
      starts.push(prompt.length - 1);
    }
    const { logProbs } = await scoreRows(model, rows, targets, options);
    chunk.forEach((_, k) => {
      const answerLogProbs = (logProbs[k] ?? []).slice(starts[k]);
      nats -= answerLogProbs.reduce((a, b) => a + b, 0);
      bytes += tokenizer.bytes((targets[k] ?? []).slice(starts[k])).length;
    });
  }
  return { nats: nats / Math.max(1, bytes), bytes };
}

export interface ArithmeticMetrics {
  exactMatch: number;
  examples: number;
  /** Exact match per `op digits`, e.g. `+ 2`. */
  byDifficulty: Record<string, { exactMatch: number; examples: number }>;
}

export function arithmeticDifficulty(prompt: string): string {
  const match = /^(\d+)([+\-*])(\d+)=$/.exec(prompt);
  return match ? `${match[2]} ${Math.max(match[1]!.length, match[3]!.length)}` : 'other';
}

export async function evaluateArithmetic<C>(
  model: DecoderModel<C>,
  examples: readonly Example[],
  options: EvalOptions = {},
): Promise<ArithmeticMetrics> {
  const tokenizer = tokenizerOf(model, options);
  const batch = options.batch ?? 32;
  const tally = new Map<string, { right: number; total: number }>();
  let correct = 0;
  for (let i = 0; i < examples.length; i += batch) {
    const chunk = examples.slice(i, i + batch);
    const maxAnswer = Math.max(...chunk.map((e) => e.answer.length));
    const outputs = await generate(
      model,
      chunk.map((e) => e.prompt),
      { maxNewTokens: maxAnswer + 1, stop: ['\n'], lora: options.lora, tokenizer },
    );
    chunk.forEach((example, k) => {
      const output = outputs[k] as Generation;
      const right = output.text.trim() === example.answer;
      options.onDecision?.(output.margin);
      if (right) correct++;
      const key = arithmeticDifficulty(example.prompt);
      const entry = tally.get(key) ?? { right: 0, total: 0 };
      entry.total++;
      if (right) entry.right++;
      tally.set(key, entry);
    });
    options.onProgress?.(Math.min(i + batch, examples.length), examples.length);
  }
  const byDifficulty = Object.fromEntries(
    [...tally]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => [k, { exactMatch: v.right / v.total, examples: v.total }]),
  );
  return { exactMatch: correct / examples.length, examples: examples.length, byDifficulty };
}

export type TaskMetrics = SpeechMetrics | EmailMetrics | ArithmeticMetrics;

export async function evaluateTask<C>(
  model: DecoderModel<C>,
  task: TaskName,
  split: { documents: string[]; examples?: Example[] },
  options: EvalOptions = {},
): Promise<TaskMetrics> {
  if (task === 'speech') return evaluateSpeech(model, split.documents, options);
  if (!split.examples) throw new Error(`the ${task} split has no examples`);
  if (task === 'email') return evaluateEmail(model, split.examples, options);
  return evaluateArithmetic(model, split.examples, options);
}

/** One held-out figure of a device's data, in the metric its manifest names. */
export interface Score {
  metric: DataManifest['metric'];
  value: number;
  /** Bits per byte: lower is better; accuracies: higher. */
  higherIsBetter: boolean;
  /** Bytes (prose) or examples scored. */
  count: number;
}

/** Scores `split` in the metric of `manifest` (see data-dir.ts). */
export async function evaluateSplit<C>(
  model: DecoderModel<C>,
  split: Split,
  manifest: DataManifest,
  options: EvalOptions = {},
): Promise<Score> {
  if (manifest.metric === 'bits-per-byte') {
    const m = await evaluateSpeech(model, split.documents, options);
    return { metric: manifest.metric, value: m.bitsPerByte, higherIsBetter: false, count: m.bytes };
  }
  if (!split.examples) throw new Error(`${manifest.metric} needs examples; the split holds prose`);
  if (manifest.metric === 'label-accuracy') {
    const m = await evaluateLabels(model, split.examples, manifest.labels ?? [], options);
    return { metric: manifest.metric, value: m.accuracy, higherIsBetter: true, count: m.examples };
  }
  const m = await evaluateArithmetic(model, split.examples, options);
  return { metric: manifest.metric, value: m.exactMatch, higherIsBetter: true, count: m.examples };
}
