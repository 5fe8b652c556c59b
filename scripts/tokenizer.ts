/**
 * pnpm models:tokenizer [--vocab 4096] [--out models/cloud]
 *
 * Trains the cloud model's byte-level BPE on the general corpus (the general training split of every
 * task, seed 0: text no client holds) with Hugging Face's tokenizers (native binding) and writes
 * OUT/tokenizer.json, loadable by any Hugging Face tokenizer library. Digits stay single tokens (a
 * Digits pre-tokenizer runs before ByteLevel). The binding trains only with its default trainer (up to
 * 30,000 tokens, no initial alphabet), so its merges are cut to the vocabulary asked for: BPE merges
 * greedily, one pair per step, so the first K merges are what a trainer stopped at K would give. All 256
 * bytes are in the vocabulary whatever the corpus held, then the merges, then <|bos|>, <|eos|>, <|pad|>.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Tokenizer } from 'tokenizers';
import { BpeTokenizer, CHAR_OF_BYTE } from '@floe/model';
import { TASKS, taskPartition } from '@floe/tasks';

const SPECIALS = ['<|bos|>', '<|eos|>', '<|pad|>'];
const usage = 'usage: pnpm models:tokenizer [--vocab N (512..30000, default 4096)] [--out DIR (default models/cloud)]';

let values;
try {
  ({ values } = parseArgs({
    options: {
      vocab: { type: 'string', default: '4096' },
      out: { type: 'string', default: 'models/cloud' },
      help: { type: 'boolean', short: 'h' },
    },
  }));
} catch (error) {
  console.error(`${(error as Error).message}\n${usage}`);
  process.exit(2);
}
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const vocabSize = Number(values.vocab);
if (!Number.isInteger(vocabSize) || vocabSize < 512 || vocabSize > 30_000) {
  console.error(usage);
  process.exit(2);
}

const pipeline = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [],
  normalizer: null,
  pre_tokenizer: {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Digits', individual_digits: true },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    ],
  },
  post_processor: null,
  decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
    vocab: {},
    merges: [],
  },
};

const work = mkdtempSync(path.join(os.tmpdir(), 'floe-bpe-'));
try {
  const corpus = path.join(work, 'general.txt');
  const documents = TASKS.flatMap((task) => taskPartition(task, { seed: 0 }).general.train.documents);
  writeFileSync(corpus, documents.join('\n\n'));
  console.log(`training on the general corpus: ${documents.length} documents, ${readFileSync(corpus).length} bytes`);
  const started = performance.now();
  const tokenizer = Tokenizer.fromString(JSON.stringify(pipeline));
  tokenizer.train([corpus]);
  const trained = path.join(work, 'trained.json');
  tokenizer.save(trained, false);
  console.log(`trained in ${((performance.now() - started) / 1000).toFixed(1)} s`);

  const json = JSON.parse(readFileSync(trained, 'utf8')) as {
    model: { vocab: Record<string, number>; merges: [string, string][] };
    added_tokens: unknown[];
  };
  const vocab: Record<string, number> = {};
  let id = 0;
  for (const char of CHAR_OF_BYTE) vocab[char] = id++;
  const merges: [string, string][] = [];
  for (const [a, b] of json.model.merges) {
    if (id >= vocabSize - SPECIALS.length) break;
    if (vocab[a + b] !== undefined) continue;
    merges.push([a, b]);
    vocab[a + b] = id++;
  }
  json.model.vocab = vocab;
  json.model.merges = merges;
  json.added_tokens = SPECIALS.map((content) => ({
    id: id++,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  mkdirSync(values.out, { recursive: true });
  const out = path.join(values.out, 'tokenizer.json');
  writeFileSync(out, `${JSON.stringify(json)}\n`);

  // what it buys: bytes per token on each task's general test split (text it was not trained on)
  const bpe = BpeTokenizer.load(out);
  for (const task of TASKS) {
    const text = taskPartition(task, { seed: 0 }).general.test.documents.join('\n\n');
    const tokens = bpe.encode(text).length;
    console.log(`${task}: ${(Buffer.byteLength(text) / tokens).toFixed(2)} bytes per token on general:test`);
  }
  console.log(`wrote ${out}: ${bpe.vocabSize} tokens (256 bytes, ${merges.length} merges, ${SPECIALS.length} special)`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
