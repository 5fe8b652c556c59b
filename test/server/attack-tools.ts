/**
 * What the attack tests need beyond the protocol's own client: a raw engine.io websocket (to send what
 * no Floe client would), a /healthz watcher, and the server process's peak resident memory.
 */
import WebSocket from 'ws';

export { type HealthWatch, watchHealth } from '../../scripts/lib/health-watch.js';

export interface RawSocket {
  ws: WebSocket;
  /** Text and binary messages received, in order. */
  received: (string | Buffer)[];
  closed: Promise<{ code: number; reason: string }>;
}

/**
 * Opens the socket.io endpoint as a bare websocket. Resolves with the HTTP status when the upgrade is
 * refused, else with the socket once engine.io's open packet arrived.
 */
export function rawSocket(url: string, headers: Record<string, string> = {}): Promise<RawSocket | { status: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`, { headers });
    const received: (string | Buffer)[] = [];
    const closed = new Promise<{ code: number; reason: string }>((done) =>
      ws.on('close', (code, reason) => done({ code, reason: reason.toString() })),
    );
    ws.on('unexpected-response', (_request, response) => {
      resolve({ status: response.statusCode ?? 0 });
      ws.terminate();
    });
    ws.on('error', (error) => {
      if (ws.readyState !== WebSocket.CLOSED) reject(error);
    });
    ws.on('message', (data: Buffer, isBinary) => {
      received.push(isBinary ? data : data.toString());
      if (received.length === 1) resolve({ ws, received, closed });
    });
  });
}

/** Joins the default namespace on an open raw socket and waits for the server's connect packet. */
export async function joinNamespace(socket: RawSocket): Promise<void> {
  socket.ws.send('40');
  const until = Date.now() + 5000;
  while (!socket.received.some((m) => typeof m === 'string' && m.startsWith('40'))) {
    if (Date.now() > until) throw new Error(`no namespace connect: ${JSON.stringify(socket.received.slice(0, 3))}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Sends one socket.io binary event (`event`, one binary argument) as a socket.io client would. */
export function sendBinaryEvent(socket: RawSocket, event: string, bytes: Uint8Array): void {
  socket.ws.send(`451-${JSON.stringify([event, { _placeholder: true, num: 0 }])}`);
  socket.ws.send(bytes);
}

/** The binary payloads received so far (server frames). */
export function binaryFrames(socket: RawSocket): Uint8Array[] {
  return socket.received.filter((m): m is Buffer => typeof m !== 'string').map((b) => new Uint8Array(b));
}
