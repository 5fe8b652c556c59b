/**
 * An OpenAI-compatible cloud alone as a ByteSource: its top-k aligned to bytes (CloudAlignment), the
 * mass outside the top-k spread uniformly (there is no edge to spread it by). Sessions ask for a
 * lookahead continuation when the alignment runs out; a failed call is an error here, since there is
 * nothing to fall back on (the fused source is the one that degrades to the edge).
 */
import {
  BYTE_OUTCOMES,
  type ByteDistribution,
  type ByteSession,
  type ByteSource,
  END_OF_TEXT,
  checkRewind,
} from '@floe/model';
import { CloudAlignment, alignScoredText } from './alignment.js';
import type { CloudClient } from './cloud-client.js';

const UNIFORM: ByteDistribution = new Float64Array(BYTE_OUTCOMES).fill(1 / BYTE_OUTCOMES);

export class CloudByteSource implements ByteSource {
  readonly name = 'cloud';

  constructor(
    private readonly cloud: CloudClient,
    private readonly lookahead = 16,
  ) {}

  start(prompt: string): Promise<ByteSession> {
    const text: number[] = [...new TextEncoder().encode(prompt)];
    const promptLength = text.length;
    let pushed = 0;
    let alignment: CloudAlignment | undefined;
    const { cloud, lookahead } = this;
    return Promise.resolve({
      async next() {
        if (!alignment || alignment.knownShare < 0.25) {
          const positions = await cloud.continuation(new TextDecoder().decode(Uint8Array.from(text)), lookahead);
          if (!positions) throw new Error('the cloud did not answer');
          alignment = new CloudAlignment(positions);
        }
        return alignment.distribution(UNIFORM);
      },
      push(outcome) {
        alignment?.push(outcome, UNIFORM);
        if (outcome !== END_OF_TEXT) text.push(outcome);
        pushed++;
      },
      rewind(count) {
        checkRewind(count, pushed);
        text.length = Math.min(text.length, promptLength + count);
        pushed = count;
        alignment = undefined;
      },
      close() {},
    });
  }

  async score(text: string): Promise<ByteDistribution[]> {
    const scored = await this.cloud.score(text);
    if (!scored) throw new Error('the cloud did not answer');
    return alignScoredText(scored.positions, new TextEncoder().encode(text), () => UNIFORM).map((c) => c ?? UNIFORM);
  }
}
