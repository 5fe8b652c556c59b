/**
 * Server-sent events as OpenAI streams them: `data: JSON` per chunk, an error as a chunk of its own,
 * `data: [DONE]` at the end. Written on the raw response; the headers go out at once, so the client
 * sees the status before the first token.
 */
import type { ServerResponse } from 'node:http';

export interface EventStream {
  send(data: object): void;
  fail(message: string): void;
  end(): void;
}

export function openEventStream(response: ServerResponse): EventStream {
  response.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  response.flushHeaders();
  const write = (data: object) => {
    if (!response.writableEnded) response.write(`data: ${JSON.stringify(data)}\n\n`);
  };
  return {
    send: write,
    fail(message: string) {
      write({ error: { message, type: 'server_error', param: null, code: null } });
    },
    end() {
      if (!response.writableEnded) response.end('data: [DONE]\n\n');
    },
  };
}
