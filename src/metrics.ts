/**
 * Prometheus metrics (SPEC §7 names). Label children are bound once —
 * at start-up for upstream outcomes, on first use for request statuses —
 * so the request path does a Map lookup at most, never a label-object
 * hash. State gauges are updated from the registry's transition events.
 *
 * Counters on the request path are `HotCounter`s: a plain number that the
 * request bumps, added to the prom-client child when the registry is
 * collected (a scrape, or a cluster worker's answer). A prom-client child
 * `inc()` validates and hashes its label set every time — about 0.7 µs,
 * nine times per aggregate request in the profile.
 */
import client from 'prom-client'
import type { Registry } from './upstream/registry.js'
import type { Outcome } from './upstream/origin.js'

const OUTCOMES: Outcome[] = ['ok', 'error_status', 'connect_error', 'timeout', 'reset']

/** One labelled counter child, counted locally and handed over when collected. */
export class HotCounter {
  #pending = 0
  readonly #child: client.Counter.Internal
  constructor (child: client.Counter.Internal) { this.#child = child }
  inc (): void { this.#pending++ }
  /** Adds what was counted since the last collection to the prom-client child. */
  flush (): void {
    if (this.#pending === 0) return
    this.#child.inc(this.#pending)
    this.#pending = 0
  }
}

/**
 * A prom-client counter whose request-path children are `HotCounter`s,
 * flushed in the counter's `collect()`. Children are bound once and shown
 * from the start (at 0).
 */
class HotCounterFamily<L extends string> {
  readonly counter: client.Counter<L>
  readonly #cells: HotCounter[] = []
  constructor (config: client.CounterConfiguration<L>) {
    const cells = this.#cells
    this.counter = new client.Counter({ ...config, collect () { for (const c of cells) c.flush() } })
  }
  hot (...values: string[]): HotCounter {
    const child = this.counter.labels(...values)
    child.inc(0)
    const cell = new HotCounter(child)
    this.#cells.push(cell)
    return cell
  }
}

export class Metrics {
  readonly registry = new client.Registry()
  readonly #requests: HotCounterFamily<'route' | 'method' | 'status'>
  readonly #duration: client.Histogram<'route'>
  readonly #upstream: HotCounterFamily<'service' | 'deployment' | 'origin' | 'outcome'>
  readonly failovers: client.Counter<'service' | 'deployment' | 'kind'>
  readonly originHealthy: client.Gauge<'service' | 'deployment' | 'origin'>
  readonly trafficWeight: client.Gauge<'service' | 'deployment'>
  readonly trafficChanges: client.Counter<'service' | 'deployment'>
  readonly #requestChildren = new Map<string, HotCounter>()
  readonly #durationChildren = new Map<string, client.Histogram.Internal<'route'>>()

  constructor () {
    const registers = [this.registry]
    // `aggregator`: how a cluster's workers add up (src/cluster.ts): healthy
    // only if every worker sees it healthy; weights and their changes are
    // applied in every worker, so one worker's value is the cluster's.
    client.collectDefaultMetrics({ register: this.registry })
    this.#requests = new HotCounterFamily({ name: 'gateway_requests_total', help: 'Client requests by route, method and status', labelNames: ['route', 'method', 'status'], registers })
    this.#duration = new client.Histogram({ name: 'gateway_request_duration_seconds', help: 'Client request duration', labelNames: ['route'], buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers })
    this.#upstream = new HotCounterFamily({ name: 'gateway_upstream_requests_total', help: 'Upstream attempts by origin and outcome', labelNames: ['service', 'deployment', 'origin', 'outcome'], registers })
    this.failovers = new client.Counter({ name: 'gateway_failovers_total', help: 'Retries to the other origin, stateful switches and failbacks', labelNames: ['service', 'deployment', 'kind'], registers })
    this.originHealthy = new client.Gauge({ name: 'gateway_origin_healthy', help: '1 when the origin is healthy', labelNames: ['service', 'deployment', 'origin'], registers, aggregator: 'min' })
    this.trafficWeight = new client.Gauge({ name: 'gateway_traffic_weight', help: 'Current traffic weight of a deployment', labelNames: ['service', 'deployment'], registers, aggregator: 'max' })
    this.trafficChanges = new client.Counter({ name: 'gateway_traffic_changes_total', help: 'Traffic weight changes made through the admin API, per deployment whose weight changed', labelNames: ['service', 'deployment'], registers, aggregator: 'max' })
  }

  /** Records one finished client request. */
  observeRequest (route: string, method: string, status: number, seconds: number): void {
    const key = `${route}\u0000${method}\u0000${status}`
    let c = this.#requestChildren.get(key)
    if (c === undefined) {
      c = this.#requests.hot(route, method, String(status))
      this.#requestChildren.set(key, c)
    }
    c.inc()
    let h = this.#durationChildren.get(route)
    if (h === undefined) {
      h = this.#duration.labels(route)
      this.#durationChildren.set(route, h)
    }
    h.observe(seconds)
  }

  /** Wires every origin and deployment of the registry to these metrics. */
  bind (registry: Registry): void {
    for (const { origin } of registry.origins) {
      const children = new Map(OUTCOMES.map((o) => [o, this.#upstream.hot(origin.service, origin.deployment, origin.role, o)]))
      origin.onOutcome = (outcome) => children.get(outcome)!.inc()
      this.originHealthy.labels(origin.service, origin.deployment, origin.role).set(origin.healthy ? 1 : 0)
    }
    for (const service of registry.services.values()) {
      for (const [dep, group] of service.groups) {
        const retries = this.failovers.labels(service.name, dep, 'retry')
        retries.inc(0)
        group.onRetry = () => retries.inc()
        for (const kind of ['switch', 'failback'] as const) this.failovers.labels(service.name, dep, kind).inc(0)
        this.trafficWeight.labels(service.name, dep).set(service.traffic[dep] ?? 0)
        this.trafficChanges.labels(service.name, dep).inc(0)
      }
    }
    registry.on('health', (e) => this.originHealthy.labels(e.origin.service, e.origin.deployment, e.origin.role).set(e.healthy ? 1 : 0))
    registry.on('failover', (e) => this.failovers.labels(e.service, e.deployment, e.kind).inc())
    registry.on('traffic', (e) => {
      // One increment per deployment whose weight moved (a blue -> green flip counts on both).
      for (const dep of e.changed) this.trafficChanges.labels(e.service, dep).inc()
      for (const [dep, w] of Object.entries(e.to)) this.trafficWeight.labels(e.service, dep).set(w)
    })
  }

  // ---- aggregate routes (SPEC §5; compiled by src/aggregate/plan.ts) ----
  readonly #aggregateSections = new HotCounterFamily({ name: 'gateway_aggregate_sections_total', help: 'Aggregate route sections by route, section and outcome', labelNames: ['route', 'section', 'outcome'], registers: [this.registry] })
  readonly #aggregateResponses = new HotCounterFamily({ name: 'gateway_aggregate_responses_total', help: 'Aggregate route answers by result: complete, partial (some optional section null) or failed (a required section failed)', labelNames: ['route', 'result'], registers: [this.registry] })

  /** Counters for one aggregate section, bound (and shown as 0) at start-up. */
  aggregateSectionCounters<O extends string> (route: string, section: string, outcomes: readonly O[]): Record<O, HotCounter> {
    const out = {} as Record<O, HotCounter>
    for (const o of outcomes) out[o] = this.#aggregateSections.hot(route, section, o)
    return out
  }

  /** Counters for one aggregate route's results, bound (and shown as 0) at start-up. */
  aggregateResponseCounters<R extends string> (route: string, results: readonly R[]): Record<R, HotCounter> {
    const out = {} as Record<R, HotCounter>
    for (const r of results) out[r] = this.#aggregateResponses.hot(route, r)
    return out
  }
  // ---- end aggregate routes ----
}
