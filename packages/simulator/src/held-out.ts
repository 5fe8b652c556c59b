/**
 * One held-out evaluation for every method of a simulation, so their figures compare: the edge with
 * any adapter, the cloud alone and the fused sources are all scored through the same windows, the same
 * prompts and the same greedy decoding, over what each can answer:
 * - prose: bits per byte, teacher-forced on windows of `WINDOW_BYTES` bytes (whole characters);
 * - labels (email): the label whose bytes are the most likely after the prompt's last bytes;
 * - answers (arithmetic): greedy exact match, byte by byte until the newline.
 * The cloud alone is scored by its own token log-likelihoods (its tokens are not bytes), so its bits
 * per byte are exact rather than aligned.
 */
import { ByteTokenizer, type ByteSource, END_OF_TEXT } from '@floe/model';
import pMap from 'p-map';
import type { CloudClient } from '@floe/edge-client';
import type { ItemScores } from '@floe/shared';
import { type DataManifest, type Example, type Split, TRAINED_CONTEXT, promptRoom } from '@floe/tasks';

/** Bytes per prose window: the pretraining window without its BOS. */
export const WINDOW_BYTES = TRAINED_CONTEXT - 1;

/** What a method answers with. */
export interface HeldOutModel {
  readonly name: string;
  /** log2 p(continuation | prefix), teacher-forced. */
  log2Prob(prefix: string, continuation: string): Promise<number>;
  /** The greedy continuation of `prompt` up to (not including) `stop`, at most `maxBytes` bytes. */
  greedy(prompt: string, maxBytes: number, stop: string): Promise<string>;
}

