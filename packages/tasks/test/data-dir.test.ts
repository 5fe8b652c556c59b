/**
 * Device data directories: what the simulator writes is what a device reads back, a directory without a
 * manifest is understood from its files, and malformed data is refused with the file and line at fault.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DataDirError, MANIFEST_FILE, TASKS, federationPartition, readDataDir, writeDataDir } from '../src/index.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'floe-data-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function write(file: string, text: string): string {
  const full = path.join(dir, file);
  mkdirSync(path.dirname(full), { recursive: true });
  writeFileSync(full, text);
  return full;
}

describe('data directories', () => {
  it.each(TASKS)('%s: every client reads back exactly the partition written for it', (task) => {
    for (const client of federationPartition(task, { seed: 0, clients: 4, pretrainSeed: 0 }).clients) {
      const at = path.join(dir, client.id);
      writeDataDir(at, client);
      const data = readDataDir(at);
      for (const [read, written] of [
        [data.train, client.train],
        [data.test, client.test],
      ] as const) {
        if (written.examples) expect(read?.examples).toEqual(written.examples);
        else expect(read?.documents).toEqual(written.documents);
      }
      expect(data.manifest.kind).toBe(task === 'speech' ? 'text' : 'examples');
    }
  });

  it('understands a directory without a manifest from its files', () => {
    write('prose/train/a.txt', 'Some prose.');
    expect(readDataDir(path.join(dir, 'prose')).manifest).toEqual({ kind: 'text', metric: 'bits-per-byte' });

    const labelled = ['spam', 'ham', 'spam', 'ham', 'spam'].map((answer, i) =>
      JSON.stringify({ prompt: `m${i}: `, answer }),
    );
    write('labels/train/x.jsonl', labelled.join('\n'));
    expect(readDataDir(path.join(dir, 'labels')).manifest).toEqual({
      kind: 'examples',
      metric: 'label-accuracy',
      labels: ['ham', 'spam'],
    });

    const open = ['3', '5', '7', '11'].map((answer, i) => JSON.stringify({ prompt: `${i}+${i}=`, answer }));
    write('open/train/x.jsonl', open.join('\n') + '\n\n');
    const data = readDataDir(path.join(dir, 'open'));
    expect(data.manifest).toEqual({ kind: 'examples', metric: 'exact-match' });
    expect(data.train.examples).toHaveLength(4);
    expect(data.test).toBeUndefined();
  });

  it('refuses malformed data with the file and line at fault', () => {
    const file = write('bad/train/x.jsonl', '{"prompt": "a", "answer": "b"}\n{"prompt": "a"\n');
    expect(() => readDataDir(path.join(dir, 'bad'))).toThrow(new DataDirError(`${file}:2: not JSON`));
    write('bad/train/x.jsonl', '{"prompt": "a", "answer": ""}\n');
    expect(() => readDataDir(path.join(dir, 'bad'))).toThrow(/x\.jsonl:1: expected \{"prompt": string/);
    write('bad/train/x.jsonl', '{"prompt": "a", "answer": "b"}\n');
    write('bad/train/y.txt', 'prose among examples');
    expect(() => readDataDir(path.join(dir, 'bad'))).toThrow(/holds \.jsonl files only/);
  });

  it('refuses a manifest that contradicts itself or the files', () => {
    write('m/train/a.txt', 'prose');
    write(`m/${MANIFEST_FILE}`, JSON.stringify({ kind: 'text', metric: 'exact-match' }));
    expect(() => readDataDir(path.join(dir, 'm'))).toThrow(/prose is scored in bits-per-byte/);
    write(`m/${MANIFEST_FILE}`, JSON.stringify({ kind: 'examples', metric: 'label-accuracy' }));
    expect(() => readDataDir(path.join(dir, 'm'))).toThrow(/needs "labels"/);
    write(`m/${MANIFEST_FILE}`, JSON.stringify({ kind: 'text', metric: 'bits-per-byte', extra: 1 }));
    expect(() => readDataDir(path.join(dir, 'm'))).toThrow(DataDirError);
    write(`m/${MANIFEST_FILE}`, '{not json');
    expect(() => readDataDir(path.join(dir, 'm'))).toThrow(/not JSON/);
  });

  it('refuses a directory with no training data, or none at all', () => {
    mkdirSync(path.join(dir, 'empty', 'train'), { recursive: true });
    write('empty/train/blank.txt', '  \n');
    expect(() => readDataDir(path.join(dir, 'empty'))).toThrow(/holds no \.txt data/);
    expect(() => readDataDir(path.join(dir, 'missing'))).toThrow(/does not exist/);
  });
});
