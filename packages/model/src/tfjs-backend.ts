/**
 * Run-time choice of the tfjs backend: tfjs-node (native) if its binding loads, else WebAssembly,
 * else plain JavaScript. tfjs-node is an optional dependency whose install script downloads
 * libtensorflow; without internet it installs without its binding and fails here, at import.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';

export type TfjsBackendName = 'tensorflow' | 'wasm' | 'cpu';
export const TFJS_BACKEND_ORDER: readonly TfjsBackendName[] = ['tensorflow', 'wasm', 'cpu'];

export interface BackendAttempt {
  backend: TfjsBackendName;
  ok: boolean;
  error?: string;
}

export interface BackendSelection {
  backend: TfjsBackendName;
  attempts: BackendAttempt[];
}

const require = createRequire(import.meta.url);

async function register(backend: TfjsBackendName): Promise<void> {
  if (backend === 'tensorflow') {
    await import('@tensorflow/tfjs-node');
  } else if (backend === 'wasm') {
    const wasm = await import('@tensorflow/tfjs-backend-wasm');
    const wasmFile = require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm');
    wasm.setWasmPaths(`${path.dirname(wasmFile)}${path.sep}`);
  }
  if (!(await tf.setBackend(backend))) throw new Error(`tf.setBackend('${backend}') returned false`);
  await tf.ready();
}

/**
 * Selects the first backend of `order` that works. `FLOE_TFJS_BACKEND` (tensorflow, wasm or cpu)
 * overrides the order. Every attempt is reported so the caller can say why a faster one was skipped.
 */
export async function selectTfjsBackend(
  order: readonly TfjsBackendName[] = backendOrderFromEnv(),
): Promise<BackendSelection> {
  const attempts: BackendAttempt[] = [];
  for (const backend of order) {
    try {
      await register(backend);
      attempts.push({ backend, ok: true });
      return { backend, attempts };
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      attempts.push({ backend, ok: false, error: message.split('\n')[0] ?? message });
    }
  }
  const tried = attempts.map((a) => `${a.backend}: ${a.error ?? 'failed'}`).join('; ');
  throw new Error(`no tfjs backend could be initialised (${tried})`);
}

function backendOrderFromEnv(): readonly TfjsBackendName[] {
  const forced = process.env['FLOE_TFJS_BACKEND'];
  if (forced === undefined || forced === '') return TFJS_BACKEND_ORDER;
  if (!(TFJS_BACKEND_ORDER as readonly string[]).includes(forced)) {
    throw new Error(`FLOE_TFJS_BACKEND=${forced} is not one of ${TFJS_BACKEND_ORDER.join(', ')}`);
  }
  return [forced as TfjsBackendName];
}
