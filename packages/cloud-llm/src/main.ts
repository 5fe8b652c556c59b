#!/usr/bin/env node
/**
 * floe-cloud: the cloud LLM stand-in, an OpenAI-compatible completions server over a checkpoint.
 * Every option also reads an environment variable (shown by --help); a wrong value exits with code 2.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from '@commander-js/extra-typings';
import { DEFAULT_CLOUD_CONFIG, startCloud } from './app.js';

function number(min: number, max: number, integer = false) {
  return (value: string): number => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new InvalidArgumentError(`expected ${integer ? 'an integer' : 'a number'} from ${min} to ${max}`);
    }
    return n;
  };
}

function checkpointDir(value: string): string {
  const dir = path.resolve(value);
  for (const file of ['config.json', 'model.safetensors']) {
    if (!existsSync(path.join(dir, file))) throw new InvalidArgumentError(`${dir} has no ${file}`);
  }
  return dir;
}

const d = DEFAULT_CLOUD_CONFIG;
const program = new Command('floe-cloud')
  .description('OpenAI-compatible cloud LLM stand-in (completions, chat, logprobs, streaming) over a Floe checkpoint')
  .addOption(
    new Option('--model <dir>', 'checkpoint directory')
      .env('FLOE_CLOUD_MODEL')
      .default(d.modelDir)
      .argParser(checkpointDir),
  )
  .addOption(new Option('--name <id>', 'model id clients ask for').env('FLOE_CLOUD_MODEL_NAME').default(d.modelName))
  .addOption(new Option('--host <host>', 'address to listen on').env('FLOE_CLOUD_HOST').default(d.host))
  .addOption(
    new Option('--port <port>', 'port (0: any free one)')
      .env('FLOE_CLOUD_PORT')
      .default(d.port)
      .argParser(number(0, 65535, true)),
  )
  .addOption(new Option('--api-keys <keys>', 'comma-separated bearer keys; unset: no auth').env('FLOE_CLOUD_API_KEYS'))
  .addOption(
    new Option('--max-batch <n>', 'sequences decoded together')
      .env('FLOE_CLOUD_MAX_BATCH')
      .default(d.maxBatch)
      .argParser(number(1, 256, true)),
  )
  .addOption(
    new Option('--max-waiting <n>', 'queued sequences before 429')
      .env('FLOE_CLOUD_MAX_WAITING')
      .default(d.maxWaiting)
      .argParser(number(0, 100000, true)),
  )
  .addOption(
    new Option('--threads <n>', 'ONNX Runtime intra-op threads')
      .env('FLOE_CLOUD_THREADS')
      .default(d.threads)
      .argParser(number(1, 64, true)),
  )
  .addOption(
    new Option('--latency-ms <ms>', 'added latency per request')
      .env('FLOE_CLOUD_LATENCY_MS')
      .default(0)
      .argParser(number(0, 600000)),
  )
  .addOption(
    new Option('--jitter-ms <ms>', 'uniform extra latency')
      .env('FLOE_CLOUD_JITTER_MS')
      .default(0)
      .argParser(number(0, 600000)),
  )
  .addOption(
    new Option('--stream-stall-ms <ms>', 'streamed answers go quiet this long after their headers')
      .env('FLOE_CLOUD_STREAM_STALL_MS')
      .default(0)
      .argParser(number(0, 600000)),
  )
  .addOption(
    new Option('--error-rate <share>', 'share of requests failed on purpose')
      .env('FLOE_CLOUD_ERROR_RATE')
      .default(0)
      .argParser(number(0, 1)),
  )
  .addOption(
    new Option('--error-status <code>', 'status of injected failures')
      .env('FLOE_CLOUD_ERROR_STATUS')
      .default(500)
      .argParser(number(400, 599, true)),
  )
  .addOption(
    new Option('--request-log <file>', "append every request's prompt or messages to this JSON-lines file").env(
      'FLOE_CLOUD_REQUEST_LOG',
    ),
  )
  .addOption(
    new Option('--log-level <level>', 'fastify log level')
      .env('FLOE_CLOUD_LOG_LEVEL')
      .default(d.logLevel)
      .choices(['fatal', 'error', 'warn', 'info', 'debug']),
  )
  .showHelpAfterError()
  .action(async (options) => {
    const server = await startCloud({
      modelDir: options.model,
      modelName: options.name,
      host: options.host,
      port: options.port,
      apiKeys: (options.apiKeys ?? '')
        .split(',')
        .map((k) => k.trim())
        .filter(Boolean),
      maxBatch: options.maxBatch,
      maxWaiting: options.maxWaiting,
      threads: options.threads,
      logLevel: options.logLevel,
      requestLog: options.requestLog,
      faults: {
        latencyMs: options.latencyMs,
        jitterMs: options.jitterMs,
        errorRate: options.errorRate,
        errorStatus: options.errorStatus,
        streamStallMs: options.streamStallMs,
      },
    });
    console.log(`floe-cloud: ${options.name} (${options.model}) listening on ${server.url}`);
    let stopping = false;
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.on(signal, () => {
        if (stopping) return;
        stopping = true;
        server.close().then(
          () => process.exit(0),
          (error: unknown) => {
            console.error(error);
            process.exit(1);
          },
        );
      });
    }
  });

program.exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2));
await program.parseAsync().catch((error: unknown) => {
  console.error(`floe-cloud: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
