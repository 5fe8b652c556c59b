/** The dashboard: one static page (public/dashboard.html) drawing its charts with uPlot, served here. */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { FastifyInstance } from 'fastify';

const require = createRequire(import.meta.url);

export function registerDashboard(app: FastifyInstance): void {
  // src/http and dist/http are both two levels below the package root
  const page = readFileSync(new URL('../../public/dashboard.html', import.meta.url), 'utf8');
  const uplotJs = readFileSync(require.resolve('uplot/dist/uPlot.iife.min.js'), 'utf8');
  const uplotCss = readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
  const hide = { schema: { hide: true } };
  app.get('/', hide, (_request, reply) => reply.redirect('/dashboard'));
  app.get('/dashboard', hide, (_request, reply) => reply.type('text/html; charset=utf-8').send(page));
  app.get('/dashboard/uplot.js', hide, (_request, reply) => reply.type('text/javascript').send(uplotJs));
  app.get('/dashboard/uplot.css', hide, (_request, reply) => reply.type('text/css').send(uplotCss));
}
