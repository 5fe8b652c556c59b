/**
 * Recall and precision of the detectors on a labelled set, per kind. A labelled value counts as found
 * when findings of its kind cover every letter and digit of it (a redaction that leaves part of a value
 * leaks it); a finding counts as correct when it overlaps a labelled value of its kind.
 */
import { type DetectOptions, type Finding, PII_KINDS, type PiiKind, detect } from './detectors.js';

export interface LabelledText {
  text: string;
  terms?: string[] | undefined;
  spans: { kind: PiiKind; start: number; end: number }[];
}

export interface KindScore {
  labelled: number;
  found: number;
  recall: number;
  findings: number;
  correct: number;
  precision: number;
}

export interface DetectionScore {
  perKind: Record<PiiKind, KindScore>;
  /** Over every labelled value and every finding. */
  overall: KindScore;
  /** Prompts without personal data in which something was found. */
  falseAlarms: number;
  clean: number;
  /** Each miss and false finding, for reading. */
  misses: { text: string; kind: PiiKind; value: string }[];
  falseFindings: { text: string; finding: Finding }[];
}

function ratio(a: number, b: number): number {
  return b === 0 ? 1 : a / b;
}

export function scoreDetection(items: readonly LabelledText[], options: DetectOptions = {}): DetectionScore {
  const counts = Object.fromEntries(
    PII_KINDS.map((k) => [k, { labelled: 0, found: 0, findings: 0, correct: 0 }]),
  ) as Record<PiiKind, { labelled: number; found: number; findings: number; correct: number }>;
  const misses: DetectionScore['misses'] = [];
  const falseFindings: DetectionScore['falseFindings'] = [];
  let falseAlarms = 0;
  let clean = 0;
  for (const item of items) {
    const findings = detect(item.text, { ...options, terms: [...(options.terms ?? []), ...(item.terms ?? [])] });
    if (item.spans.length === 0) {
      clean++;
      if (findings.length > 0) falseAlarms++;
    }
    for (const span of item.spans) {
      counts[span.kind].labelled++;
      const covered = (i: number) => findings.some((f) => f.kind === span.kind && f.start <= i && i < f.end);
      let whole = true;
      for (let i = span.start; i < span.end && whole; i++) {
        if (/[\p{L}\p{N}]/u.test(item.text[i] as string) && !covered(i)) whole = false;
      }
      if (whole) counts[span.kind].found++;
      else misses.push({ text: item.text, kind: span.kind, value: item.text.slice(span.start, span.end) });
    }
    for (const finding of findings) {
      counts[finding.kind].findings++;
      const right = item.spans.some((s) => s.kind === finding.kind && s.start < finding.end && finding.start < s.end);
      if (right) counts[finding.kind].correct++;
      else falseFindings.push({ text: item.text, finding });
    }
  }
  const score = (c: { labelled: number; found: number; findings: number; correct: number }): KindScore => ({
    ...c,
    recall: ratio(c.found, c.labelled),
    precision: ratio(c.correct, c.findings),
  });
  const total = Object.values(counts).reduce(
    (t, c) => ({
      labelled: t.labelled + c.labelled,
      found: t.found + c.found,
      findings: t.findings + c.findings,
      correct: t.correct + c.correct,
    }),
    { labelled: 0, found: 0, findings: 0, correct: 0 },
  );
  return {
    perKind: Object.fromEntries(PII_KINDS.map((k) => [k, score(counts[k])])) as Record<PiiKind, KindScore>,
    overall: score(total),
    falseAlarms,
    clean,
    misses,
    falseFindings,
  };
}
