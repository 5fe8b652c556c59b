/**
 * The privacy guard: what may leave the device. Every text bound for a cloud passes `outbound`, which
 * decides by the policy and logs the decision:
 * - `block`: a text with personal data is not sent at all (the caller answers with the edge alone);
 * - `redact`: each finding is replaced by a placeholder such as `<EMAIL_1>` (the same value keeps the
 *   same placeholder for the guard's life, so the cloud sees a consistent text), and the cloud's answer
 *   is mapped back on the device (`restore`, `restorer` for streams);
 * - `allow`: sent as it is (still logged, with the kinds it held).
 * A guard serves one request (or one session): a value it found once stays personal wherever it appears
 * later (detection depends on context), and once it blocked a text it blocks every later one (they
 * extend it).
 */
import { type DetectOptions, type Finding, type PiiKind, detect } from './detectors.js';

export const PRIVACY_POLICIES = ['block', 'redact', 'allow'] as const;
export type PrivacyPolicy = (typeof PRIVACY_POLICIES)[number];

export function isPrivacyPolicy(value: unknown): value is PrivacyPolicy {
  return (PRIVACY_POLICIES as readonly unknown[]).includes(value);
}

/** Which cloud call a text was bound for; `request`: the decision on a whole request under `block`. */
export type CloudRoute = 'request' | 'stream' | 'continuation' | 'score' | 'completion';

export type OutboundVerdict = 'clean' | 'allowed' | 'redacted' | 'blocked';

export interface CloudCallRecord {
  at: string;
  route: CloudRoute;
  policy: PrivacyPolicy;
  verdict: OutboundVerdict;
  kinds: PiiKind[];
  /** The text as sent (after redaction); null when nothing was sent. */
  sent: string | null;
}

export interface CloudCallRecorder {
  record(entry: CloudCallRecord): void;
}

export interface OutboundDecision {
  verdict: OutboundVerdict;
  kinds: PiiKind[];
  /** What goes to the cloud; undefined when blocked. */
  text: string | undefined;
}

export interface Scan {
  pii: boolean;
  kinds: PiiKind[];
  findings: Finding[];
  redacted: string;
}

export interface GuardOptions extends DetectOptions {
  policy: PrivacyPolicy;
  log?: CloudCallRecorder | undefined;
}

const LABELS: Record<PiiKind, string> = {
  email: 'EMAIL',
  phone: 'PHONE',
  card: 'CARD',
  iban: 'IBAN',
  national_id: 'NATIONAL_ID',
  ip_address: 'IP_ADDRESS',
  secret: 'SECRET',
  term: 'TERM',
};

/** A placeholder, or what may still become one as more text streams in. */
const PLACEHOLDER = /<[A-Z_]+_\d+>/g;
const PLACEHOLDER_PREFIX = /<[A-Z_]*\d*$/;
const LONGEST_PLACEHOLDER = 24;

function kindsOf(findings: readonly Finding[]): PiiKind[] {
  return [...new Set(findings.map((f) => f.kind))];
}

export class PrivacyGuard {
  readonly policy: PrivacyPolicy;
  private readonly detectOptions: DetectOptions;
  private readonly log: CloudCallRecorder | undefined;
  /** Value -> placeholder and back, for the guard's life. */
  private readonly placeholders = new Map<string, string>();
  private readonly originals = new Map<string, string>();
  private readonly counts = new Map<PiiKind, number>();
  /** Values found so far, with their kind. */
  private readonly seen = new Map<string, PiiKind>();
  /** Set once a text was blocked (not for `exact` calls): a guard serves one request. */
  private blocked = false;

  constructor(options: GuardOptions) {
    this.policy = options.policy;
    this.detectOptions = { phoneRegions: options.phoneRegions, terms: options.terms };
    this.log = options.log;
  }

  /** The findings in `text` and the text with each replaced by its placeholder. */
  scan(text: string): Scan {
    const findings = this.findings(text);
    let redacted = '';
    let at = 0;
    for (const f of findings) {
      redacted += text.slice(at, f.start) + this.placeholder(f, text);
      at = f.end;
    }
    redacted += text.slice(at);
    return { pii: findings.length > 0, kinds: kindsOf(findings), findings, redacted };
  }

