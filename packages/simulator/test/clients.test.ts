/** A simulation's clients: mixing moves training data between a task's clients only, and leaks are refused. */
import { describe, expect, it } from 'vitest';
import { type ClientData, type Split, taskPartition } from '@floe/tasks';
import { checkHeldOut, simulationClients } from '../src/index.js';

const plan = {
  tasks: ['email', 'arithmetic'] as const,
  clientsPerTask: 3,
  seed: 0,
  pretrainSeed: 0,
  heldOutBytes: 1024,
};
const prompts = (s: Split) => new Set(s.examples?.map((e) => e.prompt));

describe('simulationClients', () => {
  it('keeps the partition as it is without mixing, and checks every held-out item', () => {
    const { clients, heldOut } = simulationClients({ ...plan, tasks: [...plan.tasks], mix: 0 });
    const partition = taskPartition('email', { seed: 0, clients: 3 });
    expect(clients.map((c) => c.id)).toEqual([
      'email-0',
      'email-1',
      'email-2',
      'arithmetic-0',
      'arithmetic-1',
      'arithmetic-2',
    ]);
    expect(clients[0]!.train.examples).toEqual(partition.clients[0]!.train.examples);
    expect(heldOut).toEqual({ checked: 3 * 40 + 3 * 100, leaks: [] });
  });

  it("draws the mixed share from the same task's other clients, keeping each client's size", () => {
    const own = simulationClients({ ...plan, tasks: [...plan.tasks], mix: 0 }).clients;
    const mixed = simulationClients({ ...plan, tasks: [...plan.tasks], mix: 0.5 }).clients;
    for (const [i, client] of mixed.entries()) {
      const before = own[i]!;
      const mine = prompts(before.train);
      const sameTask = new Set(
        own.filter((c) => c.task === client.task && c.id !== client.id).flatMap((c) => [...prompts(c.train)]),
      );
      const examples = client.train.examples!;
      expect(examples.length).toBe(before.train.examples!.length);
      const kept = examples.filter((e) => mine.has(e.prompt)).length;
      const borrowed = examples.filter((e) => !mine.has(e.prompt) && sameTask.has(e.prompt)).length;
      expect(kept + borrowed).toBe(examples.length);
      expect(kept / examples.length).toBeCloseTo(0.5, 1);
      expect(client.test).toEqual(before.test);
    }
  });

  it("finds a held-out item in any training data, the client's own included", () => {
    const { clients } = simulationClients({ ...plan, tasks: ['arithmetic'], mix: 0 });
    const leaked: ClientData[] = clients.map((c) => ({
      ...c,
      train: { ...c.train, examples: [...c.train.examples!] },
    }));
    const victim = leaked[1]!.test.examples![5]!;
    leaked[1]!.train.examples!.push(victim);
    leaked[2]!.train.examples!.push(leaked[0]!.test.examples![0]!);
    const found = checkHeldOut(leaked, new Map());
    expect(found.leaks.map((l) => [l.clientId, l.seenBy])).toEqual([
      ['arithmetic-0', 'arithmetic-2'],
      ['arithmetic-1', 'arithmetic-1'],
    ]);
  });

  it('samples held-out prose to whole characters within the byte budget', () => {
    const { clients } = simulationClients({ ...plan, tasks: ['speech'], clientsPerTask: 2, mix: 0 });
    for (const c of clients) {
      const bytes = c.test.documents.reduce((n, d) => n + Buffer.byteLength(d), 0);
      expect(bytes).toBeLessThanOrEqual(1024);
      expect(bytes).toBeGreaterThan(1000);
      expect(c.test.documents.join('')).not.toContain('\uFFFD');
    }
  });
});
