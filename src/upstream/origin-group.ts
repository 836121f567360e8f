/**
 * A deployment's origins — a primary and an optional secondary — and the
 * one function that sends a request through them with failover (SPEC §4).
 * Proxy routes and aggregate sections both call `send()`; failover logic
 * lives here and nowhere else.
 *
 * Two mechanisms, as in the AWS hybrid-failover pattern but without its
 * minute-long switch:
 * - stateful: `active` follows the origins' health transitions (active
 *   checks and the passive breaker). While the primary is down and the
 *   secondary up, requests go straight to the secondary.
 * - stateless: a failed attempt is sent once to the other origin when that
 *   is safe: always when the connection could not be established (nothing
 *   was sent), otherwise only for a `retry.methods` request whose body, if
 *   any, can be sent again.
 */
import { EventEmitter } from 'node:events'
import type { IncomingHttpHeaders } from 'node:http'
import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import { GatewayError, classifyUpstreamError, errorCode } from '../errors.js'
import type { Origin, OriginRole, OriginHealthEvent } from './origin.js'
import { UpstreamBody } from './upstream-body.js'
import type { CancelSignal } from './cancel.js'

export type FailoverKind = 'retry' | 'switch' | 'failback'

export interface FailoverEvent {
  service: string
  deployment: string
  kind: FailoverKind
  from: OriginRole
  to: OriginRole
  reason: string
}

/** What a service's config says about retrying; compiled once into Sets. */
export interface SendPolicy {
  methods: ReadonlySet<string>
  onStatus: ReadonlySet<number>
  timeoutMs: number
}

/** A request body that can be handed to one attempt, and maybe another. */
export interface RequestBody {
  /** A body for one attempt. */
  open(): Buffer | string | Readable
  /** True once any byte was pulled for sending: the origin may have it. */
  readonly started: boolean
  /** True when `open()` can be called again (the body is buffered). */
  readonly replayable: boolean
}

export interface UpstreamRequest {
  method: string
  /** Path and query on the origin. */
  path: string
  headers: Record<string, string | string[]>
  body: RequestBody | null
  /** The caller's deadline (aggregate routes); aborting it stops everything. */
  signal?: CancelSignal
}

export interface UpstreamResponse {
  statusCode: number
  headers: IncomingHttpHeaders
  body: UpstreamBody
  origin: Origin
  /** True when this answer came from the second attempt. */
  retried: boolean
}

export type FailbackMode = 'auto' | 'manual'

export class OriginGroup extends EventEmitter<{ failover: [FailoverEvent] }> {
  readonly service: string
  readonly deployment: string
  readonly primary: Origin
  readonly secondary: Origin | null
  readonly failbackMode: FailbackMode
  /** Set by src/metrics.ts (Metrics.bind): counts stateless retries. */
  onRetry: ((from: Origin, to: Origin, reason: string) => void) | null = null
  #active: Origin
  #failbackRequested = false

  constructor (service: string, deployment: string, primary: Origin, secondary: Origin | null, failback: FailbackMode) {
    super()
    this.service = service
    this.deployment = deployment
    this.primary = primary
    this.secondary = secondary
    this.failbackMode = failback
    // An origin may start unhealthy (an unresolved Lattice name): start on
    // the secondary then, without a transition — nothing has switched yet.
    this.#active = !primary.healthy && secondary !== null && secondary.healthy ? secondary : primary
    const onHealth = (e: OriginHealthEvent): void => this.#reevaluate(`${e.origin.role} ${e.healthy ? 'healthy' : 'unhealthy'}: ${e.reason}`)
    primary.on('health', onHealth)
    secondary?.on('health', onHealth)
  }

