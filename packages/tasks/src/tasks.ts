/**
 * The three tasks of a local federation and their deterministic partitions. For every task: a set of
 * clients, each with private train/test splits, and a general corpus (train/test) that no client
 * holds, for pretraining the base checkpoints. Everything is a function of the seed.
 *
 * - speech: next-byte modelling of State of the Union addresses, one client per president.
 * - email: spam/ham labelling; each client a mailbox with its own spam ratio; `...\nlabel: spam`.
 * - arithmetic: `a+b=c` style problems of graded difficulty with exact answers.
 */
import { Random } from '@floe/model';
import { type Mail, mobyDick, spamAssassin, stateOfTheUnion } from './corpora.js';

export type TaskName = 'speech' | 'email' | 'arithmetic';
export const TASKS: readonly TaskName[] = ['speech', 'email', 'arithmetic'];

/** A prompt and its exact answer; the training text is prompt + answer + "\n". */
export interface Example {
  prompt: string;
  answer: string;
}

export interface Split {
  /** Training/evaluation text. */
  documents: string[];
  /** Structured examples (email, arithmetic); documents are their prompt + answer + "\n". */
  examples?: Example[];
}

export interface ClientData {
  id: string;
  task: TaskName;
  train: Split;
  test: Split;
  /** What makes this client's data its own (president, spam ratio, operations). */
  profile: Record<string, string | number>;
}

export interface TaskPartition {
  task: TaskName;
  clients: ClientData[];
  general: { train: Split; test: Split };
}

export interface PartitionOptions {
  seed?: number;
  clients?: number;
}

function fromExamples(examples: Example[]): Split {
  return { examples, documents: examples.map((e) => `${e.prompt}${e.answer}\n`) };
}

// ----------------------------------------------------------------------------------------- speech

/** Presidents with at least this many addresses can be clients (2 held out for test, the rest train). */
const MIN_CLIENT_ADDRESSES = 7;

export function speechTask(options: PartitionOptions = {}): TaskPartition {
  const random = new Random(options.seed ?? 0);
  const addresses = stateOfTheUnion();
  const byPresident = new Map<string, typeof addresses>();
  for (const a of addresses) byPresident.set(a.president, [...(byPresident.get(a.president) ?? []), a]);
  const eligible = [...byPresident].filter(([, list]) => list.length >= MIN_CLIENT_ADDRESSES).map(([p]) => p);
  const chosen = new Set(random.shuffled(eligible).slice(0, options.clients ?? 8));

  const clients: ClientData[] = [...chosen].sort().map((president, i) => {
    const list = (byPresident.get(president) ?? []).sort((a, b) => a.year - b.year);
    return {
      id: `speech-${i}`,
      task: 'speech',
      train: { documents: list.slice(0, -2).map((a) => a.text) },
      test: { documents: list.slice(-2).map((a) => a.text) },
      profile: { president, addresses: list.length, firstYear: list[0]?.year ?? 0 },
    };
  });
  // The other presidents' addresses: 1 in 8 held out for evaluation. Moby-Dick is training text only.
  const others = random.shuffled(addresses.filter((a) => !chosen.has(a.president)));
  const heldOut = Math.round(others.length / 8);
  return {
    task: 'speech',
    clients,
    general: {
      train: { documents: [...others.slice(heldOut).map((a) => a.text), ...mobyDick()] },
      test: { documents: others.slice(0, heldOut).map((a) => a.text) },
    },
  };
}

// ------------------------------------------------------------------------------------------ email

const SUBJECT_BYTES = 80;
const BODY_BYTES = 240;

export function emailExample(mail: Mail): Example {
  const subject = mail.subject.slice(0, SUBJECT_BYTES);
  const body = mail.body.slice(0, BODY_BYTES).replace(/\s+\S*$/, '');
  return { prompt: `Subject: ${subject}\n${body}\nlabel:`, answer: ` ${mail.label}` };
}

const CLIENT_MAILS = { train: 160, test: 40 };

