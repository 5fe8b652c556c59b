/**
 * The device's link to the server takes whatever the server sends: an unsolicited refusal (here
 * `replaced`, sent when another connection of the same identity takes over) reaches `server_error`
 * listeners, and with no listener at all it must not throw out of the socket's handler.
 */
import { describe, expect, it } from 'vitest';
import { ServerConnection, enroll } from '@floe/edge-client';
import { DEFAULT_PROFILE } from '@floe/simulator';
import { JOIN_TOKEN, startTestServer } from '../server/helpers.js';

const PLAN = { rank: 4, targetModules: ['q_proj', 'v_proj'] };

describe('ServerConnection', () => {
  it('survives an unsolicited error with no listener, and reports it to listeners', async () => {
    const test = await startTestServer();
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => uncaught.push(error);
    process.on('uncaughtException', onUncaught);
    try {
      const { credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
      const open = () =>
        ServerConnection.open(test.url, credential, { profile: DEFAULT_PROFILE, plan: PLAN, reconnect: false });
      const silent = await open();
      const received = silent.traffic.framesReceived;
      const listened = await open();
      const codes: string[] = [];
      listened.on('server_error', (error) => codes.push(error.code));
      await expect.poll(() => silent.traffic.framesReceived, { timeout: 5000 }).toBeGreaterThan(received);
      await expect.poll(() => silent.connected, { timeout: 5000 }).toBe(false);

      const third = await open();
      await expect.poll(() => codes, { timeout: 5000 }).toEqual(['replaced']);
      expect(uncaught).toEqual([]);
      for (const c of [silent, listened, third]) c.close();
    } finally {
      process.off('uncaughtException', onUncaught);
      await test.close();
    }
  });
});
