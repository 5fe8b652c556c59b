/**
 * Moving a byte-level checkpoint to a subword vocabulary without starting over: the transformer body
 * is kept, a byte token keeps its embedding, a subword token starts at the mean of its bytes'
 * embeddings, and special tokens keep theirs. Continued pretraining then only has to teach the new
 * rows (decision 0017).
 */
import type { LlamaConfig } from './config.js';
import type { Weights } from './checkpoint.js';
import { ByteTokenizer, type TextTokenizer } from './tokenizer.js';

const EMBEDDING_MATRICES = ['model.embed_tokens.weight', 'lm_head.weight'];

export function transferVocabulary(
  from: { config: LlamaConfig; weights: Weights; tokenizer: TextTokenizer },
  to: TextTokenizer,
): { config: LlamaConfig; weights: Weights } {
  const bytes = new ByteTokenizer();
  if (from.tokenizer.vocabSize !== bytes.vocabSize || from.config.vocab_size !== bytes.vocabSize) {
    throw new Error('vocabulary transfer starts from a byte-level checkpoint');
  }
  const config: LlamaConfig = {
    ...from.config,
    vocab_size: to.vocabSize,
    bos_token_id: to.bos,
    eos_token_id: to.eos,
    pad_token_id: to.pad,
  };
  const specials = new Map([
    [to.bos, bytes.bos],
    [to.eos, bytes.eos],
    [to.pad, bytes.pad],
  ]);
  const h = from.config.hidden_size;
  const weights: Weights = new Map(from.weights);
  for (const name of EMBEDDING_MATRICES) {
    const old = from.weights.get(name);
    if (!old) continue;
    const data = new Float32Array(to.vocabSize * h);
    for (let id = 0; id < to.vocabSize; id++) {
      const row = data.subarray(id * h, (id + 1) * h);
      const special = specials.get(id);
      const sources = special !== undefined ? [special] : [...to.tokenBytes(id)];
      if (sources.length === 0) throw new Error(`token ${id} has no bytes and is not bos, eos or pad`);
      for (const source of sources) {
        const from = old.data.subarray(source * h, (source + 1) * h);
        for (let i = 0; i < h; i++) row[i] = (row[i] as number) + (from[i] as number) / sources.length;
      }
    }
    weights.set(name, { name, shape: [to.vocabSize, h], data });
  }
  return { config, weights };
}
