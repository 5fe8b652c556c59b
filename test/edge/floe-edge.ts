/** How the tests start `floe-edge`: on its sources through tsx, with no FLOE_EDGE_* of the caller's. */
import path from 'node:path';

export const ROOT = path.join(import.meta.dirname, '..', '..');
const CLI = path.join(ROOT, 'packages', 'edge-client', 'src', 'cli.ts');

/** The command line (executable first) that runs `floe-edge args...`. */
export function floeEdgeCommand(args: readonly string[]): [string, string[]] {
  return [process.execPath, ['--import', 'tsx', '--conditions=floe-source', CLI, ...args]];
}

/** This process's environment without FLOE_EDGE_* settings, plus `extra`. */
export function floeEdgeEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('FLOE_EDGE_')));
  return { ...clean, ...extra };
}
