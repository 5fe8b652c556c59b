/**
 * floe-edge's inference commands: `scan` (the privacy guard on JSON lines), `generate` (an answer
 * streamed to the terminal) and `serve` (an OpenAI-compatible endpoint for apps). Each cloud call they
 * make passes the privacy guard and is recorded in HOME/cloud-calls.jsonl (`floe-edge status` shows it).
 */
import { createInterface } from 'node:readline';
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from '@commander-js/extra-typings';
import { getCountries, type CountryCode } from 'libphonenumber-js';
import { CloudClient } from '../inference/cloud-client.js';
import { TokenBucket } from '../offload/budget.js';
import { CloudCallLog } from '../privacy/call-log.js';
import { PRIVACY_POLICIES, PrivacyGuard, type PrivacyPolicy } from '../privacy/guard.js';
import { DeviceStore } from '../device-store.js';
import { type AdapterSource, EdgeModels } from '../serving/edge-models.js';
import { startEdgeServer } from '../serving/openai-server.js';
import { GENERATION_MODES, type GenerationMode, TextGenerator } from '../serving/text-generation.js';
import {
  UsageError,
  adapterDir,
  configOption,
  homeOption,
  integer,
  modelOption,
  positiveNumber,
  required,
  say,
} from './options.js';

/** Where a device records what it sent to a cloud. */
export function cloudCallLogFile(home: string): string {
  return path.join(home, 'cloud-calls.jsonl');
}

const COUNTRIES = new Set<string>(getCountries());

function regionList(value: string): CountryCode[] {
  const regions = value.split(',').map((r) => r.trim().toUpperCase());
  const unknown = regions.filter((r) => !COUNTRIES.has(r));
  if (unknown.length > 0)
    throw new InvalidArgumentError(`unknown region ${unknown.join(',')} (ISO 3166 codes such as US, GB, DE)`);
  return regions as CountryCode[];
}

function termList(value: string): string[] {
  return value
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t.length > 0);
}

function cloudUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError('expected the base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError('expected an http(s) URL');
  return url.href.replace(/\/$/, '');
}

/** `name=dir` pairs: adapters served under those model ids. */
function adapterList(value: string): AdapterSource[] {
  return value.split(',').map((pair) => {
    const at = pair.indexOf('=');
    if (at <= 0) throw new InvalidArgumentError(`expected NAME=DIR, got ${pair}`);
    const id = pair.slice(0, at).trim();
    if (!/^[\w.:-]{1,64}$/.test(id)) throw new InvalidArgumentError(`model id ${id}: letters, digits, . _ : - only`);
    return { id, dir: adapterDir(pair.slice(at + 1).trim()) };
  });
}

export const privacyOption = () =>
  new Option('--privacy <policy>', 'what a cloud call with personal data does: block, redact or allow')
    .env('FLOE_EDGE_PRIVACY')
    .choices(PRIVACY_POLICIES)
    .default<PrivacyPolicy>('redact');
const termsOption = () =>
  new Option('--private-terms <list>', 'comma-separated words the guard treats as private')
    .env('FLOE_EDGE_PRIVATE_TERMS')
    .argParser(termList);
const regionsOption = () =>
  new Option('--phone-regions <list>', 'regions whose national phone formats are recognised (+ numbers always are)')
    .env('FLOE_EDGE_PHONE_REGIONS')
    .argParser(regionList)
    .default(['US', 'GB'] as CountryCode[]);
export const cloudUrlOption = () =>
  new Option('--cloud-url <url>', 'OpenAI-compatible base URL of the cloud LLM, e.g. http://127.0.0.1:8000/v1')
    .env('FLOE_EDGE_CLOUD_URL')
    .argParser(cloudUrl);
export const cloudKeyOption = () => new Option('--cloud-key <key>', "the cloud's API key").env('FLOE_EDGE_CLOUD_KEY');
export const cloudModelOption = () =>
  new Option('--cloud-model <id>', 'the model to ask the cloud for').env('FLOE_EDGE_CLOUD_MODEL').default('floe-cloud');
