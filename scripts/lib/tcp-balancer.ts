/**
 * One address in front of several server replicas, as a load balancer gives devices: each new TCP
 * connection goes to the backend with the fewest open connections (ties in turn), skipping one that
 * refuses it (a replica that was killed).
 * Websocket connections are long-lived, so a device stays on its replica until the connection ends; its
 * reconnection may land on another. For tests and `pnpm chaos` on loopback only.
 */
import { type Socket, connect, createServer } from 'node:net';

export interface TcpBalancer {
  url: string;
  /** Replaces the backends (host:port), e.g. after a replica restarts on a new port. */
  setBackends(backends: string[]): void;
  close(): Promise<void>;
}

export async function startTcpBalancer(backends: string[]): Promise<TcpBalancer> {
  let targets = [...backends];
  let next = 0;
  const open = new Set<Socket>();
  const load = new Map<string, number>();
  const pick = (tried: Set<string>): string | undefined => {
    let best: string | undefined;
    for (let k = 0; k < targets.length; k++) {
      const target = targets[(next + k) % targets.length] as string;
      if (tried.has(target)) continue;
      if (best === undefined || (load.get(target) ?? 0) < (load.get(best) ?? 0)) best = target;
    }
    next++;
    return best;
  };
  const server = createServer((downstream) => {
    open.add(downstream);
    downstream.on('close', () => open.delete(downstream));
    downstream.on('error', () => downstream.destroy());
    downstream.pause();
    const tried = new Set<string>();
    const attempt = () => {
      const target = pick(tried);
      if (target === undefined) {
        downstream.destroy();
        return;
      }
      tried.add(target);
      const [host, port] = [
        target.slice(0, target.lastIndexOf(':')),
        Number(target.slice(target.lastIndexOf(':') + 1)),
      ];
      const upstream = connect({ host, port });
      open.add(upstream);
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        load.set(target, (load.get(target) ?? 0) + 1);
        upstream.once('close', () => load.set(target, (load.get(target) ?? 1) - 1));
        upstream.on('error', () => downstream.destroy());
        upstream.on('close', () => downstream.destroy());
        downstream.on('close', () => upstream.destroy());
        downstream.pipe(upstream);
        upstream.pipe(downstream);
        downstream.resume();
      });
      upstream.once('error', (error: NodeJS.ErrnoException) => {
        open.delete(upstream);
        if (!connected && error.code === 'ECONNREFUSED') attempt();
        else downstream.destroy();
      });
      upstream.on('close', () => open.delete(upstream));
    };
    attempt();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    setBackends(list) {
      targets = [...list];
    },
    close: () =>
      new Promise((resolve) => {
        for (const socket of open) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
