/**
 * Active health checking for one origin (SPEC §4): a probe every
 * `intervalMs` (±10% jitter so replicas of the gateway don't probe in
 * lock-step), `unhealthyThreshold` consecutive failures make the origin
 * unhealthy, `healthyThreshold` consecutive successes make it healthy again.
 *
 * Probes start at a fixed rate: the next one is due `intervalMs` after the
 * previous one *started*, not after it ended, so a dead origin is detected
 * within about `intervalMs × unhealthyThreshold` even when its probes time
 * out. Probes never overlap: a probe slower than the interval delays the
 * next one until it has finished.
 *
 * The checker is a two-state machine that only reports transitions
 * (`'transition'` events); it never decides where traffic goes — the origin
 * group does, from the transitions of both origins.
 */
import { EventEmitter } from 'node:events'

export interface HealthCheckOptions {
  intervalMs: number
  unhealthyThreshold: number
  healthyThreshold: number
}

/** Resolves true for a healthy answer; false or a rejection for a failed probe. */
export type Probe = () => Promise<boolean>

export interface HealthTransition {
  healthy: boolean
  reason: string
}

export class HealthChecker extends EventEmitter<{ transition: [HealthTransition], probe: [boolean] }> {
  #healthy = true
  #failures = 0
  #successes = 0
  #timer: NodeJS.Timeout | null = null
  #running = false
  #probing = false
  readonly #probe: Probe
  readonly #opts: HealthCheckOptions

  constructor (probe: Probe, opts: HealthCheckOptions) {
    super()
    this.#probe = probe
    this.#opts = opts
  }

  get healthy (): boolean { return this.#healthy }

  /** Starts probing; the first probe runs within 10% of an interval. */
  start (): void {
    if (this.#running) return
    this.#running = true
    this.#schedule(Math.random() * this.#opts.intervalMs * 0.1)
  }

  stop (): void {
    this.#running = false
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
  }

  /**
   * Marks the origin unhealthy now (its breaker opened, or it could not be
   * resolved); it then needs `healthyThreshold` good probes to come back.
   */
  markUnhealthy (reason: string): void {
    this.#successes = 0
    this.#failures = Math.max(this.#failures, this.#opts.unhealthyThreshold)
    if (this.#healthy) {
      this.#healthy = false
      this.emit('transition', { healthy: false, reason })
    }
  }

  /** Feeds one probe result; public so a caller can report an out-of-band check. */
  record (ok: boolean, detail: string): void {
    this.emit('probe', ok)
    if (ok) {
      this.#failures = 0
      this.#successes++
      if (!this.#healthy && this.#successes >= this.#opts.healthyThreshold) {
        this.#healthy = true
        this.emit('transition', { healthy: true, reason: `${this.#successes} consecutive good health checks` })
      }
    } else {
      this.#successes = 0
      this.#failures++
      if (this.#healthy && this.#failures >= this.#opts.unhealthyThreshold) {
        this.#healthy = false
        this.emit('transition', { healthy: false, reason: `${this.#failures} consecutive failed health checks (${detail})` })
      }
    }
  }

  #schedule (delay: number): void {
    if (!this.#running) return
    this.#timer = setTimeout(() => { void this.#tick() }, delay)
    this.#timer.unref()
  }

  async #tick (): Promise<void> {
    if (this.#probing) return
    this.#probing = true
    const started = performance.now()
    let ok = false
    let detail = 'failed'
    try {
      ok = await this.#probe()
      if (!ok) detail = 'bad status'
    } catch (err) {
      detail = err instanceof Error ? ((err as { code?: string }).code ?? err.name) : 'error'
    }
    this.#probing = false
    if (!this.#running) return
    this.record(ok, detail)
    const jitter = 1 + (Math.random() - 0.5) * 0.2
    this.#schedule(Math.max(0, this.#opts.intervalMs * jitter - (performance.now() - started)))
  }
}
