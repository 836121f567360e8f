/**
 * Passive failure detection for one origin: an opossum circuit breaker fed
 * by the outcome of real requests. Connection failures, timeouts, resets
 * and 5xx answers count as failures; 4xx answers are the client's problem
 * and count as successes. When the breaker opens, the origin group moves
 * traffic away at once, without waiting for health checks.
 *
 * Two rules open the breaker, whichever trips first:
 * - opossum's own: more than `errorThresholdPercentage` of the attempts in
 *   the rolling `windowMs` failed, once the window holds `volumeThreshold`
 *   attempts;
 * - a run of `volumeThreshold` consecutive failures. Under heavy traffic
 *   the rolling window is full of successes from before an origin died, and
 *   the percentage alone would need as many failures again to trip; a run
 *   of failures with no success between them is the origin dying now.
 *
 * The breaker is used as a state machine only: traffic never flows through
 * `fire()` as a wrapper (a rejected request would then be a failed client
 * request); each finished attempt is reported with `record()`.
 *
 * The common case — a success while the breaker is closed — is reported as
 * the two events a successful `fire()` emits ('fire', then 'success'),
 * which is what opossum's rolling statistics count. `fire()` itself costs
 * three promises and their microtasks per attempt, measurable on every
 * request of the gateway. Failures, and any attempt while the breaker is
 * open or half-open, still go through `fire()`, so opossum's own opening,
 * rejecting and closing logic decides those.
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

/**
 * How one finished attempt counts: `connect` — the connection could not be
 * established; `failed` — a timeout, a reset or a 5xx answer; `ok` —
 * anything else, 4xx included.
 */
export type AttemptVerdict = 'ok' | 'connect' | 'failed'

export interface BreakerTransition {
  from: BreakerState
  to: BreakerState
  reason: string
}

const FAILED = new Error('upstream attempt failed')
const pass = (ok: boolean): Promise<void> => ok ? Promise.resolve() : Promise.reject(FAILED)
const ignore = (): void => {}
const NO_ARGS: [] = []

export class OutlierDetector extends EventEmitter<{ state: [BreakerTransition] }> {
  readonly #breaker: CircuitBreaker<[boolean], void>
  readonly #opts: OutlierOptions
  #state: BreakerState = 'closed'
  /** Failures since the last success (or since the breaker last closed). */
  #run = 0
  #runConnect = 0
  /** Why the next transition happens, when this module caused it. */
  #reason: string | null = null

  constructor (opts: OutlierOptions) {
    super()
    this.#opts = opts
    this.#breaker = new CircuitBreaker(pass, {
      timeout: false,
      errorThresholdPercentage: opts.errorThresholdPercentage,
      volumeThreshold: opts.volumeThreshold,
      resetTimeout: opts.resetTimeoutMs,
      rollingCountTimeout: opts.windowMs,
      rollingCountBuckets: 10,
      // Latency percentiles are not used; keeping them costs an array push per attempt.
      rollingPercentilesEnabled: false
    })
    this.#breaker.on('open', () => this.#transition('open', this.#reason ?? this.#rateReason()))
    this.#breaker.on('halfOpen', () => this.#transition('halfOpen', `reset timeout of ${opts.resetTimeoutMs} ms elapsed`))
    this.#breaker.on('close', () => this.#transition('closed', this.#reason ?? 'a trial request succeeded'))
  }

  get state (): BreakerState { return this.#state }

  /** Reports one finished attempt. */
  record (verdict: AttemptVerdict): void {
    if (verdict === 'ok') {
      this.#run = this.#runConnect = 0
      if (this.#state === 'closed') {
        this.#breaker.emit('fire', NO_ARGS)
        this.#breaker.emit('success', undefined, 0)
        return
      }
    } else {
      this.#run++
      if (verdict === 'connect') this.#runConnect++
      if (this.#run >= this.#opts.volumeThreshold && this.#state === 'closed') {
        const what = this.#runConnect === this.#run ? 'connection failures' : 'failed requests'
        this.#withReason(`${this.#run} consecutive ${what}`, () => this.#breaker.open())
      }
    }
    this.#breaker.fire(verdict === 'ok').catch(ignore)
  }

  /** Closes the breaker (the origin passed its health checks again). */
  close (reason: string): void {
    this.#run = this.#runConnect = 0
    if (this.#state !== 'closed') this.#withReason(reason, () => this.#breaker.close())
  }

  shutdown (): void {
    this.#breaker.shutdown()
  }

  #withReason (reason: string, fn: () => void): void {
    this.#reason = reason
    try { fn() } finally { this.#reason = null }
  }

  #transition (to: BreakerState, reason: string): void {
    const from = this.#state
    if (from === to) return
    this.#state = to
    if (to === 'closed') this.#run = this.#runConnect = 0
    this.emit('state', { from, to, reason })
  }

  #rateReason (): string {
    const s = this.#breaker.stats
    if (this.#state === 'halfOpen') return 'the trial request failed'
    const pct = s.fires === 0 ? 0 : Math.round(s.failures / s.fires * 100)
    return `${pct}% of ${s.fires} requests failed in the last ${this.#opts.windowMs} ms (threshold ${this.#opts.errorThresholdPercentage}%)`
  }
}
