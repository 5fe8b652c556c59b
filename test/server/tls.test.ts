/**
 * TLS end to end: a certificate authority made here with openssl, the server on HTTPS and WSS with a
 * certificate it signed, and devices that trust that authority and nothing else of the sort.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ConnectionError, enroll, trustCertificateAuthority } from '@floe/edge-client';
import type { JobSummary } from '@floe/shared';
import { DEFAULT_PROFILE, type SyntheticDevice } from '@floe/simulator';
import { JOIN_TOKEN, type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

async function makeCertificates(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=floe test CA');
  openssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  await writeFile(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n');
  openssl(
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.pem',
    '-days',
    '1',
    '-extfile',
    'ext.cnf',
  );
  const read = (file: string) => readFile(path.join(dir, file), 'utf8');
  return { ca: await read('ca.pem'), cert: await read('server.pem'), key: await read('server.key') };
}

describe('TLS', () => {
  let dir: string;
  let pems: { ca: string; cert: string; key: string };
  let test: TestServer;
  let devices: SyntheticDevice[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'floe-tls-'));
    pems = await makeCertificates(dir);
    test = await startTestServer({ tlsCert: pems.cert, tlsKey: pems.key, gatherMs: 200 });
  });

  afterAll(async () => {
    devices.forEach((d) => d.stop());
    await test.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves HTTPS only, and a device that does not trust its authority refuses it', async () => {
    expect(test.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    const plain = await fetch(test.url.replace('https:', 'http:') + '/healthz').then(
      (r) => r.status,
      () => 'refused',
    );
    expect(plain).not.toBe(200);
    const untrusted = await enroll(test.url, JOIN_TOKEN, DEFAULT_PROFILE).then(
      () => 'enrolled',
      (error: ConnectionError) => `${error.code}: ${error.message}`,
    );
    expect(untrusted).toMatch(/^unreachable: .*(certificate|self.signed|issuer|verify)/i);
  });

  it('enrolls, connects over WSS and completes a job with devices that trust the authority', async () => {
    trustCertificateAuthority(pems.ca);
    devices = await startDevices(test.url, 4, (i) => ({
      plan: { rank: 4, targetModules: ['q_proj', 'v_proj'] },
      distribution: { seed: 1, scale: 0.05, noise: 0.5 },
      clientSeed: i,
    }));
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ clientsPerRound: 4, quorum: 4, rounds: 2 }),
    );
    expect(created.status).toBe(201);
    const job = await waitForJob(test, created.body.id);
    expect(job.rounds.map((r) => [r.status, r.accepted])).toEqual([
      ['aggregated', 4],
      ['aggregated', 4],
    ]);
  });
});
