/** File wrappers around the safetensors codec in @floe/shared (which stays free of node:fs). */
import { readFile, writeFile } from 'node:fs/promises';
import {
  type SafetensorsDType,
  type SafetensorsFile,
  type Tensor,
  parseSafetensors,
  serializeSafetensors,
} from '@floe/shared';

export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  return parseSafetensors(await readFile(path));
}

export async function writeSafetensors(
  path: string,
  tensors: Iterable<Tensor>,
  dtype: SafetensorsDType = 'F32',
  metadata: Record<string, string> = {},
): Promise<void> {
  await writeFile(path, serializeSafetensors(tensors, dtype, metadata));
}
