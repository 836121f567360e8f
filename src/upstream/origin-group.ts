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
    const body = new UpstreamBody()
    let controller: Dispatcher.DispatchController | null = null
    let pendingAbort: Error | null = null
    let responded = false
    let finished = false
    const abort = (reason: Error): void => {
      if (controller !== null) controller.abort(reason)
      else pendingAbort = reason
    }
    // The deadline covers the origin's time only (SPEC §17): time spent
    // waiting for a slow client to send its body is never the origin being
    // late. With a streamed body it runs until the stream starts flowing
    // (connected, head sent), while the origin holds the stream back
    // (backpressure: undici pauses it), and from the body's last byte
    // handed over to the answer's end. (undici 7's handler API has no
    // request-sent callback — its UnwrapHandler drops onRequestSent — but
    // it writes each chunk to the socket as the stream delivers it, so the
    // stream's 'pause', 'resume' and 'end' are those moments.)
    const payload = req.body === null ? null : req.body.open()
    let timer: NodeJS.Timeout | null = null
    const arm = (): void => { if (!finished && timer === null) timer = setTimeout(abortOnDeadline, policy.timeoutMs, abort) }
    const disarm = (): void => {
      if (timer === null) return
      clearTimeout(timer)
      timer = null
    }
    arm()
    if (payload !== null && typeof payload !== 'string' && !Buffer.isBuffer(payload)) {
      payload.on('resume', disarm)
      payload.on('pause', arm)
      payload.once('end', arm)
    }
    const onCallerAbort = (): void => abort(caller?.reason as Error)
    caller?.addEventListener('abort', onCallerAbort, { once: true })
    // Releases the attempt's slot and timer once the origin is done with it.
    const done = (): void => {
      if (finished) return
      finished = true
      origin.inFlight--
      disarm()
      caller?.removeEventListener('abort', onCallerAbort)
    }
    body.onFinish(done)
    const failed = (err: Error): void => {
      done()
      // A request body that failed on its own (too large) is not the origin's fault.
      if (!isOwnError(err)) {
        const kind = classifyUpstreamError(err)
        origin.report(kind === 'connect' ? 'connect_error' : kind)
      }
      reject(err)
    }
    const handler: Dispatcher.DispatchHandler = {
      onRequestStart (c) {
        controller = c
        if (pendingAbort !== null) c.abort(pendingAbort)
      },
      onResponseStart (c, statusCode, headers) {
        responded = true
        body.attach(c)
        origin.report(statusCode >= 500 ? 'error_status' : 'ok')
        resolve({ statusCode, headers, body, origin, retried })
      },
      onResponseData (_c, chunk) { body.push(chunk) },
      onResponseEnd () {
        done()
        body.end()
      },
      onResponseError (_c, err) {
        if (!responded) {
          failed(err)
          return
        }
        done()
        body.fail(err)
      }
    }
    try {
      dispatcher.dispatch({
        method: req.method as Dispatcher.HttpMethod,
        path: req.path,
        headers: req.headers,
        body: payload
      }, handler)
    } catch (err) {
      failed(err as Error)
    }
  })
}

const ignore = (): void => {}

/** An error the gateway raised about the request itself (e.g. its body is too large), not about an origin. */
function isOwnError (err: unknown): boolean {
  return err instanceof GatewayError && err.code !== 'GW_DEADLINE'
}

function abortOnDeadline (abort: (reason: Error) => void): void {
  abort(new GatewayError('GW_DEADLINE', 'upstream attempt timed out'))
}