export const cloudTimeoutOption = () =>
  new Option('--cloud-timeout-ms <ms>', 'a cloud call quiet this long counts as failed')
    .env('FLOE_EDGE_CLOUD_TIMEOUT_MS')
    .argParser(integer(1, 600_000))
    .default(2000);
const helpCallsOption = () =>
  new Option('--help-calls <n>', 'calls the help tag may make per window; then the edge answers itself')
    .env('FLOE_EDGE_HELP_CALLS')
    .argParser(integer(0, 1_000_000))
    .default(30);
const helpWindowOption = () =>
  new Option('--help-window-sec <s>', 'the window of --help-calls')
    .env('FLOE_EDGE_HELP_WINDOW_SEC')
    .argParser(positiveNumber)
    .default(60);
const fusionOption = () =>
  new Option(
    '--fusion <mode>',
    'edge alone, edge fused with the cloud (entropy, linear, product, proxy), or cloud (default: entropy with a cloud, else edge)',
  )
    .env('FLOE_EDGE_FUSION')
    .choices(GENERATION_MODES);
const deadlineOption = () =>
  new Option('--deadline-ms <ms>', 'longest a byte waits for the cloud when fusing')
    .env('FLOE_EDGE_DEADLINE_MS')
    .argParser(integer(1, 60_000))
    .default(25);

interface InferenceSettings {
  home: string;
  model?: string | undefined;
  cloudUrl?: string | undefined;
  cloudKey?: string | undefined;
  cloudModel: string;
  cloudTimeoutMs: number;
  fusion?: GenerationMode | undefined;
  privacy: PrivacyPolicy;
  privateTerms?: string[] | undefined;
  phoneRegions: CountryCode[];
  helpCalls: number;
  helpWindowSec: number;
}

