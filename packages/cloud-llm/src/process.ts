/**
 * The stand-in's entry point (main.ts) as a child process, resolved once it says where it listens: for a
 * simulation or a benchmark that wants the cloud as its own process, as it would be its own machine.
 * Run from source, the child is started through tsx as well.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface CloudProcess {
  child: ChildProcess;
  /** e.g. http://127.0.0.1:41234 (the OpenAI API is under /v1). */
  url: string;
  stop(): Promise<void>;
}

const TASKSET = ['/usr/bin/taskset', '/bin/taskset'].find((p) => existsSync(p));

/**
 * Starts `floe-cloud` with `args` (its flags). `pinToCore` runs it on that core alone where `taskset`
 * exists (a benchmark keeps it off the edge's core).
 */
export async function spawnCloudProcess(
  args: readonly string[],
  options: { pinToCore?: number; timeoutMs?: number } = {},
): Promise<CloudProcess> {
  const fromSource = import.meta.url.endsWith('.ts');
  const main = fileURLToPath(new URL(fromSource ? './main.ts' : './main.js', import.meta.url));
  const pin = TASKSET && options.pinToCore !== undefined ? [TASKSET, '-c', String(options.pinToCore)] : [];
  const [command, ...prefix] = [...pin, process.execPath];
  const child = spawn(
    command,
    [...prefix, ...(fromSource ? ['--import', 'tsx', '--conditions=floe-source'] : []), main, ...args],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const timeoutMs = options.timeoutMs ?? 60_000;
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`floe-cloud did not listen within ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`floe-cloud exited with ${code ?? signal}`));
    });
    child.stdout?.on('data', (chunk: Buffer) => {
      // the first lines say where it listens; the rest is drained so the pipe never blocks the child
      if (out.length > 4096) return;
      out += chunk.toString();
      const match = /listening on (http:\/\/\S+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(match[1] as string);
      }
    });
  });
  return {
    child,
    url,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}
