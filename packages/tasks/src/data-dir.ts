/**
 * A device's local data as a directory, the one format the edge client reads and the simulator writes:
 *
 *   DATA/floe-data.json   optional: {"kind": "text" | "examples", "metric": ..., "labels": [...]}
 *   DATA/train/           *.txt (each file one document of prose) and *.jsonl (one {"prompt", "answer"} per line)
 *   DATA/test/            the same, held out for local evaluation (optional)
 *
 * Prose is for next-byte modelling (metric bits-per-byte); examples are prompts with exact answers,
 * scored by label accuracy when the answers are a closed set of labels, else by greedy exact match.
 * Without a manifest the kind follows the files (any .jsonl: examples) and the metric the answers.
 */
import { mkdirSync, readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import Type, { type Static } from 'typebox';
import { parse } from '@floe/shared';
import type { ClientData, Example, Split, TaskName } from './tasks.js';
import { EMAIL_LABELS } from './evaluate.js';

export const MANIFEST_FILE = 'floe-data.json';

export const DataManifestSchema = Type.Object(
  {
    kind: Type.Union([Type.Literal('text'), Type.Literal('examples')]),
    metric: Type.Union([Type.Literal('bits-per-byte'), Type.Literal('label-accuracy'), Type.Literal('exact-match')]),
    /** label-accuracy: the answers a prompt is scored against (each with its leading space, if any). */
    labels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 2, maxItems: 32 })),
  },
  { additionalProperties: false },
);
export type DataManifest = Static<typeof DataManifestSchema>;

export interface LocalData {
  manifest: DataManifest;
  train: Split;
  test: Split | undefined;
}

export class DataDirError extends Error {}

/** At most this many distinct answers (each seen at least twice) make a closed label set. */
const MAX_INFERRED_LABELS = 8;

function readSplit(dir: string, kind: DataManifest['kind']): Split | undefined {
  if (!existsSync(dir)) return undefined;
  const files = readdirSync(dir).sort();
  const documents: string[] = [];
  const examples: Example[] = [];
  for (const file of files) {
    const full = path.join(dir, file);
    if (file.endsWith('.txt')) {
      if (kind === 'examples') throw new DataDirError(`${full}: a data directory of examples holds .jsonl files only`);
      const text = readFileSync(full, 'utf8');
      if (text.trim().length > 0) documents.push(text);
    } else if (file.endsWith('.jsonl')) {
      if (kind === 'text') throw new DataDirError(`${full}: a data directory of prose holds .txt files only`);
      readFileSync(full, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (line.trim() === '') return;
          let value: unknown;
          try {
            value = JSON.parse(line);
          } catch {
            throw new DataDirError(`${full}:${i + 1}: not JSON`);
          }
          const { prompt, answer } = (value ?? {}) as { prompt?: unknown; answer?: unknown };
          if (typeof prompt !== 'string' || typeof answer !== 'string' || answer.length === 0) {
            throw new DataDirError(`${full}:${i + 1}: expected {"prompt": string, "answer": non-empty string}`);
          }
          examples.push({ prompt, answer });
        });
    }
  }
  if (kind === 'examples') {
    if (examples.length === 0) return undefined;
    return { examples, documents: examples.map((e) => `${e.prompt}${e.answer}\n`) };
  }
  return documents.length === 0 ? undefined : { documents };
}

function inferManifest(dir: string): DataManifest {
  const train = path.join(dir, 'train');
  const files = existsSync(train) ? readdirSync(train) : [];
  if (!files.some((f) => f.endsWith('.jsonl'))) return { kind: 'text', metric: 'bits-per-byte' };
  const split = readSplit(train, 'examples');
  const counts = new Map<string, number>();
  for (const e of split?.examples ?? []) counts.set(e.answer, (counts.get(e.answer) ?? 0) + 1);
  const closed = counts.size >= 2 && counts.size <= MAX_INFERRED_LABELS && [...counts.values()].every((n) => n >= 2);
  return closed
    ? { kind: 'examples', metric: 'label-accuracy', labels: [...counts.keys()].sort() }
    : { kind: 'examples', metric: 'exact-match' };
}

/** Reads a data directory; throws DataDirError with the file and line of anything malformed. */
export function readDataDir(dir: string): LocalData {
  if (!existsSync(dir)) throw new DataDirError(`data directory ${dir} does not exist`);
  const manifestPath = path.join(dir, MANIFEST_FILE);
  let manifest: DataManifest;
  if (existsSync(manifestPath)) {
    let value: unknown;
    try {
      value = JSON.parse(readFileSync(manifestPath, 'utf8'));
    } catch {
      throw new DataDirError(`${manifestPath}: not JSON`);
    }
    try {
      manifest = parse(DataManifestSchema, value, MANIFEST_FILE);
    } catch (error) {
      throw new DataDirError(`${manifestPath}: ${(error as Error).message}`);
    }
  } else {
    manifest = inferManifest(dir);
  }
  if (manifest.metric === 'label-accuracy' && !manifest.labels) {
    throw new DataDirError(`${manifestPath}: label-accuracy needs "labels"`);
  }
  if ((manifest.kind === 'text') !== (manifest.metric === 'bits-per-byte')) {
    throw new DataDirError(
      `${manifestPath}: prose is scored in bits-per-byte, examples by label-accuracy or exact-match`,
    );
  }
  const train = readSplit(path.join(dir, 'train'), manifest.kind);
  if (!train)
    throw new DataDirError(`${path.join(dir, 'train')} holds no ${manifest.kind === 'text' ? '.txt' : '.jsonl'} data`);
  return { manifest, train, test: readSplit(path.join(dir, 'test'), manifest.kind) };
}

/** The manifest of a simulated client's task. */
export function taskManifest(task: TaskName): DataManifest {
  if (task === 'speech') return { kind: 'text', metric: 'bits-per-byte' };
  if (task === 'email') return { kind: 'examples', metric: 'label-accuracy', labels: [...EMAIL_LABELS] };
  return { kind: 'examples', metric: 'exact-match' };
}

function writeSplit(dir: string, split: Split): void {
  mkdirSync(dir, { recursive: true });
  if (split.examples) {
    const lines = split.examples.map((e) => JSON.stringify({ prompt: e.prompt, answer: e.answer }));
    writeFileSync(path.join(dir, 'examples.jsonl'), `${lines.join('\n')}\n`);
  } else {
    const width = String(split.documents.length).length;
    split.documents.forEach((doc, i) => writeFileSync(path.join(dir, `${String(i).padStart(width, '0')}.txt`), doc));
  }
}

/** Writes a simulated client's private partition as its device would hold it. */
export function writeDataDir(dir: string, client: Pick<ClientData, 'task' | 'train' | 'test'>): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(path.join(dir, MANIFEST_FILE), `${JSON.stringify(taskManifest(client.task), null, 2)}\n`);
  writeSplit(path.join(dir, 'train'), client.train);
  writeSplit(path.join(dir, 'test'), client.test);
}
