/**
 * One origin of a deployment: where it is (a URL, possibly resolved later
 * from VPC Lattice), the connection pool that reaches it, and its health —
 * the active checker and the passive breaker, combined into one `healthy`
 * flag that the origin group watches.
 *
 * The pool can be swapped (a Lattice name resolved to a new address):
 * in-flight requests finish on the old pool, which then closes.
 */
import { EventEmitter } from 'node:events'
import { Pool, type Dispatcher } from 'undici'
import { HealthChecker } from './health-checker.js'
import { OutlierDetector, type BreakerState, type BreakerTransition } from './outlier.js'
import type { ServiceConfig } from '../config/schema.js'

/** The largest upstream response header block accepted (README: 64 KiB). */
export const MAX_UPSTREAM_HEADER_BYTES = 64 * 1024

export type OriginRole = 'primary' | 'secondary'

/** How one attempt ended; the `outcome` label of gateway_upstream_requests_total. */
export type Outcome = 'ok' | 'error_status' | 'connect_error' | 'timeout' | 'reset'

export interface OriginHealthEvent {
  origin: Origin
  healthy: boolean
  reason: string
}

/** Wraps a freshly built dispatcher (e.g. to sign requests); identity by default. */
export type DispatcherDecorator = (d: Dispatcher, url: URL) => Dispatcher

export interface OriginOptions {
  service: string
  deployment: string
  role: OriginRole
  config: ServiceConfig
  decorate?: DispatcherDecorator
}

export class Origin extends EventEmitter<{ health: [OriginHealthEvent], breaker: [BreakerTransition], url: [string | null] }> {
  readonly service: string
  readonly deployment: string
  readonly role: OriginRole
  readonly checker: HealthChecker
  readonly outlier: OutlierDetector
  /** Set by src/metrics.ts (Metrics.bind); null costs nothing on the hot path. */
  onOutcome: ((outcome: Outcome) => void) | null = null
  /** Bulkhead (hardening): attempts in progress, sent or waiting for a socket. */
  inFlight = 0
  /** Bulkhead: `maxConnections + maxQueued`; the send primitive refuses one more. */
  readonly maxInFlight: number
  #url: string | null = null
  #host = ''
  #pool: Dispatcher | null = null
  #probePool: Dispatcher | null = null
  #rawPools: Pool[] = []
  #healthy = true
  #unresolvedReason: string | null = null
  readonly #config: ServiceConfig
  readonly #decorate: DispatcherDecorator | undefined

  constructor (opts: OriginOptions) {
    super()
    this.service = opts.service
    this.deployment = opts.deployment
    this.role = opts.role
    this.#config = opts.config
    this.#decorate = opts.decorate
    this.maxInFlight = opts.config.maxConnections + opts.config.maxQueued
    const hc = opts.config.healthCheck
    this.checker = new HealthChecker(() => this.#probe(), hc)
    this.outlier = new OutlierDetector(opts.config.circuitBreaker)
    this.checker.on('transition', (t) => {
      // Good health checks close the breaker (SPEC §4): the origin starts
      // over with a clean run of failures.
      if (t.healthy) this.outlier.close(t.reason)
      this.#setHealthy(t.healthy && this.#url !== null, t.reason)
    })
    this.outlier.on('state', (t) => {
      // The breaker's own line first, then the health change it causes.
      this.emit('breaker', t)
      // An open breaker takes the origin out at once; it comes back only
      // through `healthyThreshold` good health checks.
      if (t.to === 'open') this.checker.markUnhealthy(`circuit breaker opened on real traffic: ${t.reason}`)
    })
  }

  get url (): string | null { return this.#url }
  /** host[:port] of the current URL, as sent in `Host`. */
  get host (): string { return this.#host }
  get healthy (): boolean { return this.#healthy }
  /** The pool for traffic; null while the origin has no address. */
  get dispatcher (): Dispatcher | null { return this.#pool }
  get breakerState (): BreakerState { return this.outlier.state }
  get label (): string { return `${this.service}/${this.deployment}/${this.role}` }

  /**
   * Points the origin at a (new) base URL, or at nothing (unresolved). The
   * old pool drains its in-flight requests and closes.
   */
  setUrl (url: string | null, reason = 'address changed'): void {
    // A new origin has no address yet: `null` must still mark it unresolved.
    if (url === this.#url && (url !== null || this.#unresolvedReason !== null)) return
    const old = this.#rawPools
    this.#rawPools = []
    this.#url = url
    if (url === null) {
      this.#pool = this.#probePool = null
      this.#host = ''
      this.#unresolvedReason = reason
      this.checker.markUnhealthy(reason)
      this.#setHealthy(false, reason)
    } else {
      const u = new URL(url)
      this.#host = u.host
      const pool = new Pool(u.origin, {
        connections: this.#config.maxConnections,
        connect: { timeout: Math.min(this.#config.timeoutMs, 10000) },
        headersTimeout: this.#config.timeoutMs,
        bodyTimeout: this.#config.timeoutMs,
        // An upstream's header block may be up to 64 KiB (undici's default: 16 KiB).
        maxHeaderSize: MAX_UPSTREAM_HEADER_BYTES
      })
      // Probes get their own sockets: a busy traffic pool must not make a
      // healthy origin look dead.
      const probe = new Pool(u.origin, { connections: 2, connect: { timeout: this.#config.healthCheck.timeoutMs } })
      this.#rawPools = [pool, probe]
      this.#pool = this.#decorate === undefined ? pool : this.#decorate(pool, u)
      this.#probePool = this.#decorate === undefined ? probe : this.#decorate(probe, u)
      if (this.#unresolvedReason !== null) {
        // Newly resolved: healthy once the checker agrees.
        this.#unresolvedReason = null
        this.#setHealthy(this.checker.healthy, 'address resolved')
      }
    }
    for (const p of old) void p.close().catch(() => {})
    this.emit('url', url)
  }

  /** Reports a finished attempt to the breaker and the metrics hook. */
  report (outcome: Outcome): void {
    this.outlier.record(outcome === 'ok' ? 'ok' : outcome === 'connect_error' ? 'connect' : 'failed')
    if (this.onOutcome !== null) this.onOutcome(outcome)
  }

  start (): void { this.checker.start() }

  async close (): Promise<void> {
    this.checker.stop()
    this.outlier.shutdown()
    const pools = this.#rawPools
    this.#rawPools = []
    await Promise.all(pools.map((p) => p.close().catch(() => {})))
  }

  #setHealthy (healthy: boolean, reason: string): void {
    if (healthy === this.#healthy) return
    this.#healthy = healthy
    this.emit('health', { origin: this, healthy, reason })
  }

  async #probe (): Promise<boolean> {
    const pool = this.#probePool
    if (pool === null) return false
    const hc = this.#config.healthCheck
    const ac = new AbortController()
    const timer = setTimeout(() => ac.abort(), hc.timeoutMs)
    try {
      const res = await pool.request({ method: 'GET', path: hc.path, signal: ac.signal, headersTimeout: hc.timeoutMs, bodyTimeout: hc.timeoutMs, headers: { 'user-agent': 'lattice-gateway-health' } })
      await res.body.dump()
      return res.statusCode >= 200 && res.statusCode < 300
    } finally {
      clearTimeout(timer)
    }
  }
}