  /** The origin traffic goes to now (stateful choice). */
  get active (): Origin { return this.#active }

  /** True when some origin of this deployment is healthy. */
  get healthy (): boolean { return this.primary.healthy || (this.secondary?.healthy ?? false) }

  /** An operator failback waits for this group's primary to turn healthy. */
  get failbackPending (): boolean { return this.#failbackRequested }

  /**
   * Returns a `manual` deployment to its primary. Throws GW_CONFLICT when the
   * primary is not healthy (traffic would only move straight back).
   * Resolves false when traffic is already on the primary.
   */
  failback (): boolean {
    if (this.#active === this.primary) return false
    if (!this.primary.healthy) throw new GatewayError('GW_CONFLICT', `the primary of ${this.service}/${this.deployment} is not healthy; failback refused`)
    return this.requestFailback() === 'moved'
  }

  /**
   * An operator failback that never fails: 'moved' (traffic is on the
   * primary now), 'already' (it was), or 'pending' — the primary is not
   * healthy as this process sees it, and traffic moves there as soon as it
   * is. A pending request outlives later switches and failures; only
   * reaching a healthy primary fulfils it. Used where each process holds
   * its own view of health (cluster workers, fleet replicas).
   */
  requestFailback (): 'moved' | 'already' | 'pending' {
    if (this.#active === this.primary) {
      this.#failbackRequested = false
      return 'already'
    }
    if (!this.primary.healthy) {
      this.#failbackRequested = true
      return 'pending'
    }
    this.#moveTo(this.primary, 'failback', 'operator failback')
    return 'moved'
  }

  /**
   * Sends a request with failover; resolves with the answer the client
   * should see. The answer is returned as soon as its headers arrive: once
   * the caller starts streaming the body on, the request is never retried.
   */
  async send (req: UpstreamRequest, policy: SendPolicy): Promise<UpstreamResponse> {
    let first = this.#active
    let second = first === this.primary ? this.secondary : this.primary
    // An origin without an address (unresolved Lattice name) is skipped.
    if (first.dispatcher === null && second !== null && second.dispatcher !== null) [first, second] = [second, first]
    const replayable = policy.methods.has(req.method) && (req.body === null || req.body.replayable)
    let reason: string
    try {
      const res = await attempt(first, req, policy, false)
      if (second === null || !replayable || !policy.onStatus.has(res.statusCode)) return res
      // The client sees the second answer only.
      res.body.dump().catch(ignore)
      reason = `status ${res.statusCode}`
    } catch (err) {
      if (second === null || req.signal?.aborted === true || isOwnError(err)) throw err
      const kind = classifyUpstreamError(err)
      // Nothing reached the origin, so every method may go to the other one, as
      // long as no byte of a streamed body was pulled for the first.
      const neverSent = kind === 'connect' && (req.body === null || !req.body.started)
      if (!neverSent && !replayable) throw err
      reason = kind === 'connect' ? `could not connect (${errorCode(err) ?? 'error'})` : kind
    }
    if (this.onRetry !== null) this.onRetry(first, second, reason)
    return attempt(second, req, policy, true)
  }

  #reevaluate (reason: string): void {
    const p = this.primary
    const s = this.secondary
    if (s === null) return
    if (this.#active === p) {
      if (!p.healthy && s.healthy) this.#moveTo(s, 'switch', reason)
    } else if (p.healthy && this.#failbackRequested && s.healthy) {
      this.#moveTo(p, 'failback', `operator failback (requested while the primary was unhealthy); ${reason}`)
    } else if (p.healthy && (this.failbackMode === 'auto' || !s.healthy)) {
      this.#moveTo(p, s.healthy ? 'failback' : 'switch', reason)
    } else if (!p.healthy && !s.healthy) {
      // Both down: the primary is the least bad choice.
      this.#moveTo(p, 'switch', reason)
    }
  }

  #moveTo (to: Origin, kind: FailoverKind, reason: string): void {
    const from = this.#active
    this.#active = to
    // Only a healthy primary fulfils an operator's failback request.
    if (to === this.primary && to.healthy) this.#failbackRequested = false
    this.emit('failover', { service: this.service, deployment: this.deployment, kind, from: from.role, to: to.role, reason })
  }
}

/** One attempt on one origin, bounded by the service's `timeoutMs` of the origin's time, from connect to the answer's last byte. */
async function attempt (origin: Origin, req: UpstreamRequest, policy: SendPolicy, retried: boolean): Promise<UpstreamResponse> {
  const dispatcher = origin.dispatcher
  if (dispatcher === null) {
    origin.report('connect_error')
    throw Object.assign(new Error(`${origin.label} has no address yet`), { code: 'GW_UNRESOLVED' })
  }
  const caller = req.signal
  if (caller?.aborted === true) throw caller.reason
  // Bulkhead (hardening): an origin holds at most `maxConnections +
  // maxQueued` attempts, sent or waiting for a socket; one more is refused
  // at once, so a slow service cannot hold every client. Nothing was sent
  // and the origin is not to blame: no report to its breaker.
  if (origin.inFlight >= origin.maxInFlight) {
    throw new GatewayError('GW_OVERLOADED', `service ${origin.service} has too many requests waiting`, { headers: { 'retry-after': String(Math.max(1, Math.ceil(policy.timeoutMs / 1000))) } })
  }
  origin.inFlight++
  return new Promise<UpstreamResponse>((resolve, reject) => {
    const a = new Attempt(origin, req, policy, retried, resolve, reject)
    try {
      dispatcher.dispatch({
        method: req.method as Dispatcher.HttpMethod,
        path: req.path,
        headers: req.headers,
        body: a.payload
      }, a)
    } catch (err) {
      a.failed(err as Error)
    }
  })
}

/**
 * One attempt's state and undici dispatch handler: one object per attempt
 * where closures would be one each. Its methods are the attempt's steps.
 *
 * The deadline covers the origin's time only (SPEC §17): time spent
 * waiting for a slow client to send its body is never the origin being
 * late. With a streamed body it runs until the stream starts flowing
 * (connected, head sent), while the origin holds the stream back
 * (backpressure: undici pauses it), and from the body's last byte
 * handed over to the answer's end. (undici 7's handler API has no
 * request-sent callback — its UnwrapHandler drops onRequestSent — but
 * it writes each chunk to the socket as the stream delivers it, so the
 * stream's 'pause', 'resume' and 'end' are those moments.)
 */
class Attempt implements Dispatcher.DispatchHandler {
  readonly body = new UpstreamBody()
  readonly payload: Buffer | string | Readable | null
  readonly #origin: Origin
  readonly #caller: CancelSignal | undefined
  readonly #timeoutMs: number
  readonly #retried: boolean
  readonly #resolve: (res: UpstreamResponse) => void
  readonly #reject: (err: Error) => void
  #controller: Dispatcher.DispatchController | null = null
  #pendingAbort: Error | null = null
  #responded = false
  #finished = false
  #timer: NodeJS.Timeout | null = null
  #onCallerAbort: (() => void) | null = null

