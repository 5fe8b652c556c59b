/**
 * The training cost the simulated devices plan with. Measured on this host (as every device measures
 * itself) and kept in the run cache under the workload and the CPU; or read from a calibration file a
 * scenario names (the quick scenario's is committed, so CI plans the same on any CPU and skips the
 * half minute of probes). Both are one format: the workload it was measured for, the CPU, the cost.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import Type, { type Static } from 'typebox';
import { TrainingCost, calibrationKey } from '@floe/edge-client';
import { parse } from '@floe/shared';

const CalibrationWorkload = Type.Object({
  sha256: Type.String({ description: 'the checkpoint measured' }),
  seqLen: Type.Integer({ minimum: 1 }),
  threads: Type.Integer({ minimum: 1 }),
  targetModules: Type.Array(Type.String()),
});
export type CalibrationWorkload = Static<typeof CalibrationWorkload>;

export const CalibrationFile = Type.Object({
  workload: CalibrationWorkload,
  cpu: Type.String({ description: 'the host measured: CPU model and core count' }),
  cost: TrainingCost,
});
export type CalibrationFile = Static<typeof CalibrationFile>;

export class CalibrationFileError extends Error {}

const thisCpu = () => `${os.cpus()[0]?.model ?? 'unknown CPU'} x${os.cpus().length}`;

/** A calibration file, checked against its schema. */
export async function readCalibrationFile(file: string): Promise<CalibrationFile> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw new CalibrationFileError(`calibration ${file}: ${(error as Error).message}`);
  }
  try {
    return parse(CalibrationFile, json, `calibration ${file}`);
  } catch (error) {
    throw new CalibrationFileError((error as Error).message);
  }
}

export const sameWorkload = (a: CalibrationWorkload, b: CalibrationWorkload): boolean =>
  calibrationKey(a) === calibrationKey(b);

/**
 * This host's cost for `workload`: from `cacheDir` when measured before on this CPU, else `measure()`d
 * and kept there (a cache file that does not parse is measured anew).
 */
export async function cachedCalibration(
  cacheDir: string | undefined,
  workload: CalibrationWorkload,
  measure: () => Promise<TrainingCost>,
): Promise<CalibrationFile> {
  const cpu = thisCpu();
  if (!cacheDir) return { workload, cpu, cost: await measure() };
  const name = createHash('sha256')
    .update(`${calibrationKey(workload)}|${cpu}`)
    .digest('hex')
    .slice(0, 16);
  const file = path.join(cacheDir, `calibration-${name}.json`);
  const cached = await readCalibrationFile(file).catch(() => undefined);
  if (cached && sameWorkload(cached.workload, workload)) return cached;
  const measured: CalibrationFile = { workload, cpu, cost: await measure() };
  await mkdir(cacheDir, { recursive: true });
  await writeFile(file, `${JSON.stringify(measured, null, 2)}\n`);
  return measured;
}
