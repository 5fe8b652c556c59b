/**
 * The server (its real entry point, in its own process) under the attacks found when it was tried as an
 * attacker would: each must get a prompt refusal while /healthz keeps answering fast and the process
 * stays small. Figures that matter for the issue are printed; the bounds are the issue's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enroll } from '@floe/edge-client';
import { type ServerProcess, spawnServerProcess } from '@floe/server';
import { PROTOCOL_VERSION, decodeMessage, encodeFrame, encodeMessage } from '@floe/shared';
import { DEFAULT_PROFILE } from '@floe/simulator';
import {
  type HealthWatch,
  type RawSocket,
  binaryFrames,
  joinNamespace,
  rawSocket,
  sendBinaryEvent,
  watchHealth,
} from './attack-tools.js';
import { peakRssMiB } from '../../scripts/lib/process-memory.js';
import { ADMIN_TOKEN, JOIN_TOKEN, type TestStore, testStore } from './helpers.js';

const MiB = 1024 * 1024;
const CLOSED_FOR_SIZE = [1009, 1006, 1005];

async function openAuthenticated(url: string): Promise<RawSocket> {
  const { credential } = await enroll(url, JOIN_TOKEN, DEFAULT_PROFILE);
  const socket = await rawSocket(url, { authorization: `Bearer ${credential}` });
  if ('status' in socket) throw new Error(`upgrade refused with ${socket.status}`);
  await joinNamespace(socket);
  return socket;
}

/** A msgpack array32 of `count` empty maps: one input byte per object the decoder would build. */
function emptyMaps(count: number): Uint8Array {
  const bytes = new Uint8Array(5 + count).fill(0x80);
  bytes[0] = 0xdd;
  new DataView(bytes.buffer).setUint32(1, count);
  return bytes;
}

async function nextErrorCode(socket: RawSocket, timeoutMs = 10_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    for (const frame of binaryFrames(socket)) {
      const message = decodeMessage(frame);
      if (message.type === 'error') return message.code;
    }
    if (Date.now() > until) throw new Error('no error message');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('attacks on the coordination server', () => {
  let server: ServerProcess;
  let store: TestStore;
  let health: HealthWatch;

  beforeAll(async () => {
    store = await testStore();
    server = await spawnServerProcess({
      FLOE_HOST: '127.0.0.1',
      FLOE_PORT: '0',
      ...store.env,
      FLOE_JOIN_TOKEN: JOIN_TOKEN,
      FLOE_ADMIN_TOKEN: ADMIN_TOKEN,
      FLOE_HTTP_RATE_LIMIT_PER_MINUTE: '100000',
      FLOE_HELLO_TIMEOUT_MS: '1000',
    });
    health = watchHealth(server.url);
  });

  afterAll(async () => {
    const watched = (await health.stop()).summary();
    const peak = await peakRssMiB(server.child.pid as number);
    console.log(
      `server under attack: /healthz p99 ${watched.p99Ms.toFixed(1)} ms (max ${watched.maxMs.toFixed(1)}, ` +
        `${watched.samples} samples, ${watched.failures} failed), peak RSS ${peak.toFixed(0)} MiB`,
    );
    server.child.kill('SIGKILL');
    await store.dispose();
    expect(watched.failures).toBe(0);
    // the attacks froze the server for 22.7 s; p99 (29-64 ms here, printed above) is a figure, not a
    // bound that other test files sharing the two cores could break
    expect(watched.maxMs).toBeLessThan(2000);
    expect(peak).toBeLessThan(500);
  });

  it('refuses the websocket upgrade of a peer without a valid credential, before reading a packet', async () => {
    expect(await rawSocket(server.url)).toEqual({ status: 400 });
    expect(await rawSocket(server.url, { authorization: 'Bearer forged.jwt.token' })).toEqual({ status: 400 });
    // long polling (where a packet rides in the request body) is not served at all
    const polling = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      method: 'POST',
      body: '42["x",{}]'.padEnd(1024, ' '),
    });
    expect(polling.status).toBe(400);
    // the REST side tells a refused device why
    const me = await fetch(`${server.url}/v1/me`, { headers: { authorization: 'Bearer forged.jwt.token' } });
    expect(me.status).toBe(401);
    expect(await me.json()).toMatchObject({ code: 'bad_credential' });
  });

  it('closes an enrolled connection that sends a text packet longer than the protocol ever does', async () => {
    const huge = await openAuthenticated(server.url);
    huge.ws.send(`42["x",${'{},'.repeat(22 * MiB)}{}]`); // 64 MiB: over the websocket's message limit
    // 1009 (message too big) when the close frame arrives before the sender is cut off; under load the
    // server's reset of the half-sent message can win the race (1006, no close frame)
    expect(CLOSED_FOR_SIZE).toContain((await huge.closed).code);
    const long = await openAuthenticated(server.url);
    long.ws.send(`42["x",${'{},'.repeat(100_000)}{}]`); // 300 KB: under it, refused by the packet decoder
    expect((await long.closed).code).toBeGreaterThanOrEqual(1000);
    const attachments = await openAuthenticated(server.url);
    attachments.ws.send('452-["hello",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
    expect((await attachments.closed).code).toBeGreaterThanOrEqual(1000);
  });

  it('closes connections that never join the namespace or never say hello', async () => {
    const { credential } = await enroll(server.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const silent = await rawSocket(server.url, { authorization: `Bearer ${credential}` });
    if ('status' in silent) throw new Error(`upgrade refused with ${silent.status}`);
    const mute = await openAuthenticated(server.url);
    expect((await silent.closed).code).toBeGreaterThanOrEqual(1000);
    expect(await nextErrorCode(mute)).toBe('hello_timeout');
    await mute.closed;
  });

  it('closes a connection whose binary frame is over the frame limit without buffering it', async () => {
    const socket = await openAuthenticated(server.url);
    sendBinaryEvent(socket, 'hello', encodeFrame(emptyMaps(32 * MiB)));
    expect(CLOSED_FOR_SIZE).toContain((await socket.closed).code);
  });

  it('answers a frame whose msgpack would expand to millions of objects with too_complex, at once', async () => {
    const socket = await openAuthenticated(server.url);
    for (const size of [2 * MiB, 8 * MiB - 64]) {
      socket.received.length = 0;
      sendBinaryEvent(socket, 'hello', encodeFrame(emptyMaps(size - 16 - 5)));
      expect(await nextErrorCode(socket)).toBe('too_complex');
    }
    // the connection is still usable: a proper hello is welcomed
    socket.received.length = 0;
    sendBinaryEvent(
      socket,
      'hello',
      encodeMessage({ type: 'hello', protocolVersion: PROTOCOL_VERSION, profile: DEFAULT_PROFILE }),
    );
    const until = Date.now() + 5000;
    while (!binaryFrames(socket).some((f) => decodeMessage(f).type === 'welcome')) {
      if (Date.now() > until) throw new Error('no welcome');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    socket.ws.close();
  });
});
