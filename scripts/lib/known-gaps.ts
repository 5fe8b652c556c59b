/**
 * The "Known gaps" section of a model card: every task on which a smaller committed checkpoint is as
 * good as this one or better, so that a gap is a reported figure rather than a surprise.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { type LlamaConfig, parameterCount } from '@floe/model';
import type { ArithmeticMetrics, EmailMetrics, SpeechMetrics, TaskName } from '@floe/tasks';

export type HeldOutFigures = { speech: SpeechMetrics; email: EmailMetrics; arithmetic: ArithmeticMetrics };

interface Headline {
  value: number;
  text: string;
  /** Higher is better (accuracy), or lower (bits per byte). */
  higherIsBetter: boolean;
}

function headline(task: TaskName, figures: HeldOutFigures): Headline {
  if (task === 'speech') {
    const bpb = figures.speech.bitsPerByte;
    return { value: bpb, text: `${bpb.toFixed(3)} bits/byte`, higherIsBetter: false };
  }
  const [rate, total] =
    task === 'email'
      ? [figures.email.accuracy, figures.email.examples]
      : [figures.arithmetic.exactMatch, figures.arithmetic.examples];
  const text = `${(100 * rate).toFixed(1)}% (${Math.round(rate * total)} of ${total})`;
  return { value: rate, text, higherIsBetter: true };
}

/** Markdown for the card of `name`, comparing `figures` with every smaller checkpoint under `modelsRoot`. */
export function knownGapsSection(
  name: string,
  config: LlamaConfig,
  figures: HeldOutFigures,
  modelsRoot: string,
): string {
  const size = parameterCount(config);
  const lines: string[] = [];
  let smaller = 0;
  const others = existsSync(modelsRoot) ? readdirSync(modelsRoot).filter((m) => m !== name) : [];
  for (const other of others.sort()) {
    const dir = path.join(modelsRoot, other);
    if (!existsSync(path.join(dir, 'eval.json')) || !existsSync(path.join(dir, 'config.json'))) continue;
    const otherConfig = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as LlamaConfig;
    if (parameterCount(otherConfig) >= size) continue;
    smaller++;
    const otherFigures = JSON.parse(readFileSync(path.join(dir, 'eval.json'), 'utf8')) as HeldOutFigures;
    for (const task of ['speech', 'email', 'arithmetic'] as const) {
      const mine = headline(task, figures);
      const theirs = headline(task, otherFigures);
      const behind = mine.higherIsBetter ? mine.value <= theirs.value : mine.value >= theirs.value;
      if (behind) lines.push(`- ${other} (smaller) is ahead on ${task}: ${theirs.text} against ${mine.text}.`);
    }
  }
  const body = lines.length
    ? `${lines.join('\n')}\n\nWhat was tried to close a gap is recorded in docs/decisions/.`
    : smaller === 0
      ? 'None: no smaller checkpoint is committed.'
      : 'None: this checkpoint is ahead of every smaller committed checkpoint on every task.';
  return `## Known gaps\n\nHeld-out figures (general:test) against every smaller committed checkpoint.\n\n${body}\n`;
}
