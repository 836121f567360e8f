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
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

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

interface HistogramValue { metricName: string, labels: Record<string, string | number>, value: number }

/** One label set of a `HotHistogram`: its own bucket counts (not cumulative), sum and count. */
class HistogramCell {
  readonly labels: Record<string, string>
  readonly counts: Float64Array
  sum = 0
  count = 0
  constructor (labels: Record<string, string>, buckets: number) {
    this.labels = labels
    this.counts = new Float64Array(buckets)
  }
}

/**
 * A histogram whose request-path cells are plain numbers, formatted for
 * prom-client only when the registry is collected (a scrape, or a cluster
 * worker's answer). prom-client's `observe()` validates and hashes its
 * label set on every call; a cell is bound once per label set. It is
 * registered as a metric of its own (`get()` in prom-client's shape, summed
 * across cluster workers like prom-client's histograms).
 */
export class HotHistogram {
  readonly name: string
  readonly help: string
  readonly type = 'histogram' as const
  readonly aggregator = 'sum' as const
  readonly #bounds: readonly number[]
  readonly #cells: HistogramCell[] = []

  constructor (config: { name: string, help: string, buckets: readonly number[], registers: client.Registry[] }) {
    this.name = config.name
    this.help = config.help
    this.#bounds = config.buckets
    for (const r of config.registers) r.registerMetric(this as unknown as client.Metric)
  }

  /** A recorder for one label set, shown from the start (at 0). */
  cell (labels: Record<string, string>): (seconds: number) => void {
    const cell = new HistogramCell(labels, this.#bounds.length)
    this.#cells.push(cell)
    const bounds = this.#bounds
    return (v) => {
      cell.sum += v
      cell.count++
      for (let i = 0; i < bounds.length; i++) {
        if (v <= bounds[i]!) { cell.counts[i]!++; return }
      }
    }
  }

  /** prom-client's metric shape: cumulative `_bucket` lines with `le`, `+Inf`, `_sum`, `_count` per label set. */
  get (): Promise<{ name: string, help: string, type: 'histogram', values: HistogramValue[], aggregator: 'sum' }> {
    const values: HistogramValue[] = []
    const bucket = `${this.name}_bucket`
    for (const cell of this.#cells) {
      let acc = 0
      for (let i = 0; i < this.#bounds.length; i++) {
        acc += cell.counts[i]!
        values.push({ metricName: bucket, labels: { le: this.#bounds[i]!, ...cell.labels }, value: acc })
      }
      values.push({ metricName: bucket, labels: { le: '+Inf', ...cell.labels }, value: cell.count })
      values.push({ metricName: `${this.name}_sum`, labels: cell.labels, value: cell.sum })
      values.push({ metricName: `${this.name}_count`, labels: cell.labels, value: cell.count })
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator })
  }

  reset (): void {
    for (const cell of this.#cells) {
      cell.counts.fill(0)
      cell.sum = 0
      cell.count = 0
    }
  }
}

const METHOD_INDEX: Record<string, number> = { GET: 0, HEAD: 1, POST: 2, PUT: 3, PATCH: 4, DELETE: 5, OPTIONS: 6 }

/**
 * One route's request metrics, bound when the route is registered: the
 * request path counts and observes with a number-keyed lookup, no label
 * strings built.
 */
export class RouteMetrics {
  readonly route: string
  readonly #family: HotCounterFamily<'route' | 'method' | 'status'>
  readonly #duration: (seconds: number) => void
  readonly #counters = new Map<number, HotCounter>()
  readonly #other = new Map<string, HotCounter>()

  constructor (route: string, family: HotCounterFamily<'route' | 'method' | 'status'>, duration: (seconds: number) => void) {
    this.route = route
    this.#family = family
    this.#duration = duration
  }

  /** Records one finished client request on this route. */
  observe (method: string, status: number, seconds: number): void {
    const m = METHOD_INDEX[method]
    let c: HotCounter | undefined
    if (m !== undefined) {
      const key = status * 8 + m
      c = this.#counters.get(key)
      if (c === undefined) {
        c = this.#family.hot(this.route, method, String(status))
        this.#counters.set(key, c)
      }
    } else {
      const key = `${method}\u0000${status}`
      c = this.#other.get(key)
      if (c === undefined) {
        c = this.#family.hot(this.route, method, String(status))
        this.#other.set(key, c)
      }
    }
    c.inc()
    this.#duration(seconds)
  }
}

export class Metrics {
  readonly registry = new client.Registry()
  readonly #requests: HotCounterFamily<'route' | 'method' | 'status'>
  readonly #duration: HotHistogram
  readonly #upstream: HotCounterFamily<'service' | 'deployment' | 'origin' | 'outcome'>
  readonly failovers: client.Counter<'service' | 'deployment' | 'kind'>
  readonly originHealthy: client.Gauge<'service' | 'deployment' | 'origin'>
  readonly trafficWeight: client.Gauge<'service' | 'deployment'>
  readonly trafficChanges: client.Counter<'service' | 'deployment'>
  readonly #routes = new Map<string, RouteMetrics>()

  constructor () {
    const registers = [this.registry]
    // `aggregator`: how a cluster's workers add up (src/cluster.ts): healthy
    // only if every worker sees it healthy; weights and their changes are
    // applied in every worker, so one worker's value is the cluster's.
    client.collectDefaultMetrics({ register: this.registry })
    this.#requests = new HotCounterFamily({ name: 'gateway_requests_total', help: 'Client requests by route, method and status', labelNames: ['route', 'method', 'status'], registers })
    this.#duration = new HotHistogram({ name: 'gateway_request_duration_seconds', help: 'Client request duration', buckets: DURATION_BUCKETS, registers })
    this.#upstream = new HotCounterFamily({ name: 'gateway_upstream_requests_total', help: 'Upstream attempts by origin and outcome', labelNames: ['service', 'deployment', 'origin', 'outcome'], registers })
    this.failovers = new client.Counter({ name: 'gateway_failovers_total', help: 'Retries to the other origin, stateful switches and failbacks', labelNames: ['service', 'deployment', 'kind'], registers })
    this.originHealthy = new client.Gauge({ name: 'gateway_origin_healthy', help: '1 when the origin is healthy', labelNames: ['service', 'deployment', 'origin'], registers, aggregator: 'min' })
    this.trafficWeight = new client.Gauge({ name: 'gateway_traffic_weight', help: 'Current traffic weight of a deployment', labelNames: ['service', 'deployment'], registers, aggregator: 'max' })
    this.trafficChanges = new client.Counter({ name: 'gateway_traffic_changes_total', help: 'Traffic weight changes made through the admin API, per deployment whose weight changed', labelNames: ['service', 'deployment'], registers, aggregator: 'max' })
  }

  /** Records one finished client request. */
  observeRequest (route: string, method: string, status: number, seconds: number): void {
    this.route(route).observe(method, status, seconds)
  }

  /** One route's request metrics, bound once per route label (at route registration). */
  route (label: string): RouteMetrics {
    let r = this.#routes.get(label)
    if (r === undefined) {
      r = new RouteMetrics(label, this.#requests, this.#duration.cell({ route: label }))
      this.#routes.set(label, r)
    }
    return r
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
