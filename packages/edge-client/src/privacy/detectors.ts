/**
 * Detectors of personal data and secrets in text. Each finds candidates with a pattern and keeps those
 * a validator accepts: checksums for cards (Luhn), IBANs (mod 97) and the national identifiers that have
 * one, libphonenumber's metadata for phone numbers, Node's own parsers for IP addresses. Overlapping
 * findings are resolved by kind priority, then length (a card number inside a key is the key).
 */
import { isIPv4, isIPv6 } from 'node:net';
import { type CountryCode, findNumbers, findPhoneNumbersInText } from 'libphonenumber-js/max';
import validator from 'validator';

export const PII_KINDS = ['email', 'phone', 'card', 'iban', 'national_id', 'ip_address', 'secret', 'term'] as const;
export type PiiKind = (typeof PII_KINDS)[number];

export interface Finding {
  kind: PiiKind;
  /** UTF-16 offsets into the text, end exclusive. */
  start: number;
  end: number;
  text: string;
  /** What matched, e.g. `aws-access-key`, `ssn-us`, `luhn` (for reports and logs; never the value). */
  rule: string;
}

export interface DetectOptions {
  /** Regions whose national phone formats are recognised (international `+` numbers always are). */
  phoneRegions?: readonly CountryCode[] | undefined;
  /** Words or phrases the user declares private (matched whole, case-insensitively). */
  terms?: readonly string[] | undefined;
}

export const DEFAULT_PHONE_REGIONS: readonly CountryCode[] = ['US', 'GB'];

/** Lower wins when two findings overlap. */
const PRIORITY: Record<PiiKind, number> = {
  secret: 0,
  email: 1,
  iban: 2,
  card: 3,
  national_id: 4,
  ip_address: 5,
  phone: 6,
  term: 7,
};

type Candidate = Omit<Finding, 'text'>;

