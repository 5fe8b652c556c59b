/**
 * One choice of a completion: the engine's token events turned into text deltas, with stop strings
 * (the text ends before the first match and generation stops there), characters cut by a token held
 * back until complete, and text that may be the start of a stop string held back until it is not.
 */
import { type TextTokenizer, completeUtf8Length, tokenText } from '@floe/model';
import type { Sequence, TokenStep } from './engine.js';

export interface ReportedToken {
  text: string;
  logprob: number;
  top: { text: string; logprob: number; bytes: number[] }[];
  bytes: number[];
  /** Characters of the choice's text (echoed prompt included) before this token. */
  offset: number;
}

export type ChoiceEvent =
  | { type: 'prompt'; text: string; tokens: ReportedToken[] }
  | { type: 'delta'; text: string; token: ReportedToken | undefined };

export type ChoiceFinish = 'stop' | 'length';

export class CloudError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

export function reportToken(
  tokenizer: TextTokenizer,
  step: TokenStep | null,
  id: number,
  offset: number,
): ReportedToken {
  const show = (t: number) => (tokenizer.isSpecial(t) ? specialName(tokenizer, t) : tokenText(tokenizer.tokenBytes(t)));
  return {
    text: show(id),
    logprob: step?.logprob ?? Number.NaN,
    top: (step?.top ?? []).map((t) => ({
      text: show(t.id),
      logprob: t.logprob,
      bytes: [...tokenizer.tokenBytes(t.id)],
    })),
    bytes: [...tokenizer.tokenBytes(id)],
    offset,
  };
}

function specialName(tokenizer: TextTokenizer, id: number): string {
  return id === tokenizer.eos ? '<|eos|>' : id === tokenizer.bos ? '<|bos|>' : '<|pad|>';
}

/**
 * Streams the choice of `sequence`. `promptIds` are scored when the sequence was asked for prompt
 * logprobs; `echo` puts the prompt's text first. Returns how the choice finished.
 */
export async function* runChoice(
  sequence: Sequence,
  tokenizer: TextTokenizer,
  options: { stop: readonly string[]; echo: boolean; promptIds: readonly number[] },
): AsyncGenerator<ChoiceEvent, ChoiceFinish> {
  const promptText = options.echo ? tokenizer.decode(options.promptIds) : '';
  if (options.echo && !sequence.spec.promptLogprobs) yield { type: 'prompt', text: promptText, tokens: [] };
  const bytes: number[] = [];
  /** Bytes of `text` so far: those up to the last complete character. */
  let decoded = 0;
  let flushed = 0;
  let text = '';
  const longestStop = Math.max(0, ...options.stop.map((s) => s.length));
  for await (const event of sequence) {
    if (event.type === 'prompt') {
      // the first prompt token has no logprob (nothing precedes it), as in OpenAI's echo
      const skipped = options.promptIds[0] === tokenizer.bos ? 1 : 0;
      const ids = options.promptIds.slice(skipped);
      const seen: number[] = [];
      const tokens = ids.map((id, i) => {
        const step = i === 0 && skipped === 0 ? null : (event.steps[i - 1 + skipped] ?? null);
        // characters before this token: the complete characters of the bytes before it
        const prefix = Uint8Array.from(seen);
        const offset = new TextDecoder().decode(prefix.subarray(0, completeUtf8Length(prefix))).length;
        seen.push(...tokenizer.tokenBytes(id));
        return reportToken(tokenizer, step, id, offset);
      });
      yield { type: 'prompt', text: promptText, tokens };
      continue;
    }
    if (event.type === 'end') {
      if (event.reason === 'error') throw new CloudError(500, 'server_error', 'the model failed while generating');
      // what stop strings held back, and a character the last token left cut (as U+FFFD)
      const full = new TextDecoder().decode(Uint8Array.from(bytes));
      if (full.length > flushed) yield { type: 'delta', text: full.slice(flushed), token: undefined };
      return event.reason === 'eos' ? 'stop' : 'length';
    }
    const { step } = event;
    if (step.token === tokenizer.eos) continue;
    const token = reportToken(tokenizer, step, step.token, promptText.length + text.length);
    bytes.push(...tokenizer.tokenBytes(step.token));
    // decode only the bytes completed since the last token (a cut character waits for its end), and look
    // for a stop only where one could have started: each token's work stays small however long the text
    const tail = Uint8Array.from(bytes.slice(-4));
    const complete = bytes.length - tail.length + completeUtf8Length(tail);
    const before = text.length;
    text += new TextDecoder().decode(Uint8Array.from(bytes.slice(decoded, complete)));
    decoded = complete;
    const hit = firstStop(text, options.stop, Math.max(0, before - longestStop + 1));
    if (hit >= 0) {
      sequence.cancel();
      yield { type: 'delta', text: text.slice(flushed, hit), token };
      return 'stop';
    }
    const flushable = text.length - heldBack(text, options.stop);
    yield { type: 'delta', text: text.slice(flushed, Math.max(flushed, flushable)), token };
    flushed = Math.max(flushed, flushable);
  }
  return 'length';
}

/** Where the first stop string starts in `text`, searching from `from`; -1 when none does. */
function firstStop(text: string, stop: readonly string[], from: number): number {
  let first = -1;
  for (const s of stop) {
    const at = text.indexOf(s, from);
    if (at >= 0 && (first < 0 || at < first)) first = at;
  }
  return first;
}

/** Length of the longest end of `text` that begins some stop string. */
function heldBack(text: string, stop: readonly string[]): number {
  let held = 0;
  for (const s of stop) {
    for (let k = Math.min(s.length - 1, text.length); k > held; k--) {
      if (text.endsWith(s.slice(0, k))) {
        held = k;
        break;
      }
    }
  }
  return held;
}
