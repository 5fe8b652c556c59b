/**
 * pnpm partition [--task speech|email|arithmetic] [--clients 8] [--seed 0] [--out data]
 *
 * Writes each simulated client's private partition of a task as a device data directory
 * (OUT/<client id>/{floe-data.json, train/, test/}), ready for `floe-edge join --data`. Refuses
 * partitions whose held-out items the checkpoints saw in pretraining (they were pretrained on seed 0).
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { PartitionError, TASKS, type TaskName, federationPartition, writeDataDir } from '@floe/tasks';

const usage = 'usage: pnpm partition [--task speech|email|arithmetic] [--clients N] [--seed N] [--out DIR]';
let values;
try {
  ({ values } = parseArgs({
    options: {
      task: { type: 'string', default: 'speech' },
      clients: { type: 'string', default: '8' },
      seed: { type: 'string', default: '0' },
      out: { type: 'string', default: 'data' },
      help: { type: 'boolean', short: 'h' },
    },
  }));
} catch (error) {
  console.error(`${(error as Error).message}\n${usage}`);
  process.exit(2);
}
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const clients = Number(values.clients);
const seed = Number(values.seed);
if (
  !(TASKS as readonly string[]).includes(values.task) ||
  !Number.isInteger(clients) ||
  clients < 1 ||
  !Number.isInteger(seed) ||
  seed < 0
) {
  console.error(usage);
  process.exit(2);
}
try {
  const partition = federationPartition(values.task as TaskName, { seed, clients, pretrainSeed: 0 });
  for (const client of partition.clients.slice(0, clients)) {
    const dir = path.resolve(values.out, client.id);
    writeDataDir(dir, client);
    const train = client.train.examples?.length ?? client.train.documents.length;
    console.log(`${client.id}: ${train} training ${client.train.examples ? 'examples' : 'documents'} -> ${dir}`);
  }
} catch (error) {
  if (!(error instanceof PartitionError)) throw error;
  console.error(error.message);
  process.exit(1);
}
