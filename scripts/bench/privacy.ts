/**
 * The privacy guard: recall and precision per kind on the two labelled sets (the generated one and the
 * second author's, written without reading the detectors), false findings in text without personal data
 * (every State of the Union address), and the time a detection takes at the prompt lengths a cloud
 * call carries.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { type LabelledText, PII_KINDS, detect, scoreDetection } from '@floe/edge-client';
import { stateOfTheUnion } from '@floe/tasks';
import type { BenchResult } from '../lib/bench-report.js';

const SETS = path.join(import.meta.dirname, '..', '..', 'test', 'privacy');
const LENGTHS = [128, 512, 2048, 8192];

function readSet(file: string): LabelledText[] {
  return readFileSync(path.join(SETS, file), 'utf8')
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as LabelledText);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

export function run(): Promise<BenchResult> {
  const rows: BenchResult['rows'] = [];
  const sets: Record<string, unknown> = {};
  for (const [name, file] of [
    ['generated', 'labelled-set.jsonl'],
    ['second author', 'second-author-set.jsonl'],
  ] as const) {
    const items = readSet(file);
    const score = scoreDetection(items);
    sets[name] = {
      prompts: items.length,
      clean: score.clean,
      falseAlarms: score.falseAlarms,
      ...score.perKind,
      overall: score.overall,
    };
    for (const kind of [...PII_KINDS, 'overall' as const]) {
      const s = kind === 'overall' ? score.overall : score.perKind[kind];
      rows.push({
        set: name,
        kind,
        labelled: s.labelled,
        recall: +s.recall.toFixed(3),
        findings: s.findings,
        precision: +s.precision.toFixed(3),
      });
    }
    console.log(
      `${name}: ${items.length} prompts, ${score.falseAlarms} of ${score.clean} without personal data flagged`,
    );
  }

  const speeches = stateOfTheUnion().map((a) => a.text);
  const chars = speeches.reduce((n, t) => n + t.length, 0);
  const started = performance.now();
  const found: Record<string, number> = {};
  for (const text of speeches) for (const f of detect(text)) found[f.rule] = (found[f.rule] ?? 0) + 1;
  const seconds = (performance.now() - started) / 1000;
  const falseFindings = Object.values(found).reduce((a, b) => a + b, 0);
  rows.push({
    set: 'speeches (no personal data)',
    kind: 'all',
    findings: falseFindings,
    'MB/s': +(chars / 1e6 / seconds).toFixed(2),
  });
  console.log(
    `speeches: ${(chars / 1e6).toFixed(1)} MB in ${seconds.toFixed(1)} s, false findings by rule ${JSON.stringify(found)}`,
  );

  const latency: Record<number, number> = {};
  const sample = speeches.join(' ');
  for (const length of LENGTHS) {
    const times: number[] = [];
    for (let i = 0; i < 50; i++) {
      const at = (i * 7919) % (sample.length - length);
      const text = `${sample.slice(at, at + length - 40)} call +1 202 555 0143 or ada@example.com`;
      const t = performance.now();
      detect(text);
      times.push(performance.now() - t);
    }
    latency[length] = median(times);
    rows.push({ set: `detection latency, ${length} chars`, kind: 'all', 'median ms': +median(times).toFixed(3) });
  }
  return Promise.resolve({
    rows,
    data: {
      sets,
      speeches: { megabytes: chars / 1e6, seconds, falseFindings, byRule: found },
      medianMsByLength: latency,
    },
  });
}