  constructor (origin: Origin, req: UpstreamRequest, policy: SendPolicy, retried: boolean, resolve: (res: UpstreamResponse) => void, reject: (err: Error) => void) {
    this.#origin = origin
    this.#caller = req.signal
    this.#timeoutMs = policy.timeoutMs
    this.#retried = retried
    this.#resolve = resolve
    this.#reject = reject
    const payload = req.body === null ? null : req.body.open()
    this.payload = payload
    this.arm()
    if (payload !== null && typeof payload !== 'string' && !Buffer.isBuffer(payload)) {
      payload.on('resume', () => this.disarm())
      payload.on('pause', () => this.arm())
      payload.once('end', () => this.arm())
    }
    const caller = this.#caller
    if (caller !== undefined) {
      this.#onCallerAbort = () => this.abort(caller.reason as Error)
      caller.addEventListener('abort', this.#onCallerAbort, { once: true })
    }
    this.body.onFinish(() => this.done())
  }

  abort (reason: Error): void {
    if (this.#controller !== null) this.#controller.abort(reason)
    else this.#pendingAbort = reason
  }

  arm (): void { if (!this.#finished && this.#timer === null) this.#timer = setTimeout(abortOnDeadline, this.#timeoutMs, this) }

  disarm (): void {
    if (this.#timer === null) return
    clearTimeout(this.#timer)
    this.#timer = null
  }

  /** Releases the attempt's slot and timer once the origin is done with it. */
  done (): void {
    if (this.#finished) return
    this.#finished = true
    this.#origin.inFlight--
    this.disarm()
    if (this.#onCallerAbort !== null) this.#caller?.removeEventListener('abort', this.#onCallerAbort)
  }

  failed (err: Error): void {
    this.done()
    // A request body that failed on its own (too large) is not the origin's fault.
    if (!isOwnError(err)) {
      const kind = classifyUpstreamError(err)
      this.#origin.report(kind === 'connect' ? 'connect_error' : kind)
    }
    this.#reject(err)
  }

  onRequestStart (c: Dispatcher.DispatchController): void {
    this.#controller = c
    if (this.#pendingAbort !== null) c.abort(this.#pendingAbort)
  }

  onResponseStart (c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    this.#responded = true
    this.body.attach(c)
    this.#origin.report(statusCode >= 500 ? 'error_status' : 'ok')
    this.#resolve({ statusCode, headers, body: this.body, origin: this.#origin, retried: this.#retried })
  }

  onResponseData (_c: Dispatcher.DispatchController, chunk: Buffer): void { this.body.push(chunk) }

  onResponseEnd (): void {
    this.done()
    this.body.end()
  }

  onResponseError (_c: Dispatcher.DispatchController, err: Error): void {
    if (!this.#responded) {
      this.failed(err)
      return
    }
    this.done()
    this.body.fail(err)
  }
}

const ignore = (): void => {}

/** An error the gateway raised about the request itself (e.g. its body is too large), not about an origin. */
function isOwnError (err: unknown): boolean {
  return err instanceof GatewayError && err.code !== 'GW_DEADLINE'
}

function abortOnDeadline (a: Attempt): void {
  a.abort(new GatewayError('GW_DEADLINE', 'upstream attempt timed out'))
}

