/**
 * Executes a compiled aggregate plan for one request: every section is
 * sent at once through its service's failover send primitive (so a
 * section's primary failing moves to its secondary exactly as a proxied
 * request would), all under one AbortController that carries the route's
 * deadline. The service bounds each attempt (`timeoutMs`); this bounds the
 * whole fan-out, and aborting releases every outstanding socket.
 *
 * A section's answer counts only when it is 2xx, JSON by content type,
 * valid UTF-8 JSON by content and within `maxSectionBytes`. The merged
 * answer is spliced from the sections' own validated bytes — nothing is
 * parsed into objects or re-serialised (json-check.ts validates in one
 * pass) — so a section's JSON reaches the client byte for byte.
 *
 * A required section that fails decides the answer at once: 4xx -> that
 * status (GW_SECTION_STATUS), deadline or attempt timeout -> 504
 * (GW_DEADLINE), anything else -> 502 (GW_UPSTREAM_FAILED). The calls still
 * running are not aborted then — most are about to answer, and aborting
 * would destroy their keep-alive sockets — but their bodies are dumped
 * unread, and the route deadline still aborts whatever is left.
 */
import { isUtf8 } from 'node:buffer'
import type { IncomingHttpHeaders } from 'node:http'
import type { Readable } from 'node:stream'
import { GatewayError, classifyUpstreamError } from '../errors.js'
import type { UpstreamResponse } from '../upstream/origin-group.js'
import type { UpstreamBody } from '../upstream/upstream-body.js'
import { Cancellation } from '../upstream/cancel.js'
import { fillTemplate, type AggregatePlan, type SectionOutcome, type SectionPlan } from './plan.js'
import { isJsonText } from './json-check.js'

/** What one section produced. */
export interface SectionResult {
  outcome: SectionOutcome
  /** The validated JSON bytes when `outcome` is `ok`. */
  body: Buffer | null
  /** The upstream status, 0 when there was no answer. */
  status: number
  /** Which origin answered (service/deployment/role), when one did. */
  origin: string | null
  /** Why it failed, for the log (never sent to the client). */
  cause: unknown
}

export type FanoutResult =
  | {
    ok: true
    /** The merged JSON document. */
    body: Buffer
    /** Failed section keys in config order, comma-joined; null when complete. */
    failed: string | null
    /** One `key=origin` (or `key=!outcome`) per section, for the access log. */
    upstream: string
  }
  | { ok: false, error: GatewayError, upstream: string }

/** Section call headers: forwarded client headers, `x-request-id`, `accept`, `x-forwarded-*`. */
export function sectionHeaders (plan: AggregatePlan, client: IncomingHttpHeaders, requestId: string, ip: string, protocol: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {}
  const fwd = plan.forwardHeaders
  for (let i = 0; i < fwd.length; i++) {
    const v = client[fwd[i]!]
    if (v !== undefined) out[fwd[i]!] = v
  }
  if (!plan.forwardsAccept) out.accept = 'application/json'
  out['x-request-id'] = requestId
  const xff = client['x-forwarded-for']
  out['x-forwarded-for'] = xff === undefined ? ip : `${Array.isArray(xff) ? xff.join(', ') : xff}, ${ip}`
  out['x-forwarded-proto'] = protocol
  if (client.host !== undefined) out['x-forwarded-host'] = client.host
  return out
}

/** Runs the plan; never rejects. */
export function execute (plan: AggregatePlan, params: Readonly<Record<string, string | undefined>>, clientHeaders: IncomingHttpHeaders, headers: Record<string, string | string[]>): Promise<FanoutResult> {
  // Every section path is filled before anything is sent: a parameter that
  // would make a "." or ".." segment refuses the request (plan.ts fillTemplate).
  const paths: string[] = []
  for (const s of plan.sections) {
    const path = fillTemplate(s.template, params)
    if (path === null) return Promise.resolve({ ok: false, error: new GatewayError('GW_BAD_REQUEST', `a route parameter would make a "." or ".." path segment in section ${s.key}`), upstream: `${s.key}=!bad-parameter` })
    paths.push(path)
  }
  return new Promise((resolve) => {
    new Fanout(plan, paths, clientHeaders, headers, resolve).start()
  })
}

const NULL = Buffer.from('null')
const CLOSE = Buffer.from('}')

/** The state of one aggregate request. */
class Fanout {
  readonly #plan: AggregatePlan
  /** Each section's filled path, in plan order. */
  readonly #paths: readonly string[]
  readonly #clientHeaders: IncomingHttpHeaders
  readonly #headers: Record<string, string | string[]>
  readonly #resolve: (r: FanoutResult) => void
  readonly #results: Array<SectionResult | undefined>
  readonly #ac = new Cancellation()
  /** Section calls still running (answered or not, the deadline covers them all). */
  #running: number
  /** Sections the answer still waits for. */
  #waiting: number
  #done = false
  #deadlinePassed = false
  #timer: NodeJS.Timeout | null = null

