/**
 * The clients of a simulation: each task's non-IID partition (clients per task, seeded), optionally made
 * more alike by mixing in training data of the task's other clients, the held-out prose sampled to a
 * fixed size, and a check, by overlap, that no held-out item is in any client's training data (its own
 * included) or in the corpus the checkpoint was pretrained on.
 */
import { Random } from '@floe/shared';
import { type ClientData, type Split, type TaskName, federationPartition, taskPartition } from '@floe/tasks';

export interface ClientPlan {
  tasks: readonly TaskName[];
  clientsPerTask: number;
  seed: number;
  /** The seed of the partition the checkpoint was pretrained on. */
  pretrainSeed: number;
  /**
   * Share of each client's training data replaced by training data of the task's other clients: 0 keeps
   * the partition's non-IID split, 1 makes the clients of a task alike.
   */
  mix: number;
  /** Held-out prose kept per client (bytes, whole characters). */
  heldOutBytes: number;
  /** Held-out examples kept per client (the first ones; default all). */
  heldOutExamples?: number;
}

export interface HeldOutCheck {
  /** Held-out items compared (documents or example prompts, before sampling). */
  checked: number;
  /** Held-out items found in training data, with who trains on them. */
  leaks: { clientId: string; item: string; seenBy: string }[];
}

const items = (split: Split) => split.examples?.map((e) => e.prompt) ?? split.documents;

/** `own` with a share `mix` of it (by examples, or by characters of prose) replaced by items of `others`. */
function mixed(own: Split, others: readonly Split[], mix: number, random: Random): Split {
  if (mix === 0 || others.length === 0) return own;
  if (own.examples) {
    const pool = random.shuffled(others.flatMap((s) => s.examples ?? []));
    const keep = random.shuffled(own.examples).slice(0, Math.round(own.examples.length * (1 - mix)));
    const examples = [...keep, ...pool.slice(0, own.examples.length - keep.length)];
    return { examples, documents: examples.map((e) => `${e.prompt}${e.answer}\n`) };
  }
  const size = (docs: readonly string[]) => docs.reduce((n, d) => n + d.length, 0);
  const total = size(own.documents);
  const take = (docs: readonly string[], budget: number) => {
    const out: string[] = [];
    for (const doc of docs) {
      if (budget <= 0) break;
      out.push(doc.slice(0, budget));
      budget -= doc.length;
    }
    return out;
  };
  const kept = take(random.shuffled(own.documents), Math.round(total * (1 - mix)));
  const borrowed = take(random.shuffled(others.flatMap((s) => s.documents)), total - size(kept));
  return { documents: [...kept, ...borrowed] };
}

/** Held-out prose cut to `bytes` (whole characters, documents in order), examples to the first `examples`. */
function sampledTest(test: Split, bytes: number, examples = Infinity): Split {
  if (test.examples) {
    const kept = test.examples.slice(0, examples);
    return { examples: kept, documents: test.documents.slice(0, kept.length) };
  }
  const documents: string[] = [];
  let left = bytes;
  for (const doc of test.documents) {
    if (left <= 0) break;
    const encoded = new TextEncoder().encode(doc);
    let end = Math.min(encoded.length, left);
    while (end < encoded.length && end > 0 && ((encoded[end] as number) & 0xc0) === 0x80) end--;
    documents.push(new TextDecoder().decode(encoded.subarray(0, end)));
    left -= end;
  }
  return { documents };
}

/** Every held-out item of `clients` that a client's training data or the pretraining corpus holds. */
export function checkHeldOut(clients: readonly ClientData[], pretrainedOn: ReadonlyMap<TaskName, Split>): HeldOutCheck {
  const trainedBy = new Map<string, string>();
  for (const c of clients) for (const item of items(c.train)) trainedBy.set(item, c.id);
  const pretraining = new Set([...pretrainedOn.values()].flatMap(items));
  const leaks: HeldOutCheck['leaks'] = [];
  let checked = 0;
  for (const client of clients) {
    for (const item of items(client.test)) {
      checked++;
      const trainer = trainedBy.get(item);
      if (trainer !== undefined) leaks.push({ clientId: client.id, item: item.slice(0, 80), seenBy: trainer });
      if (pretraining.has(item)) leaks.push({ clientId: client.id, item: item.slice(0, 80), seenBy: 'pretraining' });
    }
  }
  return { checked, leaks };
}

export class HeldOutLeakError extends Error {}

/** The simulation's clients, in task order; throws when a held-out item could have been trained on. */
export function simulationClients(plan: ClientPlan): { clients: ClientData[]; heldOut: HeldOutCheck } {
  if (!(plan.mix >= 0 && plan.mix <= 1)) throw new RangeError(`mix is a share in [0, 1], got ${plan.mix}`);
  const random = new Random(plan.seed + 7);
  const full: ClientData[] = [];
  const pretrainedOn = new Map<TaskName, Split>();
  for (const task of plan.tasks) {
    const partition = federationPartition(task, {
      seed: plan.seed,
      clients: plan.clientsPerTask,
      pretrainSeed: plan.pretrainSeed,
    });
    const own = partition.clients.slice(0, plan.clientsPerTask);
    for (const client of own) {
      const others = own.filter((c) => c !== client).map((c) => c.train);
      full.push({ ...client, train: mixed(client.train, others, plan.mix, random) });
    }
    pretrainedOn.set(task, taskPartition(task, { seed: plan.pretrainSeed }).general.train);
  }
  // checked on the whole held-out splits, before sampling
  const heldOut = checkHeldOut(full, pretrainedOn);
  if (heldOut.leaks.length > 0) {
    const shown = heldOut.leaks
      .slice(0, 3)
      .map((l) => `${l.clientId} holds out ${JSON.stringify(l.item.slice(0, 40))}, trained on by ${l.seenBy}`)
      .join('; ');
    throw new HeldOutLeakError(`${heldOut.leaks.length} held-out item(s) are in training data: ${shown}`);
  }
  return {
    clients: full.map((c) => ({ ...c, test: sampledTest(c.test, plan.heldOutBytes, plan.heldOutExamples) })),
    heldOut,
  };
}
