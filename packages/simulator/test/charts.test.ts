/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
/**
 * The report's charts: rendered to SVG in Node, then looked at in headless Chromium, where every mark
 * must be laid out inside the picture and every method named in a legend.
 */
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Browser, chromium } from 'playwright-core';
import {
  type ClientPoint,
  type ClusterCell,
  type RoundPoint,
  type DifferenceRow,
  bytesPerClient,
  clusterAssignment,
  differences,
  metricPerRound,
  perClient,
  renderSvg,
  roundTimes,
} from '../src/index.js';

const CHROMIUM = '/usr/bin/chromium';
const TASKS = { speech: 'bits per byte', email: 'accuracy', arithmetic: 'exact match' };
const METHODS = ['base', 'local', 'fedavg', 'hetlora', 'floe'];
const CLIENTS = Object.keys(TASKS).flatMap((task) => [0, 1].map((k) => ({ task, client: `${task}-${k}` })));

const rounds: RoundPoint[] = Object.keys(TASKS).flatMap((task, t) =>
  METHODS.flatMap((method, m) => [0, 1, 2, 3].map((round) => ({ task, method, round, value: t + m * 0.01 * round }))),
);
const clients: ClientPoint[] = CLIENTS.flatMap(({ task, client }, c) =>
  METHODS.map((method, m) => ({ task, client, method, value: 0.5 + 0.01 * c + 0.02 * m })),
);
const cells: ClusterCell[] = CLIENTS.flatMap(({ task, client }) =>
  [1, 2, 3].map((round) => ({ client, task, round, cluster: round === 1 ? '0' : task })),
);
const PAIRS = ['floe - fedavg', 'floe - local', 'floe_fused - floe', 'floe_fused - cloud'];
// some intervals hold 0, some lie wholly on one side of it
const gaps: DifferenceRow[] = Object.keys(TASKS).flatMap((task, t) =>
  PAIRS.map((pair, p) => ({ task, pair, mean: 0.01 * (p - 1) * (t + 1), low: 0.01 * (p - 2), high: 0.01 * p })),
);
const count = (svg: string, role: string) => svg.split(`aria-roledescription="${role}"`).length - 1;

let svgs: Record<string, string>;

beforeAll(async () => {
  svgs = {
    metric: await renderSvg(metricPerRound(rounds, TASKS)),
    clients: await renderSvg(perClient(clients, TASKS)),
    bytes: await renderSvg(
      bytesPerClient(
        CLIENTS.flatMap(({ client }, c) => [
          { client, direction: 'sent' as const, bytes: 1e6 * (c + 1) },
          { client, direction: 'received' as const, bytes: 2e6 },
        ]),
      ),
    ),
    times: await renderSvg(
      roundTimes(METHODS.flatMap((method) => [1, 2, 3].map((round) => ({ method, round, seconds: round })))),
    ),
    clusters: await renderSvg(clusterAssignment(cells)),
    differences: await renderSvg(differences(gaps, TASKS)),
  };
});

describe('report charts as SVG', () => {
  it('draws one mark per data row', () => {
    // a bar per client and method, per direction, a cell per client and round, a line per task and method
    expect(count(svgs['clients']!, 'bar')).toBe(CLIENTS.length * METHODS.length);
    expect(count(svgs['bytes']!, 'bar')).toBe(CLIENTS.length * 2);
    expect(count(svgs['clusters']!, 'rect mark')).toBe(cells.length);
    expect(count(svgs['metric']!, 'line mark')).toBe(Object.keys(TASKS).length * METHODS.length);
    expect(count(svgs['times']!, 'line mark')).toBe(METHODS.length);
    // a point per task and pair, each pair named
    expect(count(svgs['differences']!, 'point')).toBe(gaps.length);
    for (const pair of PAIRS) expect(svgs['differences']).toContain(`>${pair}</text>`);
    for (const svg of Object.values(svgs)) expect(svg.startsWith('<svg')).toBe(true);
  });
});

// CI installs chromium (.ci/run); elsewhere the test needs `apt-get install -y chromium`
describe.skipIf(!existsSync(CHROMIUM) && !process.env['CI'])('report charts in headless Chromium', () => {
  let browser: Browser;

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu'],
    });
  });

  afterAll(async () => {
    await browser?.close();
  });

  it('draws every mark with a size within the picture, names every method, and screenshots it', async () => {
    const page = await browser.newPage({ viewport: { width: 2400, height: 2400 } });
    try {
      for (const [name, svg] of Object.entries(svgs)) {
        await page.setContent(`<!doctype html><body style="margin:0">${svg}</body>`);
        const seen = await page.evaluate(() => {
          const root = document.querySelector('svg') as SVGSVGElement;
          const frame = root.getBoundingClientRect();
          const marks = [
            ...document.querySelectorAll(
              '[aria-roledescription="bar"], [aria-roledescription="rect mark"], [aria-roledescription="line mark"], ' +
                '[aria-roledescription="point"], [aria-roledescription="rule mark"]',
            ),
          ];
          const outside = marks.filter((m) => {
            const r = m.getBoundingClientRect();
            const empty = r.width === 0 && r.height === 0;
            return (
              empty ||
              r.left < frame.left - 1 ||
              r.right > frame.right + 1 ||
              r.top < frame.top - 1 ||
              r.bottom > frame.bottom + 1
            );
          }).length;
          const texts = [...document.querySelectorAll('text')].map((t) => t.textContent ?? '');
          return { marks: marks.length, outside, texts, width: frame.width, height: frame.height };
        });
        expect(seen.marks, name).toBeGreaterThan(0);
        expect(seen.outside, name).toBe(0);
        if (name === 'differences') for (const p of PAIRS) expect(seen.texts, name).toContain(p);
        else if (name !== 'bytes' && name !== 'clusters')
          for (const m of METHODS) expect(seen.texts, name).toContain(m);
        const png = await page.screenshot({ clip: { x: 0, y: 0, width: seen.width, height: seen.height } });
        // a PNG of the chart's size
        expect(png.subarray(1, 4).toString()).toBe('PNG');
        expect(png.readUInt32BE(16)).toBe(Math.round(seen.width));
        expect(png.readUInt32BE(20)).toBe(Math.round(seen.height));
      }
    } finally {
      await page.close();
    }
  });
});
