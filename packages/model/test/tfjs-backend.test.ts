import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { TFJS_BACKEND_ORDER, selectTfjsBackend } from '../src/index.js';

function matmulSum(): number {
  return tf.tidy(() => {
    const a = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
    const b = tf.tensor2d([7, 8, 9, 10, 11, 12], [3, 2]);
    return tf.matMul(a, b).sum().dataSync()[0]!;
  });
}

describe('tfjs backend selection', () => {
  it('picks the first working backend in order and reports why faster ones were skipped', async () => {
    const selection = await selectTfjsBackend();
    expect(tf.getBackend()).toBe(selection.backend);
    const last = selection.attempts.at(-1)!;
    expect(last).toEqual({ backend: selection.backend, ok: true });
    for (const failed of selection.attempts.slice(0, -1)) {
      expect(failed.ok).toBe(false);
      expect(failed.error).toMatch(/\S/);
    }
    expect(selection.attempts.map((a) => a.backend)).toEqual(TFJS_BACKEND_ORDER.slice(0, selection.attempts.length));
    // [1 2 3; 4 5 6] x [7 8; 9 10; 11 12] = [58 64; 139 154]
    expect(matmulSum()).toBe(415);
  });

  it('computes the same on the plain JavaScript backend when asked for it', async () => {
    const selection = await selectTfjsBackend(['cpu']);
    expect(selection.backend).toBe('cpu');
    expect(matmulSum()).toBe(415);
  });
});
