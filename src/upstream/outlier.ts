/**
 * Passive failure detection for one origin: an opossum circuit breaker fed
 * by the outcome of real requests. Connection failures, timeouts and 5xx
 * answers count as failures; 4xx answers are the client's problem and
 * count as successes. When the breaker opens, the origin group moves
 * traffic away at once, without waiting for health checks.
 *
 * The breaker is used as a state machine only: traffic never flows through
 * `fire()` as a wrapper (a rejected request would then be a failed client
 * request); each finished attempt is reported with `record()`.
 */
import { EventEmitter } from 'node:events'
import CircuitBreaker from 'opossum'

export interface OutlierOptions {
  errorThresholdPercentage: number
  volumeThreshold: number
  resetTimeoutMs: number
  windowMs: number
}

export type BreakerState = 'closed' | 'open' | 'halfOpen'

const FAILED = new Error('upstream attempt failed')
const pass = (ok: boolean): Promise<void> => ok ? Promise.resolve() : Promise.reject(FAILED)
const ignore = (): void => {}

export class OutlierDetector extends EventEmitter<{ state: [BreakerState] }> {
  readonly #breaker: CircuitBreaker<[boolean], void>

  constructor (opts: OutlierOptions) {
    super()
    this.#breaker = new CircuitBreaker(pass, {
      timeout: false,
      errorThresholdPercentage: opts.errorThresholdPercentage,
      volumeThreshold: opts.volumeThreshold,
      resetTimeout: opts.resetTimeoutMs,
      rollingCountTimeout: opts.windowMs,
      rollingCountBuckets: 10
    })
    this.#breaker.on('open', () => this.emit('state', 'open'))
    this.#breaker.on('halfOpen', () => this.emit('state', 'halfOpen'))
    this.#breaker.on('close', () => this.emit('state', 'closed'))
  }

  get state (): BreakerState {
    if (this.#breaker.opened) return 'open'
    if (this.#breaker.halfOpen) return 'halfOpen'
    return 'closed'
  }

  /** Reports one finished attempt. */
  record (ok: boolean): void {
    this.#breaker.fire(ok).catch(ignore)
  }

  /** Closes the breaker (the origin passed its health checks again). */
  close (): void {
    if (this.state !== 'closed') this.#breaker.close()
  }

  shutdown (): void {
    this.#breaker.shutdown()
  }
}