export function emailTask(options: PartitionOptions = {}): TaskPartition {
  const random = new Random((options.seed ?? 0) + 1);
  // distinct messages can render to the same example (same subject and opening); keep one of each
  const byPrompt = new Map<string, Mail>();
  for (const mail of spamAssassin()) {
    const { prompt } = emailExample(mail);
    if (!byPrompt.has(prompt)) byPrompt.set(prompt, mail);
  }
  const all = random.shuffled([...byPrompt.values()]);
  const spam = all.filter((m) => m.label === 'spam');
  const ham = all.filter((m) => m.label === 'ham');
  const count = options.clients ?? 8;
  const clients: ClientData[] = [];
  for (let i = 0; i < count; i++) {
    // non-IID: spam ratios spread from 10% to 70% across clients
    const ratio = count === 1 ? 0.3 : 0.1 + (0.6 * i) / (count - 1);
    const take = (n: number) => {
      const s = Math.round(n * ratio);
      return random.shuffled([...spam.splice(0, s), ...ham.splice(0, n - s)]);
    };
    clients.push({
      id: `email-${i}`,
      task: 'email',
      train: fromExamples(take(CLIENT_MAILS.train).map(emailExample)),
      test: fromExamples(take(CLIENT_MAILS.test).map(emailExample)),
      profile: { spamRatio: Math.round(ratio * 100) / 100 },
    });
  }
  const rest = random.shuffled([...spam, ...ham]);
  const heldOut = Math.round(rest.length / 8);
  return {
    task: 'email',
    clients,
    general: {
      train: fromExamples(rest.slice(heldOut).map(emailExample)),
      test: fromExamples(rest.slice(0, heldOut).map(emailExample)),
    },
  };
}

// ------------------------------------------------------------------------------------- arithmetic

export type Operation = '+' | '-' | '*';
export interface Difficulty {
  op: Operation;
  digits: number;
}
export const DIFFICULTIES: readonly Difficulty[] = (['+', '-', '*'] as const).flatMap((op) =>
  [1, 2, 3].map((digits) => ({ op, digits })),
);

export function arithmeticExample(a: number, op: Operation, b: number): Example {
  const answer = op === '+' ? a + b : op === '-' ? a - b : a * b;
  return { prompt: `${a}${op}${b}=`, answer: String(answer) };
}

/** Which disjoint set a problem belongs to, by a hash of its text: clients, general train or general test. */
export function arithmeticBucket(prompt: string): 'client' | 'general-train' | 'general-test' {
  let h = 2166136261;
  for (let i = 0; i < prompt.length; i++) h = Math.imul(h ^ prompt.charCodeAt(i), 16777619);
  const bucket = (h >>> 0) % 10;
  return bucket === 0 ? 'client' : bucket === 1 ? 'general-test' : 'general-train';
}

function sampleProblems(random: Random, difficulties: readonly Difficulty[], bucket: string, n: number): Example[] {
  const out: Example[] = [];
  const seen = new Set<string>();
  let attempts = 0;
  while (out.length < n && attempts < n * 200) {
    attempts++;
    const { op, digits } = difficulties[random.integer(difficulties.length)] as Difficulty;
    const low = digits === 1 ? 0 : 10 ** (digits - 1);
    const a = low + random.integer(10 ** digits - low);
    const b = low + random.integer(10 ** digits - low);
    const example = arithmeticExample(a, op, b);
    if (arithmeticBucket(example.prompt) !== bucket || seen.has(example.prompt)) continue;
    seen.add(example.prompt);
    out.push(example);
  }
  return out;
}

export const ARITHMETIC_SIZES = { generalTrain: 60_000, generalTest: 2_000, clientTrain: 400, clientTest: 100 };

export function arithmeticTask(options: PartitionOptions = {}): TaskPartition {
  const random = new Random((options.seed ?? 0) + 2);
  const count = options.clients ?? 8;
  const clients: ClientData[] = [];
  for (let i = 0; i < count; i++) {
    // non-IID: each client practises one operation at two neighbouring difficulties
    const op = (['+', '-', '*'] as const)[i % 3] as Operation;
    const digits = 1 + (Math.floor(i / 3) % 2);
    const own = [
      { op, digits },
      { op, digits: digits + 1 },
    ];
    const problems = sampleProblems(random, own, 'client', ARITHMETIC_SIZES.clientTrain + ARITHMETIC_SIZES.clientTest);
    clients.push({
      id: `arithmetic-${i}`,
      task: 'arithmetic',
      train: fromExamples(problems.slice(0, ARITHMETIC_SIZES.clientTrain)),
      test: fromExamples(problems.slice(ARITHMETIC_SIZES.clientTrain)),
      profile: { op, digits: `${digits}-${digits + 1}` },
    });
  }
  // Clients of one operation draw from overlapping pools: nobody trains on a problem another client holds
  // out (its answer would reach that client through the aggregate). Dropping, not redrawing, keeps the
  // random stream and so the general splits the checkpoints were pretrained and scored on.
  const heldOut = new Set(clients.flatMap((c) => c.test.examples?.map((e) => e.prompt) ?? []));
  for (const client of clients) {
    const own = new Set(client.test.examples?.map((e) => e.prompt));
    const kept = (client.train.examples ?? []).filter((e) => own.has(e.prompt) || !heldOut.has(e.prompt));
    client.train = fromExamples(kept);
  }
  return {
    task: 'arithmetic',
    clients,
    general: {
      train: fromExamples(sampleProblems(random, DIFFICULTIES, 'general-train', ARITHMETIC_SIZES.generalTrain)),
      test: fromExamples(sampleProblems(random, DIFFICULTIES, 'general-test', ARITHMETIC_SIZES.generalTest)),
    },
  };
}

