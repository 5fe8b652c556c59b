/**
 * The privacy guard's labelled set: prompts with and without personal data, each with the spans of
 * every value a guard must catch and their kind. Values are generated valid (check digits computed here,
 * independently of the validators the guard uses) in the formats people write them; the prompts without
 * personal data are hard negatives (dates, versions, hashes, prices, numbers that fail a checksum).
 * Deterministic for a seed: `pnpm privacy:set` writes test/privacy/labelled-set.jsonl, and a test checks
 * that the committed file is this generator's output.
 */
import { Random } from '@floe/shared';

export type LabelKind = 'email' | 'phone' | 'card' | 'iban' | 'national_id' | 'ip_address' | 'secret' | 'term';

export interface LabelledPrompt {
  id: number;
  text: string;
  /** Terms the user declared for this prompt (kind `term`). */
  terms?: string[];
  /** UTF-16 offsets, end exclusive. */
  spans: { kind: LabelKind; start: number; end: number }[];
}

const FIRST = ['john', 'maria', 'wei', 'aisha', 'lukas', 'sofia', 'omar', 'yuki', 'pierre', 'ana', 'raj', 'emma'];
const LAST = ['smith', 'garcia', 'chen', 'khan', 'muller', 'rossi', 'haddad', 'tanaka', 'dubois', 'silva', 'patel'];
const DOMAINS = ['example.com', 'mail.example.org', 'uni-bonn.de', 'company.co.uk', 'outlook.fr', 'startup.io'];

class Gen {
  constructor(private readonly random: Random) {}
  pick<T>(items: readonly T[]): T {
    return items[this.random.integer(items.length)] as T;
  }
  digits(n: number, first = '0123456789'): string {
    let s = this.pick([...first]);
    for (let i = 1; i < n; i++) s += String(this.random.integer(10));
    return s;
  }
  chars(n: number, alphabet: string): string {
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet[this.random.integer(alphabet.length)];
    return s;
  }
  int(min: number, max: number): number {
    return min + this.random.integer(max - min + 1);
  }
}

const UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const LOWER = 'abcdefghijklmnopqrstuvwxyz';
const DIGITS = '0123456789';
const ALNUM = UPPER + LOWER + DIGITS;
const BASE64URL = `${ALNUM}-_`;

function luhnDigit(body: string): string {
  let sum = 0;
  for (let i = 0; i < body.length; i++) {
    let d = Number(body[body.length - 1 - i]);
    if (i % 2 === 0) d = d * 2 > 9 ? d * 2 - 9 : d * 2;
    sum += d;
  }
  return String((10 - (sum % 10)) % 10);
}

function mod97(numeric: string): number {
  let r = 0;
  for (const c of numeric) r = (r * 10 + Number(c)) % 97;
  return r;
}

function ibanWithCheck(country: string, bban: string): string {
  const rearranged = `${bban}${country}00`.replace(/[A-Z]/g, (c) => String(c.charCodeAt(0) - 55));
  const check = String(98 - mod97(rearranged)).padStart(2, '0');
  return `${country}${check}${bban}`;
}