  constructor (plan: AggregatePlan, paths: readonly string[], clientHeaders: IncomingHttpHeaders, headers: Record<string, string | string[]>, resolve: (r: FanoutResult) => void) {
    this.#plan = plan
    this.#paths = paths
    this.#clientHeaders = clientHeaders
    this.#headers = headers
    this.#resolve = resolve
    this.#results = new Array<SectionResult | undefined>(plan.sections.length)
    this.#running = this.#waiting = plan.sections.length
  }

  start (): void {
    this.#timer = setTimeout(onDeadline, this.#plan.timeoutMs, this)
    const sections = this.#plan.sections
    for (let i = 0; i < sections.length; i++) {
      const s = sections[i]!
      fetchSection(this, s, this.#paths[i]!).then((r) => this.#settle(s, r), (err: unknown) => this.#settle(s, failed('error', err, null, 0)))
    }
  }

  get signal (): Cancellation { return this.#ac }
  get clientHeaders (): IncomingHttpHeaders { return this.#clientHeaders }
  get headers (): Record<string, string | string[]> { return this.#headers }
  get maxBytes (): number { return this.#plan.maxSectionBytes }
  /** True once the answer is decided: a section still running is no longer needed. */
  get done (): boolean { return this.#done }
  get deadlinePassed (): boolean { return this.#deadlinePassed }

  /**
   * The route's deadline passed: every call still running is aborted (its
   * socket released) and, if the answer is still open, unanswered sections
   * fail as `deadline`.
   */
  deadline (): void {
    this.#timer = null
    this.#deadlinePassed = true
    this.#ac.abort(new GatewayError('GW_DEADLINE', `route deadline of ${this.#plan.timeoutMs} ms passed`))
    if (this.#done) return
    this.#markUnanswered('deadline')
    const required = this.#plan.sections.find((s) => s.required && this.#results[s.index]!.outcome === 'deadline')
    if (required !== undefined) {
      this.#fail(new GatewayError('GW_DEADLINE', `the route deadline of ${this.#plan.timeoutMs} ms passed before section ${required.key} answered`, { section: required.key, headers: failedHeaders(required.key) }))
    } else {
      this.#finish()
    }
  }

  #settle (s: SectionPlan, r: SectionResult): void {
    if (--this.#running === 0 && this.#timer !== null) {
      clearTimeout(this.#timer)
      this.#timer = null
    }
    if (this.#done) return
    this.#results[s.index] = r
    if (s.counters !== null) s.counters[r.outcome].inc()
    if (r.outcome !== 'ok' && s.required) {
      // Answer now. Calls still running are left to finish (their sockets
      // stay in the pool) and are aborted if the deadline comes first.
      this.#markUnanswered('cancelled')
      this.#fail(requiredFailure(s, r))
      return
    }
    if (--this.#waiting === 0) this.#finish()
  }

  /** Gives every unanswered section `outcome` (and counts it). */
  #markUnanswered (outcome: SectionOutcome): void {
    const sections = this.#plan.sections
    for (let i = 0; i < sections.length; i++) {
      if (this.#results[i] !== undefined) continue
      const s = sections[i]!
      this.#results[i] = failed(outcome, null, null, 0)
      if (s.counters !== null) s.counters[outcome].inc()
    }
  }

  #fail (error: GatewayError): void {
    this.#done = true
    if (this.#plan.counters !== null) this.#plan.counters.failed.inc()
    this.#resolve({ ok: false, error, upstream: this.#upstream() })
  }

  #finish (): void {
    this.#done = true
    const sections = this.#plan.sections
    const parts = new Array<Buffer>(sections.length * 2 + 1)
    let failedKeys: string | null = null
    for (let i = 0; i < sections.length; i++) {
      const s = sections[i]!
      const r = this.#results[i]!
      parts[2 * i] = s.prefix
      if (r.outcome === 'ok') {
        parts[2 * i + 1] = r.body!
      } else {
        parts[2 * i + 1] = NULL
        failedKeys = failedKeys === null ? s.key : `${failedKeys},${s.key}`
      }
    }
    parts[sections.length * 2] = CLOSE
    if (this.#plan.counters !== null) this.#plan.counters[failedKeys === null ? 'complete' : 'partial'].inc()
    this.#resolve({ ok: true, body: Buffer.concat(parts), failed: failedKeys, upstream: this.#upstream() })
  }

  #upstream (): string {
    const sections = this.#plan.sections
    let out = ''
    for (let i = 0; i < sections.length; i++) {
      const r = this.#results[i]
      const what = r === undefined ? '!cancelled' : r.outcome === 'ok' ? r.origin! : `!${r.outcome}${r.status === 0 ? '' : `:${r.status}`}`
      out += `${i === 0 ? '' : ' '}${sections[i]!.key}=${what}`
    }
    return out
  }
}

function onDeadline (f: Fanout): void { f.deadline() }

/** Fetches one section through its service; resolves with what happened, never rejects. */
async function fetchSection (f: Fanout, s: SectionPlan, path: string): Promise<SectionResult> {
  let res: UpstreamResponse
  try {
    res = await s.service.send({ method: 'GET', path, headers: f.headers, body: null, signal: f.signal }, f.clientHeaders)
  } catch (err) {
    return failed(errorOutcome(f, err), err, null, 0)
  }
  const status = res.statusCode
  const origin = res.origin.label
  const body = res.body
  if (f.done) {
    // The answer went out without this section: keep the socket if the rest is small.
    body.dump().catch(noop)
    return failed('cancelled', null, origin, status)
  }
  if (status < 200 || status > 299) {
    body.dump().catch(noop)
    return failed(status >= 400 && status < 500 ? 'client_error' : 'error_status', null, origin, status)
  }
  if (!isJsonType(res.headers['content-type'])) {
    body.dump().catch(noop)
    return failed('invalid_body', new Error('the answer is not JSON (content type)'), origin, status)
  }
  const max = f.maxBytes
  const cl = res.headers['content-length']
  if (cl !== undefined && Number(cl) > max) {
    // Reading it only to throw it away costs more than a new connection.
    body.destroy()
    return failed('too_large', null, origin, status)
  }
  let bytes: Buffer | null
  try {
    bytes = await readCapped(body, max)
  } catch (err) {
    return failed(errorOutcome(f, err), err, origin, status)
  }
  if (bytes === null) return failed('too_large', null, origin, status)
  if (!isJson(bytes)) return failed('invalid_body', new Error('the answer is not valid JSON'), origin, status)
  return { outcome: 'ok', body: bytes, status, origin, cause: null }
}

function failed (outcome: SectionOutcome, cause: unknown, origin: string | null, status: number): SectionResult {
  return { outcome, body: null, status, origin, cause }
}

function errorOutcome (f: Fanout, err: unknown): SectionOutcome {
  if (f.deadlinePassed) return 'deadline'
  return classifyUpstreamError(err) === 'timeout' ? 'timeout' : 'error'
}

/** The client-facing error for a required section that failed. */
function requiredFailure (s: SectionPlan, r: SectionResult): GatewayError {
  const headers = failedHeaders(s.key)
  const where = `section ${s.key} (service ${s.serviceName})`
  const opts = { section: s.key, headers, cause: r.cause ?? undefined }
  // The service's bulkhead refused the call (nothing was sent): the
  // gateway sheds load, 503 with the bulkhead's Retry-After.
  if (r.cause instanceof GatewayError && r.cause.code === 'GW_OVERLOADED') {
    return new GatewayError('GW_OVERLOADED', `${where}: ${r.cause.message}`, { ...opts, headers: { ...headers, ...r.cause.headers } })
  }
  switch (r.outcome) {
    case 'client_error':
      return new GatewayError('GW_SECTION_STATUS', `${where} answered ${r.status}`, { ...opts, statusCode: r.status })
    case 'timeout':
      return new GatewayError('GW_DEADLINE', `${where} did not answer in time`, opts)
    case 'error_status':
      return new GatewayError('GW_UPSTREAM_FAILED', `${where} answered ${r.status}`, opts)
    case 'invalid_body':
      return new GatewayError('GW_UPSTREAM_FAILED', `${where} did not answer with valid JSON`, opts)
    case 'too_large':
      return new GatewayError('GW_UPSTREAM_FAILED', `${where} answered with more than the section limit`, opts)
    default:
      return new GatewayError('GW_UPSTREAM_FAILED', `${where}: every allowed origin failed`, opts)
  }
}

function failedHeaders (key: string): Record<string, string> {
  return { 'x-aggregate-complete': 'false', 'x-aggregate-failed': key }
}

/** `application/json` or any `+json` media type, parameters ignored. */
export function isJsonType (ct: string | undefined): boolean {
  if (ct === undefined) return false
  if (ct === 'application/json' || ct.startsWith('application/json;')) return true
  const semi = ct.indexOf(';')
  const type = (semi === -1 ? ct : ct.slice(0, semi)).trim().toLowerCase()
  return type === 'application/json' || (type.endsWith('+json') && type.indexOf('/') > 0)
}

/** UTF-8 JSON text (RFC 8259 §8.1), checked without building the value. */
export function isJson (bytes: Buffer): boolean {
  return isUtf8(bytes) && isJsonText(bytes)
}

/** The whole body, or null (body destroyed) once it passes `max` bytes. */
function readCapped (body: UpstreamBody, max: number): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let n = 0
    body.consume({
      data (chunk) {
        n += chunk.length
        if (n > max) {
          body.destroy()
          resolve(null)
          return false
        }
        chunks.push(chunk)
        return true
      },
      end () { resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, n)) },
      error: reject
    })
  })
}

function noop (): void {}
