import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkpointSha256 } from '@floe/model';
import {
  CalibrationFileError,
  QUICK_SCENARIO,
  cachedCalibration,
  readCalibrationFile,
  sameWorkload,
} from '../src/index.js';

const ROOT = path.join(import.meta.dirname, '..', '..', '..');

describe('calibration files', () => {
  it("the quick scenario's calibration parses and was measured for the committed edge checkpoint", async () => {
    const file = await readCalibrationFile(path.join(ROOT, QUICK_SCENARIO.calibration!));
    const workload = {
      sha256: await checkpointSha256(path.join(ROOT, QUICK_SCENARIO.edgeModel)),
      seqLen: QUICK_SCENARIO.seqLen,
      threads: 1,
      targetModules: QUICK_SCENARIO.targetModules,
    };
    // a retrained checkpoint or new shapes need the file measured again (see docs/decisions/0023)
    expect(sameWorkload(file.workload, workload)).toBe(true);
    expect(file.cost.seqLen).toBe(QUICK_SCENARIO.seqLen);
  });

  it('measures once per workload and CPU, then reads the cache; another workload is measured', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'floe-calibration-'));
    const quick = await readCalibrationFile(path.join(ROOT, QUICK_SCENARIO.calibration!));
    let measured = 0;
    const measure = () => {
      measured++;
      return Promise.resolve({ ...quick.cost, hostGflops: 10 * measured });
    };
    const first = await cachedCalibration(dir, quick.workload, measure);
    const second = await cachedCalibration(dir, quick.workload, measure);
    expect([measured, first.cost.hostGflops, second.cost.hostGflops]).toEqual([1, 10, 10]);
    const other = await cachedCalibration(dir, { ...quick.workload, seqLen: 64 }, measure);
    expect([measured, other.cost.hostGflops]).toEqual([2, 20]);
    expect((await readdir(dir)).length).toBe(2);
  });

  it('refuses a file that is not a calibration, with its path and what is wrong', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'floe-calibration-'));
    const file = path.join(dir, 'bad.json');
    const quick = await readCalibrationFile(path.join(ROOT, QUICK_SCENARIO.calibration!));
    await writeFile(file, JSON.stringify({ ...quick, cost: { ...quick.cost, hostGflops: -1 } }));
    await expect(readCalibrationFile(file)).rejects.toThrow(/bad\.json.*hostGflops/);
    await writeFile(file, '{"workload":');
    await expect(readCalibrationFile(file)).rejects.toThrow(CalibrationFileError);
  });
});
