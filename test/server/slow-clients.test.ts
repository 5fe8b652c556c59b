/**
 * Slow and careless clients: request bodies that never arrive, unauthenticated admin calls with bad
 * bodies, too many connections from one address (and the address behind a proxy), a flood of junk
 * events (refusals are logged by sample), and event names socket.io passes through that the protocol
 * has no use for.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { enroll } from '@floe/edge-client';
import { type FloeServer, type ServerConfig, configFromEnv, startServer } from '@floe/server';
import { decodeMessage } from '@floe/shared';
import { DEFAULT_PROFILE } from '@floe/simulator';
import { RefusalLog } from '../../packages/server/src/transport/gateway.js';
import { type RawSocket, binaryFrames, joinNamespace, rawSocket } from './attack-tools.js';
import {
  ADMIN_TOKEN,
  JOIN_TOKEN,
  type TestServer,
  type TestStore,
  jobSpec,
  startTestServer,
  testStore,
} from './helpers.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Opens a raw TCP connection, writes `head` (and with `trickleMs` one more byte every so often) and
 * resolves when the server closes it: what it answered and after how long.
 */
function slowRequest(
  url: string,
  head: string,
  trickleMs?: number,
): Promise<{ response: string; closedAfterMs: number }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const socket = net.connect(Number(port), hostname, () => socket.write(head));
    let response = '';
    const trickle = trickleMs === undefined ? undefined : setInterval(() => socket.write('x'), trickleMs);
    const giveUp = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server kept the connection open for 10 s; it answered ${JSON.stringify(response)}`));
    }, 10_000);
    socket.on('data', (data) => (response += data.toString()));
    socket.on('error', () => undefined); // a trickled byte may hit the closed connection
    socket.on('close', () => {
      clearInterval(trickle);
      clearTimeout(giveUp);
      resolve({ response, closedAfterMs: performance.now() - started });
    });
  });
}

/** Writes `head` on a raw TCP connection and resolves with the first bytes the server answers. */
function firstAnswer(url: string, head: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => socket.write(head));
    const giveUp = setTimeout(() => {
      socket.destroy();
      reject(new Error('no answer within 10 s'));
    }, 10_000);
    socket.on('data', (data) => {
      clearTimeout(giveUp);
      resolve(data.toString());
      socket.destroy();
    });
    socket.on('error', () => undefined);
  });
}

/** A websocket upgrade of the socket.io endpoint: the open socket, or the refusal's status and body. */
function upgrade(url: string, headers: Record<string, string>): Promise<WebSocket | { status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, { headers });
    ws.on('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      response.on('error', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    ws.on('open', () => resolve(ws));
    ws.on('error', (error) => {
      if (ws.readyState !== WebSocket.CLOSED) reject(error);
    });
  });
}

async function admitted(url: string, headers: Record<string, string>): Promise<WebSocket> {
  const result = await upgrade(url, headers);
  if (!(result instanceof WebSocket)) throw new Error(`refused: ${result.status} ${result.body}`);
  return result;
}

async function refusedWith(url: string, headers: Record<string, string>): Promise<string> {
  const result = await upgrade(url, headers);
  if (result instanceof WebSocket) {
    result.close();
    throw new Error('the upgrade was admitted');
  }
  expect(result.status).toBe(400);
  return result.body;
}

function closeAll(sockets: WebSocket[]): Promise<void[]> {
  return Promise.all(
    sockets.map(
      (ws) =>
        new Promise<void>((resolve) => {
          if (ws.readyState === WebSocket.CLOSED) return resolve();
          ws.once('close', () => resolve());
          ws.terminate();
        }),
    ),
  );
}

async function refusedCount(url: string, code: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const match = new RegExp(`^floe_refused_messages_total\\{code="${code}"\\} (\\d+)$`, 'm').exec(text);
  return match ? Number(match[1]) : 0;
}

/** The error codes the server sent on a raw socket so far. */
function errorCodes(socket: RawSocket): string[] {
  return binaryFrames(socket)
    .map((frame) => decodeMessage(frame))
    .flatMap((message) => (message.type === 'error' ? [message.code] : []));
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('HTTP requests of slow and unauthenticated clients', () => {
  let test: TestServer;

  beforeAll(async () => {
    test = await startTestServer({ requestTimeoutMs: 1000 });
  });
  afterAll(() => test.close());

  it('cuts off a request whose body never comes, trickles in, or whose headers never end', async () => {
    const head = (authorization: string) =>
      'POST /v1/jobs HTTP/1.1\r\nHost: floe\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n' +
      `Authorization: Bearer ${authorization}\r\n\r\n`;
    const [silent, trickling, headers] = await Promise.all([
      slowRequest(test.url, head(ADMIN_TOKEN)),
      slowRequest(test.url, `${head(ADMIN_TOKEN)}{"name":`, 200),
      slowRequest(test.url, 'POST /v1/jobs HTTP/1.1\r\nHost: floe\r\n', 200),
    ]);
    for (const { response, closedAfterMs } of [silent, trickling, headers]) {
      expect(response === '' || response.startsWith('HTTP/1.1 408')).toBe(true);
      // after the 1 s timeout (not refused for some other reason), and well before a client would give up
      expect(closedAfterMs).toBeGreaterThan(800);
      expect(closedAfterMs).toBeLessThan(5000);
    }
    expect((await fetch(`${test.url}/healthz`)).status).toBe(200);
  });

  it('answers an unauthenticated job creation 401 before reading or validating its body', async () => {
    const post = (body: string, authorization?: string) =>
      fetch(`${test.url}/v1/jobs`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
        body,
      });
    for (const authorization of [undefined, 'Bearer not-the-admin-token']) {
      for (const body of ['{"name":"not a job"}', '{{{ not json', JSON.stringify(jobSpec({ rounds: -1 }))]) {
        const response = await post(body, authorization);
        expect(response.status).toBe(401);
        expect(await response.json()).toMatchObject({ code: 'unauthorized' });
      }
    }
    // with the token, the body is still validated
    const invalid = await post('{"name":"not a job"}', `Bearer ${ADMIN_TOKEN}`);
    expect(invalid.status).toBe(400);
    expect(await invalid.json()).toMatchObject({ code: 'invalid_request' });
    // nor does a caller without one wait for a body that never comes: the 401 is written at once
    const started = performance.now();
    const answer = await firstAnswer(
      test.url,
      'POST /v1/jobs HTTP/1.1\r\nHost: floe\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n',
    );
    expect(answer.startsWith('HTTP/1.1 401')).toBe(true);
    expect(performance.now() - started).toBeLessThan(800);
  });
});

describe('connections per address', () => {
  let test: TestServer;
  let credential: string;
  const open: WebSocket[] = [];

  beforeAll(async () => {
    // connections that never join are closed after helloTimeoutMs: longer than these tests
    test = await startTestServer({ maxConnectionsPerIp: 3, helloTimeoutMs: 60_000 });
    ({ credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE));
  });
  afterAll(async () => {
    await closeAll(open);
    await test.close();
  });

  it('refuses the upgrade beyond the cap, whatever X-Forwarded-For says, and frees a slot on close', async () => {
    const auth = { authorization: `Bearer ${credential}` };
    for (let i = 0; i < 3; i++) open.push(await admitted(test.url, auth));
    expect(await refusedWith(test.url, auth)).toMatch(/too_many_connections/);
    // without trustProxy the forwarded address is the client's own word: it does not open a new slot
    expect(await refusedWith(test.url, { ...auth, 'x-forwarded-for': '203.0.113.9' })).toMatch(/too_many_connections/);
    expect(await refusedCount(test.url, 'too_many_connections')).toBe(2);

    await closeAll(open.splice(0, 1));
    // the server sees the close a moment after the client
    let reopened: WebSocket | undefined;
    const until = Date.now() + 5000;
    while (!reopened) {
      const result = await upgrade(test.url, auth);
      if (result instanceof WebSocket) reopened = result;
      else if (Date.now() > until) throw new Error(`no slot after a close: ${result.body}`);
      else await sleep(50);
    }
    open.push(reopened);
    expect(await refusedWith(test.url, auth)).toMatch(/too_many_connections/);
  });

  it('holds no slot for a refused credential', async () => {
    await closeAll(open.splice(0, 1));
    await sleep(200);
    for (let i = 0; i < 5; i++) {
      expect(await refusedWith(test.url, { authorization: 'Bearer forged.jwt.token' })).toMatch(/bad_credential/);
    }
    open.push(await admitted(test.url, { authorization: `Bearer ${credential}` }));
  });
});

describe('the client address behind a proxy', () => {
  const servers: TestServer[] = [];
  const open: WebSocket[] = [];

  afterAll(async () => {
    await closeAll(open);
    await Promise.all(servers.map((s) => s.close()));
  });

  async function serverWith(trustProxy: ServerConfig['trustProxy']) {
    const test = await startTestServer({ maxConnectionsPerIp: 1, helloTimeoutMs: 60_000, trustProxy });
    servers.push(test);
    const { credential } = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE);
    return {
      url: test.url,
      from: (forwardedFor: string) => ({ authorization: `Bearer ${credential}`, 'x-forwarded-for': forwardedFor }),
    };
  }

  it('trustProxy true: the leftmost forwarded address has the cap', async () => {
    const { url, from } = await serverWith(true);
    open.push(await admitted(url, from('203.0.113.1')));
    open.push(await admitted(url, from('203.0.113.2')));
    expect(await refusedWith(url, from('203.0.113.1, 127.0.0.1'))).toMatch(
      /too_many_connections: 203\.0\.113\.1 is at its cap/,
    );
  });

  it('trustProxy a list of proxies: the nearest address not on it has the cap (a spoofed prefix is ignored)', async () => {
    // the test's loopback peer stands for the load balancer, which appends the address it saw
    const { url, from } = await serverWith('loopback, 10.0.0.0/8');
    open.push(await admitted(url, from('203.0.113.1, 198.51.100.7')));
    open.push(await admitted(url, from('198.51.100.7, 10.1.2.3, 198.51.100.8')));
    expect(await refusedWith(url, from('203.0.113.2, 198.51.100.7, 10.9.9.9'))).toMatch(
      /too_many_connections: 198\.51\.100\.7 is at its cap/,
    );
  });

  it('reads FLOE_TRUST_PROXY, FLOE_MAX_CONNECTIONS_PER_IP and FLOE_REQUEST_TIMEOUT_MS', () => {
    expect(configFromEnv({})).toMatchObject({ trustProxy: false, maxConnectionsPerIp: 256, requestTimeoutMs: 10_000 });
    expect(configFromEnv({ FLOE_TRUST_PROXY: 'true' }).trustProxy).toBe(true);
    expect(configFromEnv({ FLOE_TRUST_PROXY: 'false' }).trustProxy).toBe(false);
    expect(configFromEnv({ FLOE_TRUST_PROXY: '10.0.0.0/8,loopback' }).trustProxy).toBe('10.0.0.0/8,loopback');
    expect(configFromEnv({ FLOE_MAX_CONNECTIONS_PER_IP: '8', FLOE_REQUEST_TIMEOUT_MS: '2500' })).toMatchObject({
      maxConnectionsPerIp: 8,
      requestTimeoutMs: 2500,
    });
    expect(() => configFromEnv({ FLOE_REQUEST_TIMEOUT_MS: 'soon' })).toThrow(/FLOE_REQUEST_TIMEOUT_MS/);
  });
});

describe('junk events', () => {
  let server: FloeServer;
  let store: TestStore;
  const logLines: { msg: string; code?: string; suppressed?: number }[] = [];
  let logBytes = 0;
  let socket: RawSocket;

  beforeAll(async () => {
    store = await testStore();
    server = await startServer(
      {
        host: '127.0.0.1',
        port: 0,
        ...store.config,
        joinToken: JOIN_TOKEN,
        adminToken: ADMIN_TOKEN,
        logLevel: 'warn',
        rateLimitMessages: 1000,
        httpRateLimitPerMinute: 100_000,
        helloTimeoutMs: 60_000,
      },
      {
        logStream: {
          write(line: string) {
            logBytes += line.length;
            logLines.push(JSON.parse(line) as { msg: string });
          },
        },
      },
    );
    const { credential } = await enroll(server.url, JOIN_TOKEN, DEFAULT_PROFILE);
    const opened = await rawSocket(server.url, { authorization: `Bearer ${credential}` });
    if ('status' in opened) throw new Error(`upgrade refused with ${opened.status}`);
    socket = opened;
    await joinNamespace(socket);
  });
  afterAll(async () => {
    socket.ws.close();
    await server.close();
    await store.dispose();
  });

  it('answers every one of 200 junk events but logs a few lines', async () => {
    const garbage = Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 37) % 256));
    for (let i = 0; i < 100; i++) {
      socket.ws.send(`42["junk${i}",{}]`);
      socket.ws.send(`451-["hello",{"_placeholder":true,"num":0}]`);
      socket.ws.send(garbage);
    }
    await waitFor(() => errorCodes(socket).length >= 200, '200 error messages');
    const codes = errorCodes(socket);
    expect(codes).toHaveLength(200);
    expect(codes.filter((code) => code === 'unknown_event')).toHaveLength(100);
    const helloCode = codes.find((code) => code !== 'unknown_event') as string;
    expect(codes.filter((code) => code === helloCode)).toHaveLength(100);
    // every refusal is counted in the metric...
    expect(await refusedCount(server.url, 'unknown_event')).toBe(100);
    expect(await refusedCount(server.url, helloCode)).toBe(100);
    // ...and the log has the first of each code, once
    const refusals = logLines.filter((line) => line.msg.startsWith('message refused'));
    expect(refusals.map((line) => line.code).sort()).toEqual([helloCode, 'unknown_event'].sort());
    expect(logLines.length).toBeLessThanOrEqual(4);
    expect(logBytes).toBeLessThan(4096);
  });

  it('answers a numeric event name with unknown_event, not internal_error', async () => {
    socket.received.length = 0;
    socket.ws.send('42[123,{}]');
    socket.ws.send('451-[7,{"_placeholder":true,"num":0}]');
    socket.ws.send(Buffer.from([1, 2, 3]));
    await waitFor(() => errorCodes(socket).length >= 2, 'two error messages');
    expect(errorCodes(socket)).toEqual(['unknown_event', 'unknown_event']);
    expect(logLines.some((line) => line.msg.includes('internal error'))).toBe(false);
  });
});

describe('RefusalLog', () => {
  function fixture(maxClients = 4096) {
    const lines: { object: Record<string, unknown>; message: string }[] = [];
    const logger = {
      info: () => undefined,
      error: () => undefined,
      warn: (object: object, message: string) =>
        void lines.push({ object: object as Record<string, unknown>, message }),
    };
    const clock = { now: 0 };
    const log = new RefusalLog(logger, 10_000, maxClients, () => clock.now);
    return { lines, clock, log };
  }

  it('logs the first refusal of each code per client and window, then a summary of the rest', () => {
    const { lines, clock, log } = fixture();
    for (let i = 0; i < 100; i++) {
      clock.now = i * 10;
      log.refused('a', 'unknown_event', 'junk');
      log.refused('a', 'bad_frame', 'junk');
      log.refused('b', 'unknown_event', 'junk');
    }
    expect(lines.map((line) => [line.object['clientId'], line.object['code']])).toEqual([
      ['a', 'unknown_event'],
      ['a', 'bad_frame'],
      ['b', 'unknown_event'],
    ]);
    // a's next refusal after the window: the summary of the last one, then a first line again
    clock.now = 10_000;
    log.refused('a', 'unknown_event', 'junk');
    expect(lines.slice(3).map((line) => line.object)).toEqual([
      { clientId: 'a', suppressed: 198, codes: ['unknown_event', 'bad_frame'] },
      { clientId: 'a', code: 'unknown_event' },
    ]);
    expect(lines[3]?.message).toMatch(/^suppressed 198 refusals/);
    // b went quiet: the sweep writes its summary and forgets it
    clock.now = 15_000;
    log.sweep();
    expect(lines.slice(5).map((line) => line.object)).toEqual([
      { clientId: 'b', suppressed: 99, codes: ['unknown_event'] },
    ]);
    expect(log.trackedClients).toBe(1);
  });

  it('remembers at most maxClients clients', () => {
    const { lines, log } = fixture(8);
    for (let i = 0; i < 1000; i++) {
      log.refused(`client-${i}`, 'unknown_event', 'junk');
      log.refused(`client-${i}`, 'unknown_event', 'junk');
      expect(log.trackedClients).toBeLessThanOrEqual(8);
    }
    // each client: its first line, and its summary when it was dropped (the 8 newest are still open)
    expect(lines).toHaveLength(1000 + 992);
  });
});
