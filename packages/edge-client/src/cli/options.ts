/**
 * What the floe-edge commands share: argument parsers (each throws InvalidArgumentError, which commander
 * reports as a usage error), option factories with their environment variables, the config file, and
 * the usage error itself.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from '@commander-js/extra-typings';
import Type from 'typebox';
import { DeviceProfile, LORA_MODULES, isLoraModuleKind, parse } from '@floe/shared';
import type { Score } from '@floe/tasks';
import { type ProfileOverrides, TIERS } from '../profile.js';

/** A wrong flag, file or value: reported on one line with exit code 2. */
export class UsageError extends Error {}

export const DEFAULT_MODULES = 'q_proj,v_proj,up_proj,down_proj';

// ---- argument parsers: each throws InvalidArgumentError, which commander reports as a usage error

export function integer(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\s*-?\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    }
    return n;
  };
}

export function positiveNumber(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0)
    throw new InvalidArgumentError('expected a positive number');
  return n;
}

export function directory(what: string, required: string[] = []) {
  return (value: string): string => {
    const dir = path.resolve(value);
    if (!existsSync(dir) || !statSync(dir).isDirectory())
      throw new InvalidArgumentError(`${what} ${dir} is not a directory`);
    for (const file of required) {
      if (!existsSync(path.join(dir, file))) throw new InvalidArgumentError(`${what} ${dir} has no ${file}`);
    }
    return dir;
  };
}

export const modelDir = directory('model directory', ['config.json', 'model.safetensors']);
export const dataDir = directory('data directory', ['train']);
export const adapterDir = directory('adapter directory', ['adapter_config.json']);

export function serverUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError('expected an http(s) URL such as http://localhost:8080');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError('expected an http(s) URL');
  return url.origin;
}

export function moduleList(value: string): string[] {
  const modules = value.split(',').map((m) => m.trim());
  const unknown = modules.filter((m) => !isLoraModuleKind(m));
  if (modules.length === 0 || unknown.length > 0) {
    throw new InvalidArgumentError(
      `unknown module ${unknown.join(',') || '(none)'}; known: ${LORA_MODULES.join(', ')}`,
    );
  }
  return modules;
}

export function layerList(value: string): number[] {
  const layers = value.split(',').map((l) => integer(0, 1023)(l));
  if (new Set(layers).size !== layers.length) throw new InvalidArgumentError('layers repeat');
  return layers.sort((a, b) => a - b);
}

export function readProfileFile(file: string): ProfileOverrides {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new UsageError(`profile ${file}: ${(error as Error).message}`);
  }
  try {
    return parse(
      Type.Partial(Type.Omit(DeviceProfile, ['tier']), { additionalProperties: false }),
      value,
      `profile ${file}`,
    );
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

// ---- shared options

export const homeOption = () =>
  new Option('--home <dir>', "the device's own directory: identity, state, adapters (kept private)")
    .env('FLOE_EDGE_HOME')
    .default(path.join(os.homedir(), '.floe-edge'));
export const configOption = () =>
  new Option('--config <file>', 'JSON config file of option values (default: HOME/config.json)').env(
    'FLOE_EDGE_CONFIG',
  );
export const serverOption = () =>
  new Option('--server <url>', 'the coordination server').env('FLOE_EDGE_SERVER').argParser(serverUrl);
export const joinTokenOption = () =>
  new Option('--join-token <token>', 'enrollment token from the server operator').env('FLOE_EDGE_JOIN_TOKEN');
export const modelOption = () =>
  new Option('--model <dir>', 'base model checkpoint directory').env('FLOE_EDGE_MODEL').argParser(modelDir);
export const dataOption = () =>
  new Option('--data <dir>', 'local data directory (train/, test/; see the README)')
    .env('FLOE_EDGE_DATA')
    .argParser(dataDir);
export const tierOption = () =>
  new Option('--tier <name>', 'a simulated device class (its compute and link are emulated)')
    .env('FLOE_EDGE_TIER')
    .choices(Object.keys(TIERS));
export const profileOption = () =>
  new Option(
    '--profile <file>',
    'JSON profile overrides: memoryMiB, computeGflops, uplinkMbps, downlinkMbps, roundBudgetSec',
  )
    .env('FLOE_EDGE_PROFILE')
    .argParser((file: string) => {
      if (!existsSync(file)) throw new InvalidArgumentError(`${path.resolve(file)} does not exist`);
      return path.resolve(file);
    });
export const threadsOption = () =>
  new Option('--threads <n>', 'ONNX Runtime threads').env('FLOE_EDGE_THREADS').argParser(integer(1, 256)).default(2);
export const seqLenOption = () =>
  new Option('--seq-len <n>', 'bytes per training row')
    .env('FLOE_EDGE_SEQ_LEN')
    .argParser(integer(8, 65536))
    .default(128);
export const jsonOption = () => new Option('--json', 'print JSON instead of text');

export function required<T>(value: T | undefined, flag: string): T {
  if (value === undefined) throw new UsageError(`${flag} is required (or its FLOE_EDGE_ variable, or the config file)`);
  return value;
}

/**
 * Fills options left at their defaults from the config file, parsed by the same parsers as flags. Keys
 * no command knows are an error; keys another command knows are ignored.
 */
export function applyConfigFile(command: Command, allKeys: Set<string>): void {
  const options = command.opts() as { config?: string; home?: string };
  const file = options.config ?? (options.home ? path.join(options.home, 'config.json') : undefined);
  if (!file || (!options.config && !existsSync(file))) return;
  let config: unknown;
  try {
    config = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new UsageError(`config ${file}: ${(error as Error).message}`);
  }
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw new UsageError(`config ${file}: expected a JSON object`);
  }
  for (const [key, value] of Object.entries(config)) {
    if (!allKeys.has(key)) throw new UsageError(`config ${file}: unknown option ${key}`);
    const option = command.options.find((o) => o.attributeName() === key);
    if (!option) continue;
    const source = command.getOptionValueSource(key);
    if (source !== undefined && source !== 'default') continue;
    const text = Array.isArray(value) ? value.join(',') : String(value);
    let parsed: unknown = value;
    try {
      const parser = (option as unknown as { parseArg?: (value: string, previous: unknown) => unknown }).parseArg;
      if (option.argChoices && !option.argChoices.includes(text)) {
        throw new InvalidArgumentError(`expected one of ${option.argChoices.join(', ')}`);
      }
      if (parser) parsed = parser(text, undefined);
    } catch (error) {
      throw new UsageError(`config ${file}: ${key} ${JSON.stringify(value)}: ${(error as Error).message}`);
    }
    command.setOptionValueWithSource(key, parsed, 'config');
  }
}

export const say = (line: string) => process.stdout.write(`${line}\n`);
export const stamp = () => new Date().toISOString().slice(11, 19);

export function describeScore(score: Score | undefined): string {
  if (!score) return 'no test split';
  return `${score.metric} ${score.value.toFixed(4)} (${score.count} ${score.metric === 'bits-per-byte' ? 'bytes' : 'examples'})`;
}

export function profileFor(profileFile: string | undefined): ProfileOverrides {
  return profileFile ? readProfileFile(profileFile) : {};
}
