/** Entry point of a training probe child process (calibration-probe.ts): one JSON request in, one JSON line out. */
import { type ProbeRequest, runProbe } from './calibration-probe.js';

const request = JSON.parse(process.argv[2] ?? '{}') as ProbeRequest;
process.stdout.write(`${JSON.stringify(await runProbe(request))}\n`);