// Verhoeff tables (Aadhaar's check digit)
const VD = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
  [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
  [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
  [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
  [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
  [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
  [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
  [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
  [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
const VP = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
  [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
  [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
  [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
  [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
  [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
  [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];
const VINV = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9];

function verhoeffDigit(body: string): string {
  let c = 0;
  const digits = [...body].reverse().map(Number);
  for (let i = 0; i < digits.length; i++) c = VD[c]![VP[(i + 1) % 8]![digits[i]!]!]!;
  return String(VINV[c]);
}

type Value = () => string;

function values(g: Gen): Record<Exclude<LabelKind, 'term'>, Value[]> {
  const name = () => `${g.pick(FIRST)}${g.pick(['.', '_', '', '-'])}${g.pick(LAST)}`;
  const card = (prefix: string, length: number, groups: number[]) => () => {
    const body = prefix + g.digits(length - prefix.length - 1);
    const number = body + luhnDigit(body);
    const sep = g.pick([' ', '-', '']);
    if (sep === '') return number;
    const out: string[] = [];
    let at = 0;
    for (const n of groups) {
      out.push(number.slice(at, at + n));
      at += n;
    }
    return out.join(sep);
  };
  const iban = (country: string, bban: () => string) => () => {
    const value = ibanWithCheck(country, bban());
    return g.pick([true, false]) ? value.replace(/(.{4})(?!$)/g, '$1 ') : value;
  };
  const usArea = () => `${g.int(2, 9)}${g.int(0, 8)}${g.int(0, 9)}`.replace(/^(\d)11$/, '$112');
  const usLine = () => `${g.int(2, 9)}${g.digits(2)}`;
  return {
    email: [
      () => `${name()}@${g.pick(DOMAINS)}`,
      () => `${g.pick(FIRST)}+${g.pick(['news', 'work', 'x1'])}@${g.pick(DOMAINS)}`,
      () => `${g.pick(FIRST).toUpperCase()}.${g.pick(LAST)}${g.int(1, 99)}@${g.pick(DOMAINS)}`,
      () => `${g.pick(['info', 'support', 'hr', 'billing'])}@${g.pick(DOMAINS)}`,
    ],
    phone: [
      () => `(${usArea()}) ${usLine()}-${g.digits(4)}`,
      () => `${usArea()}-${usLine()}-${g.digits(4)}`,
      () => `${usArea()}.${usLine()}.${g.digits(4)}`,
      () => `+1 ${usArea()} ${usLine()} ${g.digits(4)}`,
      () => `+1-${usArea()}-${usLine()}-${g.digits(4)}`,
      () => `(555) ${g.int(2, 9)}${g.digits(2)}-${g.digits(4)}`,
      () => `+44 20 7946 ${g.digits(4)}`,
      () => `020 7946 ${g.digits(4)}`,
      () => `07700 900${g.digits(3)}`,
      () => `+49 30 ${g.digits(7, '123456789')}`,
      () => `+33 6 ${g.digits(2)} ${g.digits(2)} ${g.digits(2)} ${g.digits(2)}`,
      () => `+91 ${g.digits(5, '6789')} ${g.digits(5)}`,
      () => `+61 2 ${g.digits(4, '89')} ${g.digits(4)}`,
      () => `+81 3-${g.digits(4)}-${g.digits(4)}`,
      () => `+55 11 9${g.digits(4)}-${g.digits(4)}`,
    ],
    card: [
      card('4', 16, [4, 4, 4, 4]),
      card(String(g.int(51, 55)), 16, [4, 4, 4, 4]),
      card(g.pick(['34', '37']), 15, [4, 6, 5]),
      card('6011', 16, [4, 4, 4, 4]),
      card(String(g.int(3528, 3589)), 16, [4, 4, 4, 4]),
      card('2221', 16, [4, 4, 4, 4]),
    ],
    iban: [
      iban('DE', () => g.digits(18)),
      iban('FR', () => g.digits(10) + g.chars(11, UPPER + DIGITS) + g.digits(2)),
      iban('GB', () => g.chars(4, UPPER) + g.digits(14)),
      iban('ES', () => g.digits(20)),
      iban('IT', () => g.chars(1, UPPER) + g.digits(10) + g.digits(12)),
      iban('NL', () => g.chars(4, UPPER) + g.digits(10)),
      iban('BE', () => g.digits(12)),
      iban('CH', () => g.digits(5) + g.digits(12)),
    ],
    national_id: [
      () => {
        let area = g.digits(3, '12345678');
        if (area === '666') area = '665';
        return `${area}-${g.digits(2, '123456789')}-${g.digits(4, '123456789')}`;
      },
      () =>
        `${g.pick(['AB', 'CE', 'JG', 'PR', 'SW'])} ${g.digits(2)} ${g.digits(2)} ${g.digits(2)} ${g.pick(['A', 'B', 'C', 'D'])}`,
      () => {
        const body = g.digits(8, '1234567');
        const n = body + luhnDigit(body);
        return `${n.slice(0, 3)}-${n.slice(3, 6)}-${n.slice(6)}`;
      },
      () => {
        const n = Number(g.digits(8, '123456789'));
        return `${n}${'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]}`;
      },
      () => {
        const body = g.digits(11, '23456789');
        const n = body + verhoeffDigit(body);
        return `${n.slice(0, 4)} ${n.slice(4, 8)} ${n.slice(8)}`;
      },
      () => {
        const body = `110105${g.int(1950, 2005)}${String(g.int(1, 12)).padStart(2, '0')}${String(g.int(1, 28)).padStart(2, '0')}${g.digits(3)}`;
        const weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
        const sum = [...body].reduce((s, d, i) => s + Number(d) * weights[i]!, 0);
        return body + '10X98765432'[sum % 11];
      },
      () => {
        const date = `${String(g.int(1, 28)).padStart(2, '0')}${String(g.int(1, 12)).padStart(2, '0')}${g.digits(2)}`;
        const serial = g.digits(3, '123456789');
        return `${date}-${serial}${'0123456789ABCDEFHJKLMNPRSTUVWXY'[Number(date + serial) % 31]}`;
      },
      () => {
        const body = `${g.int(1, 2)}${g.digits(2)}${String(g.int(1, 12)).padStart(2, '0')}${String(g.int(1, 95)).padStart(2, '0')}${g.digits(3)}${g.digits(3)}`;
        const key = String(97 - Number(BigInt(body) % 97n)).padStart(2, '0');
        return `${body[0]} ${body.slice(1, 3)} ${body.slice(3, 5)} ${body.slice(5, 7)} ${body.slice(7, 10)} ${body.slice(10)} ${key}`;
      },
    ],
    ip_address: [
      () => `${g.int(1, 223)}.${g.int(0, 255)}.${g.int(0, 255)}.${g.int(1, 254)}`,
      () => `192.168.${g.int(0, 255)}.${g.int(1, 254)}`,
      () => `10.${g.int(0, 255)}.${g.int(0, 255)}.${g.int(1, 254)}`,
      () => `2001:db8:${g.chars(4, '0123456789abcdef')}::${g.chars(3, '123456789abcdef')}`,
      () => Array.from({ length: 8 }, () => g.chars(4, '0123456789abcdef')).join(':'),
      () =>
        `fe80::${g.chars(4, '0123456789abcdef')}:${g.chars(2, '0123456789abcdef')}ff:fe${g.chars(2, '0123456789abcdef')}:${g.chars(4, '0123456789abcdef')}`,
      () => '::1',
    ],
    secret: [
      () => `AKIA${g.chars(16, UPPER + DIGITS)}`,
      () => `ghp_${g.chars(36, ALNUM)}`,
      () => `github_pat_${g.chars(22, ALNUM)}_${g.chars(59, ALNUM)}`,
      () => `glpat-${g.chars(20, ALNUM)}`,
      () => `xoxb-${g.digits(12)}-${g.digits(12)}-${g.chars(24, ALNUM)}`,
      () => `sk_live_${g.chars(24, ALNUM)}`,
      () => `AIza${g.chars(35, BASE64URL)}`,
      () => `sk-proj-${g.chars(48, BASE64URL)}`,
      () => `sk-ant-api03-${g.chars(40, BASE64URL)}`,
      () => `hf_${g.chars(34, ALNUM)}`,
      () => `npm_${g.chars(36, ALNUM)}`,
      () => {
        const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
        return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: g.digits(8), name: g.pick(FIRST) })}.${g.chars(43, BASE64URL)}`;
      },
      () =>
        `-----BEGIN RSA PRIVATE KEY-----\n${Array.from({ length: 3 }, () => g.chars(64, `${ALNUM}+/`)).join('\n')}\n-----END RSA PRIVATE KEY-----`,
      () => `-----BEGIN OPENSSH PRIVATE KEY-----\n${g.chars(70, `${ALNUM}+/`)}\n-----END OPENSSH PRIVATE KEY-----`,
      () => g.chars(32, ALNUM),
    ],
  };
}

/** A value in a sentence; `{}` is where it goes. */
const TEMPLATES: Record<Exclude<LabelKind, 'term'>, string[]> = {
  email: [
    'Please send the signed contract to {} before Friday.',
    'You can reach me at {} if the build breaks again.',
    'Forward the minutes to <{}> and copy the team.',
    'Contact: {}',
    'My new address is {}. Update the mailing list.',
  ],
  phone: [
    'Call me at {} after six tonight.',
    'The front desk number is {}, ask for the manager.',
    'Tel: {}',
    'If nobody answers, try my mobile ({}) instead.',
    'Text {} when you land.',
  ],
  card: [
    'Charge the deposit to my card {} please.',
    'Card number: {}, expires 09/27.',
    'I paid with {} but the refund never came.',
    'Use {} for the hotel booking.',
  ],
  iban: [
    'Wire the rent to IBAN {} by the first of the month.',
    'Account for the refund: {}',
    'My bank details changed, the new IBAN is {}.',
    'Transfer to {} (reference 2211).',
  ],
  national_id: [
    'My social security number is {}.',
    'ID number {} was on the form.',
    'For the tax return use {} as my identifier.',
    'Patient record: national ID {}, admitted Monday.',
  ],
  ip_address: [
    'The database listens on {} behind the firewall.',
    'We saw repeated logins from {} last night.',
    'Point the client at {} and retry.',
    'ssh admin@{}',
  ],
  secret: [
    'Here is the key for the deploy script: {}',
    'export API_TOKEN={}',
    'Why does my request fail with {} in the header?',
    'I pasted this by mistake: {}',
    'config:\n  credentials: {}\n',
  ],
};

/** Values in the middle of phrasing that gives their kind away. */
const CONTEXT_SECRETS = [
  (g: Gen) => `password=${g.chars(12, ALNUM)}`,
  (g: Gen) => `"api_key": "${g.chars(28, ALNUM)}"`,
  (g: Gen) => `my password is ${g.pick(['hunter2', 'Tr0ub4dor&3', 'correcthorse99', 'Summer2024!'])}`,
  (g: Gen) => `postgres://admin:${g.chars(14, ALNUM)}@db.internal:5432/app`,
  (g: Gen) => `Authorization: Bearer ${g.chars(40, BASE64URL)}`,
];

const TERMS = ['Project Bluebird', 'Helix', 'Dr. Okafor', 'Maple Street clinic', 'Zanzibar account'];
const TERM_TEMPLATES = [
  'Status update on {} for the board: on track.',
  'Do not mention {} in the public release notes.',
  'The meeting about {} moved to Thursday.',
];

/** Prompts without personal data, many shaped like it. */
function negatives(g: Gen): string[] {
  const badLuhn = () => {
    const body = `4${g.digits(14)}`;
    return body + String((Number(luhnDigit(body)) + 1 + g.int(0, 8)) % 10);
  };
  const badIban = () => {
    const good = ibanWithCheck('DE', g.digits(18));
    const check = (Number(good.slice(2, 4)) + g.int(1, 90)) % 97;
    return `DE${String(check < 2 ? check + 2 : check).padStart(2, '0')}${good.slice(4)}`;
  };
  const hex = (n: number) => g.chars(n, '0123456789abcdef');
  return [
    `The meeting is on ${g.int(2020, 2030)}-${String(g.int(1, 12)).padStart(2, '0')}-${String(g.int(1, 28)).padStart(2, '0')} at ${g.int(8, 18)}:${g.pick(['00', '15', '30', '45'])}.`,
    `Upgrade to version ${g.int(1, 9)}.${g.int(0, 30)}.${g.int(0, 99)} before the release.`,
    `Commit ${hex(40)} fixed the regression.`,
    `Request id ${hex(8)}-${hex(4)}-4${hex(3)}-a${hex(3)}-${hex(12)} failed twice.`,
    `The invoice total is $${g.int(1, 9)},${g.digits(3)}.${g.digits(2)} including tax.`,
    `Order #${g.digits(8, '123456789')} shipped on Monday.`,
    `The ISBN is 978-${g.int(0, 9)}-${g.digits(2)}-${g.digits(6)}-${g.int(0, 9)}.`,
    `That number, ${badLuhn()}, is not a valid card.`,
    `The IBAN ${badIban()} was rejected by the bank.`,
    `Room ${g.int(100, 999)} on floor ${g.int(1, 12)}, building ${g.pick(['A', 'B', 'C'])}.`,
    `${g.int(10, 99)} * ${g.int(10, 99)} = ? Show your work.`,
    `The coordinates are ${g.int(10, 60)}.${g.digits(4)}, -${g.int(10, 150)}.${g.digits(4)}.`,
    `Our zip code is ${g.digits(5, '123456789')} and the office opens at 9.`,
    `The reset token expired, so I asked for a new password.`,
    `Email me tomorrow about the offsite, or call when you can.`,
    `Population grew from ${g.int(1, 9)},${g.digits(3)},${g.digits(3)} to ${g.int(1, 9)},${g.digits(3)},${g.digits(3)} in ten years.`,
    `Call getUserAccountSettingsById with the cached session.`,
    `Fellow citizens, the year ${g.int(1790, 1990)} tested the union as few before it.`,
    `Set the timeout to ${g.int(100, 9000)} ms and retry ${g.int(2, 9)} times.`,
    `The temperature was ${g.int(-20, 40)}.${g.int(0, 9)} degrees at 06:45:12.`,
    `Tracking number 1Z${g.chars(6, UPPER + DIGITS)}${g.digits(10)} is in transit.`,
    `SKU ${g.chars(3, UPPER)}-${g.digits(4)}-${g.chars(2, UPPER)} is out of stock.`,
    `The library ships a file named checksum-${hex(16)}.txt.`,
  ];
}

export function labelledPrivacySet(seed = 18, copies = 3): LabelledPrompt[] {
  const g = new Gen(new Random(seed));
  const items: Omit<LabelledPrompt, 'id'>[] = [];
  const place = (template: string, value: string, kind: LabelKind) => {
    const at = template.indexOf('{}');
    const text = template.slice(0, at) + value + template.slice(at + 2);
    return { text, spans: [{ kind, start: at, end: at + value.length }] };
  };
  const pools = values(g);
  for (let copy = 0; copy < copies; copy++) {
    for (const kind of Object.keys(pools) as (keyof typeof pools)[]) {
      for (const value of pools[kind]) items.push(place(g.pick(TEMPLATES[kind]), value(), kind));
    }
    for (const secret of CONTEXT_SECRETS) {
      const value = secret(g);
      const m = /(?:password=|"api_key": "|my password is |admin:|Bearer )([^"@]+)/.exec(value)!;
      const start = m.index + m[0].length - m[1]!.length;
      const text = `Debugging the service, the log shows ${value} in plain text.`;
      const offset = 'Debugging the service, the log shows '.length;
      items.push({ text, spans: [{ kind: 'secret', start: offset + start, end: offset + start + m[1]!.length }] });
    }
    for (const term of TERMS) {
      const item = place(g.pick(TERM_TEMPLATES), term, 'term');
      items.push({ ...item, terms: [term] });
    }
    // two kinds in one prompt
    for (let i = 0; i < 8; i++) {
      const email = pools.email[i % pools.email.length]!();
      const phone = pools.phone[i % pools.phone.length]!();
      const text = `Reach ${g.pick(FIRST)} at ${email} or on ${phone} this week.`;
      const e = text.indexOf(email);
      const p = text.indexOf(phone);
      items.push({
        text,
        spans: [
          { kind: 'email', start: e, end: e + email.length },
          { kind: 'phone', start: p, end: p + phone.length },
        ],
      });
    }
    for (const text of negatives(g)) items.push({ text, spans: [] });
  }
  return items.map((item, id) => ({ id, ...item }));
}