export function taskPartition(task: TaskName, options: PartitionOptions = {}): TaskPartition {
  if (task === 'speech') return speechTask(options);
  if (task === 'email') return emailTask(options);
  return arithmeticTask(options);
}

/** The split named `general:train`, `general:test`, `client:<n>:train` or `client:<n>:test`. */
export function namedSplit(partition: TaskPartition, name: string): Split {
  const [scope, a, b] = name.split(':');
  if (scope === 'general' && (a === 'train' || a === 'test')) return partition.general[a];
  const client = partition.clients[Number(a)];
  if (scope === 'client' && client && (b === 'train' || b === 'test')) return client[b];
  throw new Error(`unknown split ${name}; use general:train, general:test, client:<n>:train or client:<n>:test`);
}

/** A held-out item of a client that some training data holds. */
export interface HeldOutLeak {
  clientId: string;
  /** The held-out document or example prompt (cut to 80 characters). */
  item: string;
  /** `pretraining` (the checkpoint's general training corpus) or the client id that trains on it. */
  seenBy: string;
}

const heldOutItems = (split: Split) => split.examples?.map((e) => e.prompt) ?? split.documents;

/**
 * Every held-out item of `partition`'s clients that training could see: another client's training data
 * (it would reach the client through the aggregate) or `pretrainedOn`, the general training corpus of
 * the partition the base checkpoint was pretrained on. A federation runs only when this is empty.
 */
export function heldOutLeaks(partition: TaskPartition, pretrainedOn?: Split): HeldOutLeak[] {
  const leaks: HeldOutLeak[] = [];
  const trainers = new Map<string, string>();
  for (const c of partition.clients) for (const item of heldOutItems(c.train)) trainers.set(item, c.id);
  const pretraining = new Set(pretrainedOn ? heldOutItems(pretrainedOn) : []);
  for (const client of partition.clients) {
    for (const item of heldOutItems(client.test)) {
      const trainer = trainers.get(item);
      if (trainer !== undefined && trainer !== client.id)
        leaks.push({ clientId: client.id, item: item.slice(0, 80), seenBy: trainer });
      if (pretraining.has(item)) leaks.push({ clientId: client.id, item: item.slice(0, 80), seenBy: 'pretraining' });
    }
  }
  return leaks;
}

export class PartitionError extends Error {}

/**
 * The clients of `task` for a federation on a checkpoint pretrained on the seed-`pretrainSeed`
 * partition: refuses, naming the first leaks, when a held-out item could have been seen in training.
 */
export function federationPartition(
  task: TaskName,
  options: PartitionOptions & { pretrainSeed: number },
): TaskPartition {
  const partition = taskPartition(task, options);
  if (partition.clients.length < (options.clients ?? 8)) {
    throw new PartitionError(
      `the ${task} task has ${partition.clients.length} clients under seed ${options.seed ?? 0}; asked for ${options.clients}`,
    );
  }
  const pretrained = taskPartition(task, { seed: options.pretrainSeed }).general.train;
  const leaks = heldOutLeaks(partition, pretrained);
  if (leaks.length > 0) {
    const shown = leaks
      .slice(0, 3)
      .map((l) => `${l.clientId} holds out ${JSON.stringify(l.item.slice(0, 40))}, seen by ${l.seenBy}`)
      .join('; ');
    throw new PartitionError(
      `${leaks.length} held-out ${task} item(s) of seed ${options.seed ?? 0} with ${partition.clients.length} clients were seen in training ` +
        `(the checkpoint was pretrained on the seed-${options.pretrainSeed} partition): ${shown}. ` +
        "Use the checkpoint's seed and at most its client count, or pretrain a checkpoint for this partition.",
    );
  }
  return partition;
}