  /**
   * The detectors' findings, and every other occurrence of a value this guard found before: what a
   * detector recognises depends on what follows it (a card number followed by more digits is not one),
   * and a value once found stays personal for the guard's life.
   */
  private findings(text: string): Finding[] {
    const found = detect(text, this.detectOptions);
    const extra: Finding[] = [];
    for (const [value, kind] of this.seen) {
      for (let at = text.indexOf(value); at >= 0; at = text.indexOf(value, at + value.length)) {
        const end = at + value.length;
        if (![...found, ...extra].some((f) => at < f.end && f.start < end)) {
          extra.push({ kind, start: at, end, text: value, rule: 'seen-before' });
        }
      }
    }
    for (const f of found) if (!this.seen.has(f.text)) this.seen.set(f.text, f.kind);
    return extra.length === 0 ? found : [...found, ...extra].sort((a, b) => a.start - b.start);
  }

  /**
   * Decides what of `text` goes to the cloud on `route`, and logs it. `exact`: the call needs the text
   * unchanged (the answer is aligned to its bytes), so under `redact` a text with personal data is
   * blocked instead.
   */
  outbound(text: string, route: CloudRoute, options: { exact?: boolean } = {}): OutboundDecision {
    const scan = this.scan(text);
    let decision: OutboundDecision;
    if (this.blocked) decision = { verdict: 'blocked', kinds: scan.kinds, text: undefined };
    else if (!scan.pii) decision = { verdict: 'clean', kinds: [], text };
    else if (this.policy === 'allow') decision = { verdict: 'allowed', kinds: scan.kinds, text };
    else if (this.policy === 'redact' && !options.exact) {
      decision = { verdict: 'redacted', kinds: scan.kinds, text: scan.redacted };
    } else decision = { verdict: 'blocked', kinds: scan.kinds, text: undefined };
    // a text kept on the device once keeps the rest of the request there: later texts extend it
    if (decision.verdict === 'blocked' && !options.exact) this.blocked = true;
    this.log?.record({
      at: new Date().toISOString(),
      route,
      policy: this.policy,
      verdict: decision.verdict,
      kinds: decision.kinds,
      sent: decision.text ?? null,
    });
    return decision;
  }

  /**
   * The largest cut at or before `cut` (a UTF-16 offset into `text`) that does not split a finding, so
   * that a prefix sent to the cloud never carries half of one (which the detectors could not see).
   */
  safeCut(text: string, cut: number): number {
    let safe = cut;
    for (const f of this.findings(text)) if (f.start < safe && safe < f.end) safe = f.start;
    return safe;
  }

  /** The cloud's text with this guard's placeholders mapped back to the values they stand for. */
  restore(text: string): string {
    return text.replace(PLACEHOLDER, (p) => this.originals.get(p) ?? p);
  }

  /** Restores placeholders in a stream of text pieces, holding back what may be the start of one. */
  restorer(): { push(piece: string): string; flush(): string } {
    let held = '';
    return {
      push: (piece: string) => {
        held += piece;
        const open = held.lastIndexOf('<');
        let keep = 0;
        if (open >= 0) {
          const tail = held.slice(open);
          if (tail.length < LONGEST_PLACEHOLDER && PLACEHOLDER_PREFIX.test(tail)) keep = tail.length;
        }
        const out = this.restore(held.slice(0, held.length - keep));
        held = held.slice(held.length - keep);
        return out;
      },
      flush: () => {
        const out = this.restore(held);
        held = '';
        return out;
      },
    };
  }

  /** The value's placeholder; a new one never equals text the user wrote (it would be mapped back). */
  private placeholder(finding: Finding, text: string): string {
    const known = this.placeholders.get(finding.text);
    if (known) return known;
    let n = this.counts.get(finding.kind) ?? 0;
    let placeholder: string;
    do placeholder = `<${LABELS[finding.kind]}_${++n}>`;
    while (text.includes(placeholder) || this.originals.has(placeholder));
    this.counts.set(finding.kind, n);
    this.placeholders.set(finding.text, placeholder);
    this.originals.set(placeholder, finding.text);
    return placeholder;
  }
}