function* matches(text: string, pattern: RegExp): Generator<RegExpExecArray> {
  const re = new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`);
  for (let m = re.exec(text); m; m = re.exec(text)) {
    yield m;
    if (m[0].length === 0) re.lastIndex++;
  }
}

// ---- e-mail

// starting only where a run of local-part characters starts keeps a long run from costing n^2
// (`=` and `/`, legal in a local part but rare, are left out: `user=a@b.org` is a key and an address)
const EMAIL =
  /(?<![\p{L}\p{N}.!#$%&'*+?^_`{|}~-])[\p{L}\p{N}.!#$%&'*+?^_`{|}~-]{1,64}@[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?(?:\.[\p{L}\p{N}-]+)+/u;

function emails(text: string): Candidate[] {
  const out: Candidate[] = [];
  for (const m of matches(text, EMAIL)) {
    let value = m[0].replace(/[.-]+$/, '');
    // a local part may not start with a dot; quotes and brackets around an address are not part of it
    const lead = value.match(/^[.'`{|}~]+/)?.[0].length ?? 0;
    value = value.slice(lead);
    if (validator.isEmail(value, { allow_utf8_local_part: true })) {
      out.push({ kind: 'email', start: m.index + lead, end: m.index + lead + value.length, rule: 'email' });
    }
  }
  return out;
}

// ---- phone numbers

/** North American formatting (area code in brackets or separated), which fictional 555 numbers share with real ones. */
const NANP_FORMATTED = /(?<![\w+-])(?:\+?1[-. ]?)?(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-]|\.\d)/;

/** Where a phone number may be: a digit (or `+`, `(`) then up to 28 digits and separators, ending on a digit. */
const PHONE_STRETCH = /(?<![\w+-])[+(]?\d[\d ().\-/]{5,28}\d(?:\s?(?:ext\.?|x|#)\s?\d{1,6})?/i;
const UK_MOBILE = /(?<![\w+-])07\d{3} ?\d{6}(?![\w-])/;

function phones(text: string, regions: readonly CountryCode[]): Candidate[] {
  const out: Candidate[] = [];
  const add = (start: number, end: number, rule: string) => out.push({ kind: 'phone', start, end, rule });
  // the parser runs on short stretches of digits and separators only: on a long run of them its cost
  // grows faster than the run
  for (const stretch of matches(text, PHONE_STRETCH)) {
    const piece = stretch[0];
    const at = stretch.index;
    // numbers are written in at most seven groups; a longer list of digits is something else (and the
    // parser's cost on one grows fast)
    if (piece.split(/[^\d]+/).filter((g) => g !== '').length > 7) continue;
    for (const region of regions) {
      for (const n of findNumbers(piece, { defaultCountry: region, v2: true })) {
        add(at + n.startsAt, at + n.endsAt, `phone-${region}`);
      }
    }
    // an international number is a phone number even where the metadata does not know its range
    for (const n of findPhoneNumbersInText(piece, { extended: true })) {
      if (piece[n.startsAt] === '+') add(at + n.startsAt, at + n.endsAt, 'phone-international');
    }
  }
  for (const m of matches(text, NANP_FORMATTED)) add(m.index, m.index + m[0].length, 'phone-nanp');
  // UK mobiles, the reserved fictional range 07700 900xxx included
  for (const m of matches(text, UK_MOBILE)) add(m.index, m.index + m[0].length, 'phone-uk-mobile');
  return out.map((c) => {
    // the parser reads ", 123" after a number as an extension; a comma ends the number in prose
    const comma = text.slice(c.start, c.end).search(/,\s/);
    return comma > 0 ? { ...c, end: c.start + comma } : c;
  });
}

// ---- payment cards

/** Up to 19 digits in groups, and what may follow in the same run (an expiry, a year): tried below. */
const CARD = /(?<![\d-])\d(?:[ -]?\d){12,24}(?![\d-])/;

function cards(text: string): Candidate[] {
  const out: Candidate[] = [];
  for (const m of matches(text, CARD)) {
    // one kind of separator, used for grouping (not a list of numbers)
    if (/ /.test(m[0]) && /-/.test(m[0])) continue;
    // the longest start of the run that ends a group and passes the checks (`4242 4242 4242 4242 12`)
    for (let end = m[0].length; end >= 13; end--) {
      if (end < m[0].length && /\d/.test(m[0][end] as string)) continue;
      const digits = m[0].slice(0, end).replace(/[ -]/g, '');
      if (digits.length < 13) break;
      if (digits.length <= 19 && validator.isCreditCard(digits)) {
        out.push({ kind: 'card', start: m.index, end: m.index + end, rule: 'luhn' });
        break;
      }
    }
  }
  return out;
}

// ---- IBAN

const IBAN_START = /\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,32}/i;

function ibans(text: string): Candidate[] {
  const out: Candidate[] = [];
  for (const m of matches(text, IBAN_START)) {
    // the pattern may run into the next word: keep the longest prefix that is a valid IBAN
    const raw = m[0];
    for (let end = raw.length; end >= 15; end--) {
      if (raw[end - 1] === ' ') continue;
      const compact = raw.slice(0, end).replace(/ /g, '').toUpperCase();
      if (compact.length < 15) break;
      if (validator.isIBAN(compact)) {
        out.push({ kind: 'iban', start: m.index, end: m.index + end, rule: 'iban-mod97' });
        break;
      }
    }
  }
  return out;
}

// ---- national identifiers

const SSN_US = /(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-]|-\d)/;
const NINO_UK = /\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b/;
const SIN_CA = /(?<![\d-])[1-79]\d{2}([- ])\d{3}\1\d{3}(?![\d-]|[ -]\d)/;
const NIR_FR = /(?<!\d)[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?(\d{2})(?!\d)/;

/** Candidates checked by validator's identity-card checksums. */
const VALIDATED_IDS: { pattern: RegExp; locale: validator.IdentityCardLocale; rule: string }[] = [
  { pattern: /\b[XYZ]?\d{7,8}-?[A-Z]\b/, locale: 'ES', rule: 'dni-es' },
  { pattern: /\b[A-Z]{6}\d{2}[A-EHLMPRST]\d{2}[A-Z]\d{3}[A-Z]\b/i, locale: 'IT', rule: 'codice-fiscale-it' },
  { pattern: /(?<![\d-])[2-9]\d{3}[ -]?\d{4}[ -]?\d{4}(?![\d-]|[ -]\d)/, locale: 'IN', rule: 'aadhaar-in' },
  { pattern: /(?<!\d)\d{17}[\dXx](?!\d)/, locale: 'zh-CN', rule: 'resident-id-cn' },
  { pattern: /\b\d{6}[-+A]\d{3}[0-9A-Y]\b/, locale: 'FI', rule: 'hetu-fi' },
];

function luhn(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = Number(digits[digits.length - 1 - i]);
    if (i % 2 === 1) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
  }
  return sum % 10 === 0;
}

function nationalIds(text: string): Candidate[] {
  const out: Candidate[] = [];
  const add = (m: RegExpExecArray, rule: string) =>
    out.push({ kind: 'national_id', start: m.index, end: m.index + m[0].length, rule });
  for (const m of matches(text, SSN_US)) add(m, 'ssn-us');
  for (const m of matches(text, NINO_UK)) add(m, 'nino-uk');
  for (const m of matches(text, SIN_CA)) if (luhn(m[0].replace(/\D/g, ''))) add(m, 'sin-ca');
  for (const m of matches(text, NIR_FR)) {
    const compact = m[0].replace(/ /g, '');
    const body = compact.slice(0, 13).replace('2A', '19').replace('2B', '18');
    if (97 - Number(BigInt(body) % 97n) === Number(compact.slice(13))) add(m, 'nir-fr');
  }
  for (const { pattern, locale, rule } of VALIDATED_IDS) {
    for (const m of matches(text, pattern)) {
      const value = locale === 'IN' ? m[0].replace(/[ -]/g, '') : m[0].toUpperCase();
      if (validator.isIdentityCard(value, locale)) add(m, rule);
    }
  }
  return out;
}

// ---- IP addresses

const IPV4 = /(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)/;
/** At most 45 characters (the longest IPv6 text); at least two colons are checked after. */
const IPV6 = /(?<![\w:.])[0-9A-Fa-f:.]{2,45}(?:%[\w.]{1,16})?/;

function ipAddresses(text: string): Candidate[] {
  const out: Candidate[] = [];
  for (const m of matches(text, IPV4)) {
    // `Version("1.0.0.0")`, `Table 4.2.1.3`: numbered things that parse as addresses
    if (
      /(?:version|ver\.|(?<![a-z])v|table|section|figure|fig\.|chapter|§|release|build)\s*\(?["']?$/i.test(
        text.slice(Math.max(0, m.index - 12), m.index),
      )
    )
      continue;
    if (isIPv4(m[0])) out.push({ kind: 'ip_address', start: m.index, end: m.index + m[0].length, rule: 'ipv4' });
  }
  for (const m of matches(text, IPV6)) {
    const value = m[0].replace(/[.:]+$/, (tail) => (tail.startsWith('::') ? '::' : ''));
    if (!/[0-9A-Fa-f]/.test(value) || (value.match(/:/g) ?? []).length < 2) continue;
    if (isIPv6(value.split('%')[0] as string)) {
      out.push({ kind: 'ip_address', start: m.index, end: m.index + value.length, rule: 'ipv6' });
    }
  }
  return out;
}

// ---- secrets and keys

/** Credentials with a documented shape, by issuer. */
const KEY_PATTERNS: { rule: string; pattern: RegExp; group?: number }[] = [
  {
    rule: 'private-key-block',
    pattern:
      /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|$)/,
  },
  { rule: 'aws-access-key', pattern: /\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b/ },
  { rule: 'github-token', pattern: /\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b/ },
  { rule: 'gitlab-token', pattern: /\bglpat-[A-Za-z0-9_-]{20,}/ },
  { rule: 'slack-token', pattern: /\bxox[abposr]-[A-Za-z0-9-]{10,}/ },
  { rule: 'slack-webhook', pattern: /https:\/\/hooks\.slack\.com\/services\/[A-Za-z0-9/_-]+/ },
  { rule: 'stripe-key', pattern: /\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}/ },
  { rule: 'google-api-key', pattern: /\bAIza[0-9A-Za-z_-]{35}/ },
  { rule: 'anthropic-key', pattern: /\bsk-ant-[A-Za-z0-9_-]{20,}/ },
  { rule: 'openai-key', pattern: /\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}/ },
  { rule: 'huggingface-token', pattern: /\bhf_[A-Za-z0-9]{30,}\b/ },
  { rule: 'npm-token', pattern: /\bnpm_[A-Za-z0-9]{36}\b/ },
  { rule: 'sendgrid-key', pattern: /\bSG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}/ },
  { rule: 'twilio-key', pattern: /\bSK[0-9a-f]{32}\b/ },
  { rule: 'azure-storage-key', pattern: /AccountKey=([A-Za-z0-9+/=]{40,})/, group: 1 },
  { rule: 'bearer-token', pattern: /\bBearer\s+([A-Za-z0-9._~+/-]{16,}=*)/, group: 1 },
  { rule: 'url-credentials', pattern: /\b[a-z][a-z0-9+.-]{0,30}:\/\/[^\s/:@]{0,256}:([^\s/@]{1,256})@/i, group: 1 },
  {
    // `password = hunter2`, `"api_key": "..."`, `token: ...`
    rule: 'assignment',
    pattern:
      /(?<![A-Za-z])(?:pass(?:word|wd|phrase)?|pwd|secret|api[_-]?key|apikey|access[_-]?(?:key|token)|auth[_-]?token|token|client[_-]?secret|private[_-]?key|secret[_-]?key)["']?\s*[:=]\s*["']?([^\s"',;]{4,})/i,
    group: 1,
  },
  // `my password is hunter2`
  {
    rule: 'password-phrase',
    pattern: /\b(?:password|passcode|passphrase|PIN)\s+(?:is|was)\s*(?::\s*)?([^\s"',;]{4,})/i,
    group: 1,
  },
];

const JWT = /(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{8,}/;
/** Long strings of mixed letters and digits, as keys are (pure hex is left: hashes and ids look the same). */
const TOKEN = /(?<![\w+/=-])[A-Za-z0-9+/_=-]{24,}(?![\w+/=-])/;

const URL = /\b(?:https?|ftp):\/\/[^\s<>"']+/i;

/** Shannon entropy of the characters, in bits per character. */
export function shannonEntropy(value: string): number {
  const counts = new Map<string, number>();
  for (const c of value) counts.set(c, (counts.get(c) ?? 0) + 1);
  let h = 0;
  for (const n of counts.values()) h -= (n / value.length) * Math.log2(n / value.length);
  return h;
}

/** A value that stands for a secret in docs and templates: `<your-key>`, `${DB_PASSWORD}`, `YOUR_API_KEY`, `sk-...`. */
function isPlaceholder(value: string): boolean {
  return (
    /^(?:\$\{.*\}?|\$[A-Z_][A-Z0-9_]*|<.*>?|\{\{.*(?:\}\})?|%\w+%)$/.test(value) ||
    /^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$/.test(value) ||
    /\.\.\.|…|x{4,}|\*{3,}/i.test(value) ||
    /^(?:your|my|insert|enter|replace)[-_ ]?|^(?:changeme|placeholder|example|redacted|secret|password|token|none|null|undefined|true|false)$/i.test(
      value,
    )
  );
}

function jwtHeader(token: string): boolean {
  try {
    const header = JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString('utf8')) as unknown;
    return typeof header === 'object' && header !== null && 'alg' in header;
  } catch {
    return false;
  }
}

function secrets(text: string): Candidate[] {
  const out: Candidate[] = [];
  for (const { rule, pattern, group } of KEY_PATTERNS) {
    for (const m of matches(text, pattern)) {
      const value = group === undefined ? m[0] : m[group];
      if (value === undefined || (group !== undefined && isPlaceholder(value))) continue;
      const start = m.index + (group === undefined ? 0 : m[0].lastIndexOf(value));
      out.push({ kind: 'secret', start, end: start + value.length, rule });
    }
  }
  for (const m of matches(text, JWT)) {
    if (validator.isJWT(m[0]) && jwtHeader(m[0])) {
      out.push({ kind: 'secret', start: m.index, end: m.index + m[0].length, rule: 'jwt' });
    }
  }
  // paths and ids in links look random too; a key in a link is caught by its shape or its parameter name
  const links = [...matches(text, URL)].map((m) => [m.index, m.index + m[0].length] as const);
  let link = 0;
  for (const m of matches(text, TOKEN)) {
    const value = m[0];
    // both in order of position: one pass over the links
    while (link < links.length && (links[link] as readonly [number, number])[1] <= m.index) link++;
    if (link < links.length && (links[link] as readonly [number, number])[0] <= m.index) continue;
    // a digest names its algorithm (`sha512-...` in lockfiles, `sha256:...` in image references)
    if (
      /^(?:sha\d{1,3}|md5)[-:_]/i.test(value) ||
      /(?:sha\d{1,3}|md5)[:-]$/i.test(text.slice(Math.max(0, m.index - 7), m.index))
    )
      continue;
    const classes = [/[a-z]/, /[A-Z]/, /\d/].filter((c) => c.test(value)).length;
    // random keys use most of their alphabet: near log2(length) bits per character, where words and
    // identifiers repeat letters
    if (classes === 3 && shannonEntropy(value) >= Math.min(4.5, 0.8 * Math.log2(value.length))) {
      out.push({ kind: 'secret', start: m.index, end: m.index + value.length, rule: 'high-entropy' });
    }
  }
  return out;
}

// ---- declared terms

function escape(term: string): string {
  return term.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function declaredTerms(text: string, terms: readonly string[]): Candidate[] {
  const words = terms.map((t) => t.trim()).filter((t) => t.length > 0);
  if (words.length === 0) return [];
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(?:${words.map(escape).join('|')})(?![\\p{L}\\p{N}])`, 'giu');
  return [...matches(text, pattern)].map((m) => ({
    kind: 'term' as const,
    start: m.index,
    end: m.index + m[0].length,
    rule: 'declared-term',
  }));
}

/** Every finding in `text`, in order, none overlapping another. */
export function detect(text: string, options: DetectOptions = {}): Finding[] {
  const candidates = [
    ...secrets(text),
    ...emails(text),
    ...ibans(text),
    ...cards(text),
    ...nationalIds(text),
    ...ipAddresses(text),
    ...phones(text, options.phoneRegions ?? DEFAULT_PHONE_REGIONS),
    ...declaredTerms(text, options.terms ?? []),
  ].filter((c) => c.end > c.start);
  candidates.sort(
    (a, b) => PRIORITY[a.kind] - PRIORITY[b.kind] || b.end - b.start - (a.end - a.start) || a.start - b.start,
  );
  // kept findings in order of position, none overlapping: a binary search finds a candidate's neighbours
  const kept: Candidate[] = [];
  for (const c of candidates) {
    let lo = 0;
    let hi = kept.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((kept[mid] as Candidate).start < c.start) lo = mid + 1;
      else hi = mid;
    }
    const before = kept[lo - 1];
    const after = kept[lo];
    if ((before && before.end > c.start) || (after && after.start < c.end)) continue;
    kept.splice(lo, 0, c);
  }
  return kept.map((c) => ({ ...c, text: text.slice(c.start, c.end) }));
}
