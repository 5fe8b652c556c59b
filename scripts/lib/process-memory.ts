import { readFile } from 'node:fs/promises';

/**
 * A process's peak resident set (VmHWM), MiB: Linux only. Not getrusage's maxRSS, which keeps the
 * parent's size at the fork across exec (a child of a big bench process would read the parent's peak).
 */
export async function peakRssMiB(pid: number | 'self'): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /^VmHWM:\s+(\d+) kB/m.exec(status);
  if (!match) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(match[1]) / 1024;
}
