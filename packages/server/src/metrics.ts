/** Prometheus metrics (prom-client), one registry per server so that several servers can share a process. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly connectedClients = new Gauge({
    name: 'floe_connected_clients',
    help: 'Clients with an authenticated socket.io connection',
    registers: [this.registry],
  });
  readonly enrolled = new Counter({
    name: 'floe_enrollments_total',
    help: 'Clients enrolled',
    registers: [this.registry],
  });
  readonly updates = new Counter({
    name: 'floe_updates_total',
    help: 'Updates received, by outcome (accepted or the refusal code)',
    labelNames: ['outcome'],
    registers: [this.registry],
  });
  readonly refusedMessages = new Counter({
    name: 'floe_refused_messages_total',
    help: 'Client messages refused before reaching a round, by code',
    labelNames: ['code'],
    registers: [this.registry],
  });
  readonly rounds = new Counter({
    name: 'floe_rounds_total',
    help: 'Rounds closed, by status',
    labelNames: ['status'],
    registers: [this.registry],
  });
  readonly roundSeconds = new Histogram({
    name: 'floe_round_duration_seconds',
    help: 'Wall time from round start to aggregation',
    buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
    registers: [this.registry],
  });
  readonly aggregationSeconds = new Histogram({
    name: 'floe_aggregation_duration_seconds',
    help: 'Time to validate-load, cluster and aggregate the accepted updates of a round',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly activeJobs = new Gauge({ name: 'floe_active_jobs', help: 'Jobs running', registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'floe_process_' });
  }
}