export interface HeldOutScore {
  metric: DataManifest['metric'];
  value: number;
  higherIsBetter: boolean;
  /** Bytes (prose) or examples scored. */
  count: number;
  /** Each item's part of `value` (a window's bits and bytes, an example's 1 or 0), in the split's order. */
  items: ItemScores;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Greedy decoding from any byte source: the most likely byte (or the end) at each step. */
async function greedyFrom(source: ByteSource, prompt: string, maxBytes: number, stop: string): Promise<string> {
  const stopByte = encoder.encode(stop)[0];
  const session = await source.start(prompt);
  const out: number[] = [];
  try {
    while (out.length < maxBytes) {
      const distribution = await session.next();
      let best = 0;
      for (let outcome = 1; outcome < distribution.length; outcome++) {
        if ((distribution[outcome] as number) > (distribution[best] as number)) best = outcome;
      }
      if (best === END_OF_TEXT || best === stopByte) break;
      out.push(best);
      session.push(best);
    }
  } finally {
    session.close();
  }
  return decoder.decode(Uint8Array.from(out));
}

/** A byte source (the edge with or without an adapter, a fused source) as a held-out model. */
export function sourceModel(source: ByteSource): HeldOutModel {
  return {
    name: source.name,
    async log2Prob(prefix, continuation) {
      const from = encoder.encode(prefix).length;
      const target = encoder.encode(prefix + continuation);
      const distributions = await source.score(prefix + continuation);
      let bits = 0;
      for (let t = from; t < target.length; t++) bits += Math.log2(distributions[t]![target[t]!]!);
      return bits;
    },
    greedy: (prompt, maxBytes, stop) => greedyFrom(source, prompt, maxBytes, stop),
  };
}

/**
 * The cloud alone: log-likelihoods from its own tokens (log p(prefix + continuation) - log p(prefix), as
 * lm-evaluation-harness scores continuations), greedy answers through `generator` (a CloudByteSource).
 */
export function cloudModel(client: CloudClient, generator: ByteSource): HeldOutModel {
  const logProb = async (text: string) => {
    if (text.length === 0) return 0;
    const scored = await client.score(text);
    if (!scored) throw new Error('the cloud did not answer a scoring call');
    // a provider that scores without a BOS gives its first token no logprob: counting it as certain
    // would flatter the cloud, so such a cloud cannot be scored alone
    if (scored.logprobs.some((lp) => lp === null || lp === undefined)) {
      throw new Error('the cloud left a token of the text unscored (no BOS?): its bits per byte would be optimistic');
    }
    return scored.logprobs.reduce<number>((sum, lp) => sum + (lp ?? 0), 0);
  };
  // a prompt is scored once, not once per label
  const prefixes = new Map<string, Promise<number>>();
  const prefixLogProb = (prefix: string) => {
    let scored = prefixes.get(prefix);
    if (!scored) prefixes.set(prefix, (scored = logProb(prefix)));
    return scored;
  };
  return {
    name: 'cloud',
    async log2Prob(prefix, continuation) {
      const [whole, before] = await Promise.all([logProb(prefix + continuation), prefixLogProb(prefix)]);
      return (whole - before) / Math.LN2;
    },
    greedy: (prompt, maxBytes, stop) => greedyFrom(generator, prompt, maxBytes, stop),
  };
}

/** Prose cut into windows of at most `WINDOW_BYTES` bytes that end on a character boundary. */
export function proseWindows(documents: readonly string[]): string[] {
  const windows: string[] = [];
  for (const doc of documents) {
    const bytes = encoder.encode(doc);
    for (let at = 0; at < bytes.length;) {
      let end = Math.min(bytes.length, at + WINDOW_BYTES);
      // back off a continuation byte (10xxxxxx) so the window holds whole characters
      while (end < bytes.length && end > at + 1 && ((bytes[end] as number) & 0xc0) === 0x80) end--;
      windows.push(decoder.decode(bytes.subarray(at, end)));
      at = end;
    }
  }
  return windows;
}

/**
 * Held-out items scored at a time: a cloud batches concurrent calls into one run (and a fused source
 * waits on the cloud while the edge computes), so a few in flight take a fraction of the time.
 */
const concurrency = 4;

export interface HeldOutOptions {
  /** Row length the adapters trained on: a labelled prompt keeps what a training row keeps of it. */
  seqLen: number;
}

/** `model` on a held-out split, in the metric its manifest names. */
export async function scoreHeldOut(
  model: HeldOutModel,
  split: Split,
  manifest: DataManifest,
  options: HeldOutOptions,
): Promise<HeldOutScore> {
  if (manifest.metric === 'bits-per-byte') {
    const windows = proseWindows(split.documents);
    const logProbs = await pMap(windows, (window) => model.log2Prob('', window), { concurrency });
    // summed in window order, so the figure does not depend on which call finished first
    const sums = logProbs.map((lp) => -lp);
    const weights = windows.map((window) => encoder.encode(window).length);
    const bits = sums.reduce((a, b) => a + b, 0);
    const bytes = weights.reduce((a, b) => a + b, 0);
    return {
      metric: manifest.metric,
      value: bits / Math.max(1, bytes),
      higherIsBetter: false,
      count: bytes,
      items: { sums, weights },
    };
  }
  const examples: readonly Example[] = split.examples ?? [];
  if (examples.length === 0) throw new Error(`${manifest.metric} needs examples; the split holds none`);
  let correct: boolean[];
  if (manifest.metric === 'label-accuracy') {
    const labels = manifest.labels ?? [];
    const room = promptRoom(options.seqLen, labels, new ByteTokenizer());
    correct = await pMap(
      examples,
      async (example) => {
        const prompt = decoder.decode(encoder.encode(example.prompt).slice(-room)).replace(/^\uFFFD+/, '');
        const scores = await Promise.all(labels.map((label) => model.log2Prob(prompt, label)));
        // ties go to the first label, as in @floe/tasks' evaluateLabels
        const best = scores.reduce((b, s, l) => (s > (scores[b] as number) ? l : b), 0);
        return labels[best] === example.answer;
      },
      { concurrency },
    );
  } else {
    correct = await pMap(
      examples,
      async (example) =>
        (await model.greedy(example.prompt, encoder.encode(example.answer).length + 1, '\n')).trim() === example.answer,
      { concurrency },
    );
  }
  const right = correct.filter(Boolean).length;
  return {
    metric: manifest.metric,
    value: right / examples.length,
    higherIsBetter: true,
    count: examples.length,
    items: { sums: correct.map(Number), weights: correct.map(() => 1) },
  };
}
