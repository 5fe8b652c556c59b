/** The dashboard in a real browser: headless Debian Chromium driven by playwright-core. */
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobSummary } from '@floe/shared';
import type { SyntheticDevice } from '@floe/simulator';
import { ADMIN_TOKEN, type TestServer, jobSpec, startDevices, startTestServer, waitForJob } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';

// CI installs chromium (.ci/run); elsewhere the test needs `apt-get install -y chromium`
describe.skipIf(!existsSync(CHROMIUM) && !process.env['CI'])('dashboard', () => {
  let test: TestServer;
  let devices: SyntheticDevice[];
  let browser: Browser;
  let job: JobSummary;

  beforeAll(async () => {
    test = await startTestServer();
    devices = await startDevices(test.url, 6, (i) => ({
      plan: { rank: 4, targetModules: ['q_proj', 'v_proj'] },
      distribution: { seed: 1, scale: 0.05, noise: 0.5 },
      clientSeed: i,
    }));
    const created = await test.admin<JobSummary>(
      'POST',
      '/v1/jobs',
      jobSpec({ name: 'dashboard-job', rounds: 3, clientsPerRound: 6, quorum: 6 }),
    );
    job = await waitForJob(test, created.body.id);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    });
  });

  afterAll(async () => {
    await browser?.close();
    devices.forEach((d) => d.stop());
    await test.close();
  });

  it('shows jobs, rounds with charts, and clients', async () => {
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on('pageerror', (error) => problems.push(error.message));
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(message.text());
    });
    await page.goto(`${test.url}/dashboard#token=${ADMIN_TOKEN}`);
    await page.waitForSelector('body[data-loaded="true"]', { timeout: 15_000 });

    const jobRow = page.locator(`#jobs tr[data-job="${job.id}"]`);
    await expect(jobRow.locator('td').allTextContents()).resolves.toEqual([
      job.id,
      'dashboard-job',
      'flexlora',
      'off',
      'completed',
      '3 / 3',
    ]);
    const rows = await page.locator('#rounds tbody tr').all();
    const rounds = await Promise.all(rows.map(async (row) => (await row.locator('td').allTextContents()).slice(0, 5)));
    expect(rounds).toEqual([0, 1, 2].map((r) => [String(r), 'aggregated', '6', '6', '0']));
    // two uPlot charts, each drawn on a canvas with one series per line
    await expect(page.locator('#chart-updates canvas').count()).resolves.toBe(1);
    await expect(page.locator('#chart-metric canvas').count()).resolves.toBe(1);
    await expect(page.locator('#chart-metric .u-title').textContent()).resolves.toBe('client.loss');
    const clients = await page.locator('#clients tbody tr').count();
    expect(clients).toBe(6);
    // the token left the address bar
    expect(page.url()).not.toContain(ADMIN_TOKEN);
    expect(problems).toEqual([]);
  });

  it('says why when the admin token is wrong', async () => {
    const page = await browser.newPage();
    await page.goto(`${test.url}/dashboard#token=wrong`);
    await page.waitForSelector('#status.error', { timeout: 15_000 });
    await expect(page.locator('#status').textContent()).resolves.toMatch(/^unauthorized: /);
    await expect(page.locator('#jobs tbody tr').count()).resolves.toBe(0);
  });
});
