#!/usr/bin/env node
/**
 * floe-edge: a device of a Floe federation, from the command line.
 *
 * Every option can also come from the environment (FLOE_EDGE_<OPTION>, e.g. FLOE_EDGE_SERVER) or from a
 * JSON config file (`--config FILE`, default HOME/config.json) whose keys are the options' names in
 * camelCase; flags win over the environment, the environment over the file. A wrong value is a usage
 * error: one line on stderr and exit code 2. A failure while running is one line and exit code 1.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Command, CommanderError, Option } from '@commander-js/extra-typings';
import { architectureOf, checkpointSha256, loadAdapter, loadCheckpoint, saveAdapter } from '@floe/model';
import { readDataDir } from '@floe/tasks';
import { cloudCallLogFile, addInferenceCommands } from './cli/inference.js';
import { addOffloadCommands } from './cli/offload.js';
import {
  DEFAULT_MODULES,
  UsageError,
  adapterDir,
  applyConfigFile,
  configOption,
  dataOption,
  describeScore,
  homeOption,
  integer,
  joinTokenOption,
  jsonOption,
  layerList,
  modelOption,
  moduleList,
  positiveNumber,
  profileFor,
  profileOption,
  required,
  say,
  seqLenOption,
  serverOption,
  stamp,
  threadsOption,
  tierOption,
} from './cli/options.js';
import { trustCertificateAuthority } from './connection.js';
import { startDevice, measuredTrainingCost } from './device.js';
import { DeviceStore } from './device-store.js';
import { ensureIdentity } from './federation-client.js';
import { LocalTrainer, initialAdapter } from './local-trainer.js';
import { planRound } from './planner.js';
import { deviceProfile } from './profile.js';
import { CloudCallLog } from './privacy/call-log.js';

function buildProgram(): Command {
  const program = new Command()
    .name('floe-edge')
    .description(
      'A device of a Floe federation: enroll, plan, train on private data, federate, evaluate; answer apps on the device, with the cloud behind a privacy guard.',
    )
    .exitOverride();
  program.configureOutput({ outputError: (text, write) => write(text.split('\n')[0] + '\n') });

  program
    .command('enroll')
    .description('enroll this device at a server once; the credential is kept in HOME')
    .addOption(serverOption())
    .addOption(joinTokenOption())
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(tierOption())
    .addOption(profileOption())
    .action(async (o) => {
      const server = required(o.server, '--server');
      const store = new DeviceStore(o.home);
      const declared = deviceProfile(0, o.tier, profileFor(o.profile));
      const identity = await ensureIdentity(store, server, o.joinToken, declared);
      say(
        identity.enrolled
          ? `enrolled at ${server} as client ${identity.clientId}; identity kept in ${o.home}`
          : `already enrolled at ${server} as client ${identity.clientId}`,
      );
    });

  program
    .command('join')
    .description('join a running job and federate until it ends (Ctrl-C leaves)')
    .addOption(serverOption())
    .addOption(joinTokenOption())
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(modelOption())
    .addOption(dataOption())
    .addOption(tierOption())
    .addOption(profileOption())
    .option('--job <id>', 'the job to join (default: the first running job over this base model)')
    .addOption(threadsOption())
    .addOption(seqLenOption())
    .option('--no-eval-rounds', 'do not score the held-out split each round')
    .action(async (o) => {
      const device = await startDevice({
        serverUrl: required(o.server, '--server'),
        joinToken: o.joinToken,
        home: o.home,
        model: required(o.model, '--model'),
        data: required(o.data, '--data'),
        tier: o.tier,
        profile: profileFor(o.profile),
        job: o.job,
        threads: o.threads,
        seqLen: o.seqLen,
        evaluateRounds: o.evalRounds,
        log: (line) => say(`${stamp()} ${line}`),
      });
      say(`${stamp()} client ${device.clientId} in job ${device.job.id} (${device.job.spec.name})`);
      let leaving = false;
      const leave = (signal: string) => {
        if (leaving) process.exit(130);
        leaving = true;
        say(`${stamp()} ${signal}: leaving (the server keeps this device's identity; join again to rejoin)`);
        void device.stop().then(() => process.exit(130));
      };
      process.once('SIGINT', () => leave('SIGINT'));
      process.once('SIGTERM', () => leave('SIGTERM'));
      const outcome = await device.finished;
      await device.stop();
      say(`${stamp()} job ${outcome.jobId} ${outcome.status}; ${outcome.rounds.length} rounds sent by this device`);
      process.exit(outcome.status === 'completed' ? 0 : 1);
    });

  program
    .command('status')
    .description('what this device holds: identity, jobs, personalized adapters, calibrations, and its cloud calls')
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(jsonOption())
    .addOption(new Option('--last <n>', 'cloud calls to show').argParser(integer(0, 100_000)).default(10))
    .action((o) => {
      const store = new DeviceStore(o.home);
      const identity = store.anyIdentity();
      const jobs = Object.entries(store.state().jobs).map(([id, record]) => ({
        id,
        ...record,
        ...(existsSync(path.join(store.adapterDir(id), 'adapter_config.json'))
          ? { adapter: store.adapterDir(id) }
          : {}),
      }));
      const calibrations = store.cachedKeys().filter((k) => k.startsWith('calibration:')).length;
      const cloudCalls = new CloudCallLog(cloudCallLogFile(o.home)).summary(o.last);
      if (o.json) {
        say(
          JSON.stringify(
            { home: o.home, server: identity?.serverUrl, clientId: identity?.clientId, jobs, calibrations, cloudCalls },
            null,
            2,
          ),
        );
        return;
      }
      say(identity ? `enrolled at ${identity.serverUrl} as client ${identity.clientId}` : 'not enrolled');
      say(`home ${o.home}; ${calibrations} calibration(s) cached`);
      if (jobs.length === 0) say('no jobs yet');
      for (const job of jobs) {
        const figures =
          job.base !== undefined && job.personalized !== undefined
            ? ` | ${job.metric ?? 'metric'} ${job.base.toFixed(4)} (base) -> ${job.personalized.toFixed(4)} (personalized)`
            : '';
        say(
          `job ${job.id}: ${job.status}` +
            (job.lastRound !== undefined ? ` | last round ${job.lastRound}` : '') +
            (job.clusterId !== undefined ? ` | cluster ${job.clusterId}` : '') +
            figures +
            (job.adapter ? ` | adapter ${job.adapter}` : ''),
        );
      }
      const verdicts = Object.entries(cloudCalls.byVerdict)
        .map(([verdict, n]) => `${n} ${verdict}`)
        .join(', ');
      say(`cloud calls: ${cloudCalls.records}${verdicts ? ` (${verdicts})` : ''}; log ${cloudCallLogFile(o.home)}`);
      for (const call of cloudCalls.last) {
        const sent =
          call.sent === null
            ? 'nothing sent'
            : JSON.stringify(call.sent.length > 120 ? `${call.sent.slice(0, 117)}...` : call.sent);
        say(
          `  ${call.at} ${call.route} ${call.verdict} by ${call.policy}${call.kinds.length ? ` [${call.kinds.join(', ')}]` : ''}: ${sent}`,
        );
      }
    });

  program
    .command('plan')
    .description("the rank, layers and micro-batch this device would train, with the planner's estimates")
    .addOption(modelOption())
    .addOption(tierOption())
    .addOption(profileOption())
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(
      new Option('--target-modules <list>', 'modules to adapt')
        .argParser(moduleList)
        .default(moduleList(DEFAULT_MODULES)),
    )
    .addOption(new Option('--max-rank <n>', "the job's largest rank").argParser(integer(1, 256)).default(8))
    .addOption(new Option('--local-steps <n>', 'steps a round').argParser(integer(1, 100000)).default(20))
    .addOption(new Option('--batch-size <n>', 'rows a step').argParser(integer(1, 4096)).default(8))
    .addOption(new Option('--deadline <sec>', "the job's round deadline").argParser(positiveNumber))
    .addOption(threadsOption())
    .addOption(seqLenOption())
    .addOption(jsonOption())
    .action(async (o) => {
      const model = required(o.model, '--model');
      if (o.tier === undefined && o.profile === undefined) throw new UsageError('give --tier NAME or --profile FILE');
      const overrides = profileFor(o.profile);
      const checkpoint = await loadCheckpoint(model);
      const seqLen = Math.min(o.seqLen, checkpoint.config.max_position_embeddings);
      const cost = await measuredTrainingCost(
        new DeviceStore(o.home),
        checkpoint,
        { model, sha256: await checkpointSha256(model), seqLen, threads: o.threads, targetModules: o.targetModules },
        (line) => process.stderr.write(`${line}\n`),
      );
      const profile = deviceProfile(cost.hostGflops, o.tier, overrides);
      const plan = planRound(
        profile,
        architectureOf(checkpoint.config),
        {
          targetModules: o.targetModules,
          maxRank: o.maxRank,
          localSteps: o.localSteps,
          batchSize: o.batchSize,
          roundDeadlineSec: o.deadline,
        },
        cost,
      );
      if (o.json) {
        say(JSON.stringify({ profile, ...plan, calibration: cost }, null, 2));
        return;
      }
      const e = plan.estimates;
      say(`profile: ${JSON.stringify(profile)}`);
      say(
        `plan: rank ${plan.plan.rank}, ${plan.plan.layers ? `layers ${plan.plan.layers.join(',')}` : 'all layers'}, ` +
          `micro-batch ${plan.microBatch}, ${plan.adapterParameters} adapter parameters (limited by ${plan.limitedBy})`,
      );
      say(
        `estimates: round ${e.roundSeconds.toFixed(1)} s (train ${e.trainSeconds.toFixed(1)}, up ${e.uploadSeconds.toFixed(2)}, ` +
          `down ${e.downloadSeconds.toFixed(2)}), peak ${e.peakMemoryMiB.toFixed(0)} MiB, upload ${(e.uploadBytes / 1024).toFixed(1)} KiB, ` +
          `slowdown x${e.slowdown.toFixed(2)}`,
      );
    });

  program
    .command('describe')
    .description("the base model as a job names it: {id, sha256, architecture} (for a job's baseModel)")
    .addOption(modelOption())
    .addOption(configOption())
    .addOption(homeOption())
    .option('--id <name>', 'the id to give it (default: the directory name)')
    .action(async (o) => {
      const model = required(o.model, '--model');
      const { config } = await loadCheckpoint(model);
      const ref = {
        id: o.id ?? path.basename(model),
        sha256: await checkpointSha256(model),
        architecture: architectureOf(config),
      };
      say(JSON.stringify(ref));
    });

  program
    .command('train')
    .description('fine-tune a LoRA adapter on local data only (no server), save it in PEFT layout')
    .addOption(modelOption())
    .addOption(dataOption())
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(new Option('--out <dir>', 'where the adapter goes (default: HOME/adapters/local)'))
    .addOption(
      new Option('--adapter <dir>', 'start from this PEFT adapter instead of a fresh one').argParser(adapterDir),
    )
    .addOption(new Option('--rank <n>', 'LoRA rank of a fresh adapter').argParser(integer(1, 256)).default(8))
    .addOption(new Option('--alpha <n>', 'LoRA alpha of a fresh adapter').argParser(positiveNumber).default(16))
    .addOption(
      new Option('--target-modules <list>', 'modules to adapt')
        .argParser(moduleList)
        .default(moduleList(DEFAULT_MODULES)),
    )
    .addOption(new Option('--layers <list>', 'layers to adapt, e.g. 2,3 (default: all)').argParser(layerList))
    .addOption(new Option('--steps <n>', 'optimizer steps').argParser(integer(1, 1_000_000)).default(60))
    .addOption(new Option('--batch-size <n>', 'rows a step').argParser(integer(1, 4096)).default(8))
    .addOption(new Option('--micro-batch <n>', 'rows a gradient run').argParser(integer(1, 4096)).default(8))
    .addOption(new Option('--lr <rate>', 'learning rate').argParser(positiveNumber).default(5e-4))
    .addOption(new Option('--seed <n>', 'seed of the fresh adapter and the batches').argParser(integer(0)).default(0))
    .addOption(threadsOption())
    .addOption(seqLenOption())
    .action(async (o) => {
      const model = required(o.model, '--model');
      const checkpoint = await loadCheckpoint(model);
      const layers = checkpoint.config.num_hidden_layers;
      if (o.layers?.some((l) => l >= layers))
        throw new UsageError(`--layers: this model has layers 0 to ${layers - 1}`);
      const data = readDataDir(required(o.data, '--data'));
      const start = o.adapter
        ? (await loadAdapter(o.adapter)).adapter
        : initialAdapter(
            checkpoint.config,
            { rank: o.rank, alpha: o.alpha, targetModules: o.targetModules, layers: o.layers },
            o.seed,
          );
      const trainer = new LocalTrainer({
        checkpoint,
        data,
        seqLen: o.seqLen,
        threads: o.threads,
        microBatch: Math.min(o.microBatch, o.batchSize),
      });
      try {
        say(`${stamp()} ${trainer.numExamples} local training examples; ${o.steps} steps of ${o.batchSize} rows`);
        const every = Math.max(1, Math.round(o.steps / 20));
        let window: number[] = [];
        const result = await trainer.train({
          start,
          steps: o.steps,
          batchSize: o.batchSize,
          learningRate: o.lr,
          seed: o.seed,
          onStep: (step, loss) => {
            window.push(loss);
            if ((step + 1) % every === 0 || step + 1 === o.steps) {
              const mean = window.reduce((a, b) => a + b, 0) / window.length;
              say(`${stamp()} step ${step + 1}/${o.steps} | loss ${mean.toFixed(4)}`);
              window = [];
            }
          },
        });
        const out = path.resolve(o.out ?? path.join(new DeviceStore(o.home).dir, 'adapters', 'local'));
        await saveAdapter(out, result.adapter, path.basename(model));
        say(`${stamp()} trained in ${result.seconds.toFixed(1)} s; adapter saved in ${out}`);
        const [base, trained] = [await trainer.evaluate(), await trainer.evaluate(result.adapter)];
        if (base && trained)
          say(`held-out ${base.metric}: ${base.value.toFixed(4)} (base) -> ${trained.value.toFixed(4)}`);
      } finally {
        await trainer.dispose();
      }
    });

  program
    .command('eval')
    .description('score the local test split with the base model or an adapter')
    .addOption(modelOption())
    .addOption(dataOption())
    .addOption(homeOption())
    .addOption(configOption())
    .addOption(new Option('--adapter <dir>', 'a PEFT adapter directory').argParser(adapterDir))
    .addOption(new Option('--job <id>', "this device's personalized adapter of a job").conflicts('adapter'))
    .addOption(seqLenOption())
    .addOption(jsonOption())
    .action(async (o) => {
      const model = required(o.model, '--model');
      const checkpoint = await loadCheckpoint(model);
      const data = readDataDir(required(o.data, '--data'));
      if (!data.test) throw new UsageError(`${o.data ?? ''} has no test/ split to evaluate`);
      let adapter;
      if (o.adapter) adapter = (await loadAdapter(o.adapter)).adapter;
      if (o.job) {
        adapter = await new DeviceStore(o.home).personalAdapter(o.job);
        if (!adapter) throw new UsageError(`no personalized adapter of job ${o.job} in ${o.home}`);
      }
      const trainer = new LocalTrainer({ checkpoint, data, seqLen: o.seqLen });
      try {
        let shown = -1;
        const score = await trainer.evaluate(adapter, (done, total) => {
          const tenth = Math.floor((10 * done) / total);
          if (!o.json && tenth > shown) {
            shown = tenth;
            process.stderr.write(`\r${stamp()} evaluating ${done}/${total}`);
          }
        });
        if (!o.json) process.stderr.write('\n');
        const what = o.adapter ?? (o.job ? `job ${o.job}` : 'base');
        say(o.json ? JSON.stringify({ adapter: what, ...score }) : `${what}: ${describeScore(score)}`);
      } finally {
        await trainer.dispose();
      }
    });

  addInferenceCommands(program);
  addOffloadCommands(program);

  const allKeys = new Set(
    program.commands.flatMap((command) => command.options.map((option) => option.attributeName())),
  );
  program.hook('preAction', (_program, action) => applyConfigFile(action as unknown as Command, allKeys));
  program.hook('preAction', () => {
    // a deployment with its own certificate authority (FLOE_EDGE_CA_FILE): trusted for HTTPS and WSS
    const caFile = process.env['FLOE_EDGE_CA_FILE'];
    if (caFile) trustCertificateAuthority(readFileSync(caFile, 'utf8'));
  });
  return program;
}

async function main(argv = process.argv): Promise<void> {
  const program = buildProgram();
  if (argv.length <= 2) {
    program.outputHelp();
    return;
  }
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      process.exitCode = error.exitCode === 0 ? 0 : 2;
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`floe-edge: ${message.split('\n')[0]}\n`);
    process.exitCode = error instanceof UsageError ? 2 : 1;
    // the device's sockets and sessions may still hold the loop: leave
    process.exit();
  }
}

await main();
