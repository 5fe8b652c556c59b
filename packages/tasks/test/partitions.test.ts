import { describe, expect, it } from 'vitest';
import {
  PartitionError,
  TASKS,
  arithmeticBucket,
  federationPartition,
  heldOutLeaks,
  stateOfTheUnion,
  taskPartition,
} from '../src/index.js';

describe.each(TASKS)('%s partitions', (task) => {
  const a = taskPartition(task, { seed: 7 });

  it('are identical for the same seed and differ for another', () => {
    const again = taskPartition(task, { seed: 7 });
    expect(again).toEqual(a);
    const other = taskPartition(task, { seed: 8 });
    expect(other.clients.map((c) => c.train.documents)).not.toEqual(a.clients.map((c) => c.train.documents));
  });

  it('give every client non-empty private train and test splits', () => {
    expect(a.clients.length).toBe(8);
    for (const client of a.clients) {
      expect(client.train.documents.length).toBeGreaterThan(0);
      expect(client.test.documents.length).toBeGreaterThan(0);
    }
    expect(a.general.train.documents.length).toBeGreaterThan(0);
    expect(a.general.test.documents.length).toBeGreaterThan(0);
  });

  it('never put a client document into the general corpus, nor general test text into general train', () => {
    const general = new Set([...a.general.train.documents, ...a.general.test.documents]);
    const generalTrain = new Set(a.general.train.documents);
    for (const client of a.clients) {
      for (const doc of [...client.train.documents, ...client.test.documents]) expect(general.has(doc)).toBe(false);
      const own = new Set(client.train.documents);
      for (const doc of client.test.documents) expect(own.has(doc)).toBe(false);
    }
    for (const doc of a.general.test.documents) expect(generalTrain.has(doc)).toBe(false);
  });
});

describe('what makes a client private', () => {
  it('speech: no address of a client president is in the general corpus, not even as a passage', () => {
    const p = taskPartition('speech', { seed: 3 });
    const clientPresidents = new Set(p.clients.map((c) => c.profile['president']));
    const general = [...p.general.train.documents, ...p.general.test.documents];
    for (const address of stateOfTheUnion().filter((x) => clientPresidents.has(x.president))) {
      const passage = address.text.slice(1000, 1200);
      expect(general.some((doc) => doc.includes(passage))).toBe(false);
    }
  });

  it('email: each message belongs to one place only', () => {
    const p = taskPartition('email', { seed: 3 });
    const seen = new Map<string, string>();
    const place = (where: string, docs: string[]) =>
      docs.forEach((d) => {
        if (seen.has(d) && seen.get(d) !== where) throw new Error(`message in ${seen.get(d)} and ${where}`);
        seen.set(d, where);
      });
    p.clients.forEach((c) => place(c.id, [...c.train.documents, ...c.test.documents]));
    place('general', [...p.general.train.documents, ...p.general.test.documents]);
    expect(seen.size).toBeGreaterThan(4000);
  });

  it('arithmetic: clients, general train and general test draw from disjoint problem buckets', () => {
    const p = taskPartition('arithmetic', { seed: 3 });
    for (const c of p.clients) for (const e of c.train.examples!) expect(arithmeticBucket(e.prompt)).toBe('client');
    for (const e of p.general.train.examples!) expect(arithmeticBucket(e.prompt)).toBe('general-train');
    for (const e of p.general.test.examples!) expect(arithmeticBucket(e.prompt)).toBe('general-test');
    for (const e of p.general.test.examples!.slice(0, 200)) expect(String(eval(e.prompt.slice(0, -1)))).toBe(e.answer);
  });

  it('email examples end in the label the message has', () => {
    const p = taskPartition('email', { seed: 3 });
    const labels = p.clients.flatMap((c) => c.train.examples!.map((e) => e.answer));
    expect(new Set(labels)).toEqual(new Set([' spam', ' ham']));
    const spamShare = (i: number) => p.clients[i]!.train.examples!.filter((e) => e.answer === ' spam').length / 160;
    expect(spamShare(0)).toBeLessThan(spamShare(7));
  });
});

describe('held-out data is never seen in training', () => {
  // the committed checkpoints were pretrained on the seed-0 partition with its default 8 clients
  const pretrainedOn = Object.fromEntries(TASKS.map((t) => [t, taskPartition(t, { seed: 0 }).general.train]));

  it.each(TASKS)(
    '%s: no client holds out what another client or the pretraining corpus trains on (1-8 clients)',
    (task) => {
      for (let clients = 1; clients <= 8; clients++) {
        const partition = federationPartition(task, { seed: 0, clients, pretrainSeed: 0 });
        expect(partition.clients).toHaveLength(clients);
        expect(heldOutLeaks(partition, pretrainedOn[task])).toEqual([]);
      }
    },
  );

  it("arithmetic: no client trains on another client's test problems, whatever the seed and client count", () => {
    for (const seed of [0, 1, 5])
      for (const clients of [2, 6, 8, 12]) {
        const partition = taskPartition('arithmetic', { seed, clients });
        const held = new Map(partition.clients.flatMap((c) => c.test.examples!.map((e) => [e.prompt, c.id] as const)));
        for (const c of partition.clients)
          for (const e of c.train.examples!) expect(held.get(e.prompt) ?? c.id, `${e.prompt} in ${c.id}`).toBe(c.id);
        expect(heldOutLeaks(partition, pretrainedOn['arithmetic'])).toEqual([]);
      }
  });

  it('refuses a federation whose seed or client count would test clients on pretraining data', () => {
    // another seed picks other presidents and mailboxes, some of them in the seed-0 pretraining corpus
    expect(() => federationPartition('speech', { seed: 1, clients: 4, pretrainSeed: 0 })).toThrow(PartitionError);
    expect(() => federationPartition('email', { seed: 1, clients: 4, pretrainSeed: 0 })).toThrow(/seen by pretraining/);
    // more clients than the pretraining partition had reach into its general corpus
    expect(() => federationPartition('speech', { seed: 0, clients: 12, pretrainSeed: 0 })).toThrow(
      /pretrained on the seed-0/,
    );
    expect(() => federationPartition('email', { seed: 0, clients: 12, pretrainSeed: 0 })).toThrow(PartitionError);
    // arithmetic's problem buckets never meet, whatever the seed
    expect(heldOutLeaks(federationPartition('arithmetic', { seed: 1, clients: 12, pretrainSeed: 0 }))).toEqual([]);
  });
});
