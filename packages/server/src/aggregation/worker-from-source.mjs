// Node 20 does not apply --import to worker threads: from source, the worker registers tsx itself.
import { register } from 'tsx/esm/api';

register();
const { default: aggregate } = await import('./worker.ts');
export default aggregate;