async function textGenerator(
  o: InferenceSettings,
  adapters: AdapterSource[],
): Promise<{ generator: TextGenerator; mode: GenerationMode }> {
  const models = await EdgeModels.open({ modelDir: required(o.model, '--model'), adapters });
  const cloud = o.cloudUrl
    ? new CloudClient({
        baseURL: o.cloudUrl,
        apiKey: o.cloudKey ?? 'none',
        model: o.cloudModel,
        timeoutMs: o.cloudTimeoutMs,
      })
    : undefined;
  const mode = o.fusion ?? (cloud ? 'entropy' : 'edge');
  if (mode !== 'edge' && !cloud) throw new UsageError(`--fusion ${mode} needs a cloud: give --cloud-url`);
  const generator = new TextGenerator(
    models,
    cloud,
    { terms: o.privateTerms, phoneRegions: o.phoneRegions, log: new CloudCallLog(cloudCallLogFile(o.home)) },
    { budget: new TokenBucket(o.helpCalls, o.helpWindowSec) },
  );
  return { generator, mode };
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A line longer than this is refused (the guard's work grows with it). */
const MAX_SCAN_LINE = 4 * 1024 * 1024;

export function addInferenceCommands(program: Command): void {
  program
    .command('scan')
    .description(
      'the privacy guard on JSON lines: reads {"text": ...} per line on stdin, writes {"pii", "kinds", "redacted"} per line',
    )
    .addOption(homeOption())
    .addOption(configOption())
    .option('--findings', 'also write each finding: kind, rule, start, end (UTF-16 offsets)')
    .addOption(termsOption())
    .addOption(regionsOption())
    .action(async (o) => {
      const guardOptions = { policy: 'redact' as const, terms: o.privateTerms, phoneRegions: o.phoneRegions };
      const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
      let number = 0;
      let errors = 0;
      for await (const line of lines) {
        number++;
        if (line.trim() === '') continue;
        let text: unknown;
        try {
          if (line.length > MAX_SCAN_LINE) throw new Error(`longer than ${MAX_SCAN_LINE} characters`);
          const value = JSON.parse(line) as unknown;
          text =
            typeof value === 'object' && value !== null && !Array.isArray(value)
              ? (value as { text?: unknown }).text
              : undefined;
          if (typeof text !== 'string') throw new Error('expected an object with a string "text"');
        } catch (error) {
          errors++;
          const message = `line ${number}: ${(error as Error).message}`;
          process.stderr.write(`floe-edge scan: ${message}\n`);
          say(JSON.stringify({ error: message }));
          continue;
        }
        // each line on its own: placeholders numbered from 1
        const result = new PrivacyGuard(guardOptions).scan(text);
        say(
          JSON.stringify({
            pii: result.pii,
            kinds: result.kinds,
            redacted: result.redacted,
            ...(o.findings
              ? { findings: result.findings.map(({ kind, rule, start, end }) => ({ kind, rule, start, end })) }
              : {}),
          }),
        );
      }
      if (errors > 0) process.exitCode = 1;
    });

  program
    .command('generate')
    .description('answer a prompt on the device, streamed to the terminal (the prompt from --prompt or stdin)')
    .addOption(modelOption())
    .addOption(homeOption())
    .addOption(configOption())
    .option('--prompt <text>', 'the prompt (default: standard input)')
    .addOption(new Option('--adapter <dir>', 'a PEFT adapter directory').argParser(adapterDir))
    .addOption(new Option('--job <id>', "this device's personalized adapter of a job").conflicts('adapter'))
    .addOption(new Option('--max-tokens <n>', 'bytes of answer at most').argParser(integer(1, 65536)).default(128))
    .addOption(
      new Option('--temperature <t>', '0 is greedy')
        .argParser((v) => (v.trim() === '0' ? 0 : positiveNumber(v)))
        .default(0),
    )
    .addOption(new Option('--top-p <p>', 'nucleus sampling').argParser(unitInterval).default(1))
    .addOption(new Option('--seed <n>', 'sampling seed').argParser(integer(0)).default(0))
    .addOption(new Option('--stop <text>', 'stop at this text (repeatable)').argParser(collect).default([] as string[]))
    .option('--stats', 'print how the answer was made on stderr')
    .addOption(cloudUrlOption())
    .addOption(cloudKeyOption())
    .addOption(cloudModelOption())
    .addOption(cloudTimeoutOption())
    .addOption(helpCallsOption())
    .addOption(helpWindowOption())
    .addOption(fusionOption())
    .addOption(deadlineOption())
    .addOption(privacyOption())
    .addOption(termsOption())
    .addOption(regionsOption())
    .action(async (o) => {
      const adapters: AdapterSource[] = [];
      if (o.adapter) adapters.push({ id: 'adapter', dir: o.adapter });
      if (o.job) {
        const dir = existingAdapterDir(new DeviceStore(o.home).adapterDir(o.job));
        if (!dir) throw new UsageError(`no personalized adapter of job ${o.job} in ${o.home}`);
        adapters.push({ id: 'adapter', dir });
      }
      const prompt = o.prompt ?? (process.stdin.isTTY ? undefined : await readStdin());
      if (prompt === undefined || prompt === '')
        throw new UsageError('give --prompt TEXT or a prompt on standard input');
      const { generator, mode } = await textGenerator(o, adapters);
      const started = performance.now();
      try {
        const pieces = generator.generate({
          model: adapters.length > 0 ? 'adapter' : generator.models.baseId,
          prompt,
          maxTokens: o.maxTokens,
          temperature: o.temperature,
          topP: o.topP,
          stop: o.stop,
          seed: o.seed,
          mode,
          policy: o.privacy,
          deadlineMs: o.deadlineMs,
        });
        for (;;) {
          const next = await pieces.next();
          if (next.done) {
            process.stdout.write('\n');
            if (o.stats) {
              const seconds = (performance.now() - started) / 1000;
              const out = next.value;
              process.stderr.write(
                `${mode}, privacy ${o.privacy}: ${out.bytes} bytes in ${seconds.toFixed(2)} s (${(out.bytes / seconds).toFixed(0)} bytes/s), ` +
                  `answered by ${out.answeredBy}, finish ${out.finish}` +
                  (out.fused
                    ? `, ${out.fused.fused} bytes fused, ${out.fused.fellBack} fell back to the edge, ${out.fused.blocked} kept on the edge by the guard`
                    : '') +
                  (out.blockedCalls > 0 ? `, ${out.blockedCalls} cloud call(s) blocked by the privacy guard` : '') +
                  '\n',
              );
            }
            break;
          }
          process.stdout.write(next.value);
        }
      } finally {
        await generator.models.release();
      }
    });

  program
    .command('serve')
    .description(
      "an OpenAI-compatible endpoint for apps: this device's base model and personalized adapters, fused with the cloud",
    )
    .addOption(modelOption())
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(new Option('--host <host>', 'address to listen on').env('FLOE_EDGE_SERVE_HOST').default('127.0.0.1'))
    .addOption(
      new Option('--port <port>', 'port (0: any free one)')
        .env('FLOE_EDGE_SERVE_PORT')
        .argParser(integer(0, 65535))
        .default(8088),
    )
    .addOption(
      new Option('--api-keys <keys>', 'comma-separated keys apps must present; unset: none').env(
        'FLOE_EDGE_SERVE_API_KEYS',
      ),
    )
    .addOption(
      new Option(
        '--adapters <list>',
        'more adapters to serve, as NAME=DIR pairs (personalized adapters in HOME are served as job-ID)',
      )
        .env('FLOE_EDGE_ADAPTERS')
        .argParser(adapterList),
    )
    .addOption(
      new Option('--max-waiting <n>', 'requests waiting for the model before 429')
        .argParser(integer(0, 10_000))
        .default(16),
    )
    .addOption(cloudUrlOption())
    .addOption(cloudKeyOption())
    .addOption(cloudModelOption())
    .addOption(cloudTimeoutOption())
    .addOption(helpCallsOption())
    .addOption(helpWindowOption())
    .addOption(fusionOption())
    .addOption(deadlineOption())
    .addOption(privacyOption())
    .addOption(termsOption())
    .addOption(regionsOption())
    .action(async (o) => {
      const store = new DeviceStore(o.home);
      const personal = Object.keys(store.state().jobs)
        .map((job) => ({ id: `job-${job}`, dir: store.adapterDir(job) }))
        .filter((a) => existingAdapterDir(a.dir) !== undefined);
      const { generator, mode } = await textGenerator(o, [...personal, ...(o.adapters ?? [])]);
      const server = await startEdgeServer(generator, {
        host: o.host,
        port: o.port,
        apiKeys: termList(o.apiKeys ?? ''),
        defaults: { mode, policy: o.privacy, deadlineMs: o.deadlineMs },
        maxWaiting: o.maxWaiting,
      });
      say(
        `floe-edge serve: ${generator.models
          .list()
          .map((m) => m.id)
          .join(', ')} on ${server.url}/v1 ` +
          `(${mode}${generator.cloud ? ` with ${generator.cloud.model}` : ''}, privacy ${o.privacy}); cloud calls logged in ${cloudCallLogFile(o.home)}`,
      );
      await new Promise<void>((resolve) => {
        for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => resolve());
      });
      await server.close();
      await generator.models.release();
    });
}

function unitInterval(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !(n > 0 && n <= 1)) throw new InvalidArgumentError('expected a number in (0, 1]');
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** The directory if it holds an adapter. */
function existingAdapterDir(dir: string): string | undefined {
  try {
    return adapterDir(dir);
  } catch {
    return undefined;
  }
}
