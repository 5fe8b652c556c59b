/**
 * What a device keeps between runs, in one directory readable only by its user: the identity the
 * server gave it (client id and credential), the jobs it took part in, and its personalized adapters in
 * PEFT layout. Files are written whole (write to a temporary file, then rename), so a device killed
 * mid-write keeps the previous version.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadAdapter, saveAdapter } from '@floe/model';
import type { LoraAdapter } from '@floe/shared';

export interface DeviceIdentity {
  serverUrl: string;
  clientId: string;
  credential: string;
}

export interface JobRecord {
  /** The last round this device trained and sent. */
  lastRound?: number;
  clusterId?: number;
  status: 'running' | 'completed' | 'stopped';
  /** Held-out figure of the base model and of the personalized adapter, in the data's metric. */
  base?: number;
  personalized?: number;
  metric?: string;
}

export interface DeviceState {
  jobs: Record<string, JobRecord>;
}

export class DeviceStore {
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
  }

  private file(name: string): string {
    return path.join(this.dir, name);
  }

  private read<T>(name: string): T | undefined {
    const file = this.file(name);
    if (!existsSync(file)) return undefined;
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  }

  private write(name: string, value: unknown): void {
    const file = this.file(name);
    const temporary = `${file}.${process.pid}.tmp`;
    writeFileSync(temporary, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
    renameSync(temporary, file);
  }

  /** The identity for `serverUrl`, if this device enrolled there. */
  identity(serverUrl: string): DeviceIdentity | undefined {
    const identity = this.read<DeviceIdentity>('identity.json');
    return identity && identity.serverUrl === serverUrl ? identity : undefined;
  }

  /** The identity this device holds, wherever it enrolled. */
  anyIdentity(): DeviceIdentity | undefined {
    return this.read<DeviceIdentity>('identity.json');
  }

  saveIdentity(identity: DeviceIdentity): void {
    this.write('identity.json', identity);
  }

  forgetIdentity(): void {
    rmSync(this.file('identity.json'), { force: true });
  }

  state(): DeviceState {
    return this.read<DeviceState>('state.json') ?? { jobs: {} };
  }

  updateJob(jobId: string, change: Partial<JobRecord>): JobRecord {
    const state = this.state();
    const record: JobRecord = { status: 'running', ...state.jobs[jobId], ...change };
    state.jobs[jobId] = record;
    this.write('state.json', state);
    return record;
  }

  /** A value computed once and kept (a calibration of this device), by a key naming what it depends on. */
  cached<T>(key: string): T | undefined {
    return this.read<Record<string, T>>('cache.json')?.[key];
  }

  cachedKeys(): string[] {
    return Object.keys(this.read<Record<string, unknown>>('cache.json') ?? {});
  }

  cache(key: string, value: unknown): void {
    this.write('cache.json', { ...this.read<Record<string, unknown>>('cache.json'), [key]: value });
  }

  adapterDir(jobId: string): string {
    return path.join(this.dir, 'adapters', jobId);
  }

  async savePersonalAdapter(jobId: string, adapter: LoraAdapter, baseModel: string): Promise<string> {
    const dir = this.adapterDir(jobId);
    mkdirSync(path.dirname(dir), { recursive: true, mode: 0o700 });
    await saveAdapter(dir, adapter, baseModel);
    return dir;
  }

  async personalAdapter(jobId: string): Promise<LoraAdapter | undefined> {
    const dir = this.adapterDir(jobId);
    if (!existsSync(path.join(dir, 'adapter_config.json'))) return undefined;
    return (await loadAdapter(dir)).adapter;
  }
}
