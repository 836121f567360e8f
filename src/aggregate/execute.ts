/**
 * Executes a compiled aggregate plan for one request: every section is
 * sent through its service's failover send primitive (so a section's
 * primary failing moves to its secondary exactly as a proxied request
 * would), all under one Cancellation that carries the route's deadline.
 * The service bounds each attempt (`timeoutMs`); this bounds the whole
 * fan-out, and aborting releases every outstanding socket.
 *
 * Sections that wait for nothing start at once, in parallel; a chained
 * section (`{product.sku}`, SPEC §12) starts the moment the last section
 * it names has answered, and fails (`dependency`) when one of them failed
 * or the field is not a string or number.
 *
 * A section's answer counts only when it is 2xx, JSON by content type,
 * valid UTF-8 JSON by content and within `maxSectionBytes`. The merged
 * answer is spliced from the sections' own validated bytes — a section
 * that is neither shaped, nor read by another, nor trimmed by `?fields=`
 * is never parsed into objects or re-serialised (json-check.ts validates
 * in one pass) — so its JSON reaches the client byte for byte.
 *
 * Before a call: a fresh cached answer is served without one, and
 * identical concurrent calls share one (singleflight). After a call that
 * failed on every origin, a stale cached answer stands in.
 *
 * A required section that fails decides the answer at once: 4xx -> that
 * status (GW_SECTION_STATUS), deadline or attempt timeout -> 504
 * (GW_DEADLINE), anything else -> 502 (GW_UPSTREAM_FAILED). The calls still
 * running are not aborted then — most are about to answer, and aborting
 * would destroy their keep-alive sockets — but their bodies are dumped
 * unread, and the route deadline still aborts whatever is left.
 */
import type { RequestTrace, SectionSpan } from '../tracing/types.js'
import { isUtf8 } from 'node:buffer'
import type { IncomingHttpHeaders } from 'node:http'
import { GatewayError, classifyUpstreamError } from '../errors.js'
import type { UpstreamResponse } from '../upstream/origin-group.js'
import type { UpstreamBody } from '../upstream/upstream-body.js'
import { Cancellation } from '../upstream/cancel.js'
import { cacheKey, storableTtl, type CacheEntry } from '../cache/store.js'
import { fillTemplate, headerValues, type AggregatePlan, type SectionOutcome, type SectionPlan, type SectionRef, type SectionResult } from './plan.js'
import { applyShape, pickPath, selectTree, type SelectTree } from './shape.js'
import type { FieldSelection } from './fields.js'
import { isJsonText } from './json-check.js'

export type { SectionResult } from './plan.js'

export type FanoutResult =
  | {
    ok: true
    /** The merged JSON document. */
    body: Buffer
    /** Failed section keys in config order, comma-joined; null when complete. */
    failed: string | null
    /** Sections served from a stale cached answer, comma-joined; null when none. */
    stale: string | null
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

/** Runs the plan (only the sections `fields` calls, when given); never rejects. */
export function execute (plan: AggregatePlan, params: Readonly<Record<string, string | undefined>>, clientHeaders: IncomingHttpHeaders, headers: Record<string, string | string[]>, fields: FieldSelection | null = null, trace: RequestTrace | null = null): Promise<FanoutResult> {
  // Every section path is filled before anything is sent: a parameter that
  // would make a "." or ".." segment refuses the request (plan.ts fillTemplate).
  // A chained section's path is checked here with a stand-in for its fields
  // and filled when they arrive.
  const paths: Array<string | null> = []
  for (const s of plan.sections) {
    const path = fillTemplate(s.template, params)
    if (path === null) return Promise.resolve({ ok: false, error: new GatewayError('GW_BAD_REQUEST', `a route parameter would make a "." or ".." path segment in section ${s.key}`), upstream: `${s.key}=!bad-parameter` })
    paths.push(s.template.refs === undefined ? path : null)
  }
  return new Promise((resolve) => {
    new Fanout(plan, params, paths, clientHeaders, headers, fields, resolve, trace).start()
  })
}

const NULL = Buffer.from('null')
const CLOSE = Buffer.from('}')
const OPEN = Buffer.from('{')
const COMMA = Buffer.from(',')
const EMPTY = Buffer.from('{}')

/** The state of one aggregate request. */
class Fanout {
  readonly #plan: AggregatePlan
  readonly #params: Readonly<Record<string, string | undefined>>
  /** Each section's filled path, in plan order; null for a chained one until its inputs arrive. */
  readonly #paths: Array<string | null>
  readonly #clientHeaders: IncomingHttpHeaders
  readonly #headers: Record<string, string | string[]>
  readonly #fields: FieldSelection | null
  readonly #resolve: (r: FanoutResult) => void
  /** Tracing: the request's trace, parent of one span per section; null when not traced. */
  readonly #trace: RequestTrace | null
  readonly #results: Array<SectionResult | undefined>
  /** Per chained section, how many of the sections it waits for have not settled. */
  readonly #pendingDeps: number[] | null
  readonly #ac = new Cancellation()
  /** Section calls started and not settled (the deadline timer covers them). */
  #inFlight = 0
  /** Sections the answer still waits for. */
  #waiting: number
  #done = false
  #deadlinePassed = false
  #timer: NodeJS.Timeout | null = null
  /** Per section, a stored answer past its freshness, served if the deadline comes first; null until one is seen. */
  #staleAtDeadline: Array<CacheEntry | undefined> | null = null

  constructor (plan: AggregatePlan, params: Readonly<Record<string, string | undefined>>, paths: Array<string | null>, clientHeaders: IncomingHttpHeaders, headers: Record<string, string | string[]>, fields: FieldSelection | null, resolve: (r: FanoutResult) => void, trace: RequestTrace | null = null) {
    this.#plan = plan
    this.#trace = trace
    this.#params = params
    this.#paths = paths
    this.#clientHeaders = clientHeaders
    this.#headers = headers
    this.#fields = fields
    this.#resolve = resolve
    this.#results = new Array<SectionResult | undefined>(plan.sections.length)
    this.#pendingDeps = plan.chained ? plan.sections.map((s) => s.deps.length) : null
    let n = 0
    for (let i = 0; i < plan.sections.length; i++) if (this.#called(i)) n++
    this.#waiting = n
  }

  start (): void {
    this.#timer = setTimeout(onDeadline, this.#plan.timeoutMs, this)
    const sections = this.#plan.sections
    for (let i = 0; i < sections.length; i++) {
      if (sections[i]!.deps.length === 0 && this.#called(i)) this.#launch(sections[i]!, this.#paths[i]!)
    }
  }

  get signal (): Cancellation { return this.#ac }
  get clientHeaders (): IncomingHttpHeaders { return this.#clientHeaders }
  get headers (): Record<string, string | string[]> { return this.#headers }
  get maxBytes (): number { return this.#plan.maxSectionBytes }
  /** True once the answer is decided: a section still running is no longer needed. */
  get done (): boolean { return this.#done }
  get deadlinePassed (): boolean { return this.#deadlinePassed }
  /** The client's `?fields=` paths for a section, or null for all of it. */
  trimOf (i: number): SelectTree | null {
    return this.#fields === null ? null : this.#fields.trim[i] ?? null
  }

  /** A section call went out while a stale-usable copy exists: the deadline may serve it. */
  keepStale (i: number, entry: CacheEntry): void {
    (this.#staleAtDeadline ??= new Array<CacheEntry | undefined>(this.#plan.sections.length))[i] = entry
  }

  #called (i: number): boolean {
    return this.#fields === null || this.#fields.called[i]!
  }

  #shown (i: number): boolean {
    return this.#fields === null || this.#fields.shown[i]!
  }

  #launch (s: SectionPlan, path: string): void {
    this.#inFlight++
    if (this.#trace !== null) {
      const span = this.#trace.section(s.key)
      runSection(this, s, path, span).then((r) => { span.end(r.outcome); this.#settle(s, r, true) }, (err: unknown) => { span.end('error'); this.#settle(s, failed('error', err, null, 0), true) })
      return
    }
    runSection(this, s, path, null).then((r) => this.#settle(s, r, true), (err: unknown) => this.#settle(s, failed('error', err, null, 0), true))
  }

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
    // A cached section whose origins hang is answered from its stale copy.
    const stale = this.#staleAtDeadline
    if (stale !== null) {
      for (let i = 0; i < stale.length; i++) {
        const entry = stale[i]
        if (entry === undefined || this.#results[i] !== undefined) continue
        const s = this.#plan.sections[i]!
        if (s.cache!.store.now() >= entry.staleUntil) continue
        if (s.cache!.counters !== null) s.cache!.counters.stale.inc()
        const r = parsed(this, s, fromCache(entry, true))
        this.#results[i] = r
        if (s.counters !== null) s.counters[r.outcome].inc()
      }
    }
    this.#markUnanswered('deadline')
    const required = this.#plan.sections.find((s) => s.required && this.#called(s.index) && this.#results[s.index]!.outcome === 'deadline')
    if (required !== undefined) {
      this.#fail(new GatewayError('GW_DEADLINE', `the route deadline of ${this.#plan.timeoutMs} ms passed before section ${required.key} answered`, { section: required.key, headers: failedHeaders(required.key) }))
    } else {
      this.#finish()
    }
  }

  #settle (s: SectionPlan, r: SectionResult, call: boolean): void {
    if (call) this.#inFlight--
    if (this.#done) {
      this.#releaseTimer()
      return
    }
    this.#results[s.index] = r
    if (s.counters !== null) s.counters[r.outcome].inc()
    if (r.outcome !== 'ok' && s.required) {
      // Answer now. Calls still running are left to finish (their sockets
      // stay in the pool) and are aborted if the deadline comes first.
      this.#markUnanswered('cancelled')
      this.#fail(requiredFailure(s, r))
      return
    }
    this.#waiting--
    if (this.#pendingDeps !== null) {
      const dependents = s.dependents
      for (let k = 0; k < dependents.length && !this.#done; k++) {
        const d = dependents[k]!
        if (this.#called(d) && --this.#pendingDeps[d]! === 0) this.#startChained(this.#plan.sections[d]!)
      }
    }
    if (!this.#done && this.#waiting === 0) this.#finish()
  }

  /** Every section `s` waits for has settled: fill its path and send it, or fail it. */
  #startChained (s: SectionPlan): void {
    const results = this.#results
    for (const d of s.deps) {
      if (results[d]!.outcome !== 'ok') {
        this.#settle(s, failed('dependency', new Error(`section ${this.#plan.sections[d]!.key} failed`), null, 0), false)
        return
      }
    }
    let bad: string | null = null
    const path = fillTemplate(s.template, this.#params, (ref: SectionRef) => {
      const v = pickPath(results[ref.section]!.value, ref.path)
      if (typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v))) return String(v)
      bad ??= `field ${ref.path.join('.')} of section ${this.#plan.sections[ref.section]!.key} is ${v === null ? 'missing or null' : `a${Array.isArray(v) ? 'n array' : ` ${typeof v}`}`}, not a string or number`
      return null
    })
    if (path === null) {
      this.#settle(s, failed('dependency', new Error(bad ?? 'a field value would make a "." or ".." path segment'), null, 0), false)
      return
    }
    this.#launch(s, path)
  }

  /** Gives every unanswered section `outcome` (and counts it). */
  #markUnanswered (outcome: SectionOutcome): void {
    const sections = this.#plan.sections
    for (let i = 0; i < sections.length; i++) {
      if (this.#results[i] !== undefined || !this.#called(i)) continue
      const s = sections[i]!
      this.#results[i] = failed(outcome, null, null, 0)
      if (s.counters !== null) s.counters[outcome].inc()
    }
  }

  #releaseTimer (): void {
    if (this.#inFlight === 0 && this.#timer !== null) {
      clearTimeout(this.#timer)
      this.#timer = null
    }
  }

  #fail (error: GatewayError): void {
    this.#done = true
    this.#releaseTimer()
    if (this.#plan.counters !== null) this.#plan.counters.failed.inc()
    this.#resolve({ ok: false, error, upstream: this.#upstream() })
  }

  #finish (): void {
    this.#done = true
    this.#releaseTimer()
    const sections = this.#plan.sections
    const parts: Buffer[] = []
    let failedKeys: string | null = null
    let staleKeys: string | null = null
    let first = true
    for (let i = 0; i < sections.length; i++) {
      if (!this.#shown(i)) continue
      const s = sections[i]!
      const r = this.#results[i]!
      // Client fields may leave the plan's first section out: the prefix then depends on position.
      if (this.#fields === null) parts.push(s.prefix)
      else {
        parts.push(first ? OPEN : COMMA, s.keyJson)
        first = false
      }
      if (r.outcome === 'ok') {
        const trim = this.trimOf(i)
        parts.push(trim === null ? r.body! : Buffer.from(JSON.stringify(selectTree(r.value, trim)) ?? 'null', 'utf8'))
        if (r.stale === true) staleKeys = staleKeys === null ? s.key : `${staleKeys},${s.key}`
      } else {
        parts.push(NULL)
        failedKeys = failedKeys === null ? s.key : `${failedKeys},${s.key}`
      }
    }
    parts.push(CLOSE)
    if (this.#plan.counters !== null) this.#plan.counters[failedKeys === null ? 'complete' : 'partial'].inc()
    this.#resolve({ ok: true, body: parts.length === 1 ? EMPTY : Buffer.concat(parts), failed: failedKeys, stale: staleKeys, upstream: this.#upstream() })
  }

  #upstream (): string {
    const sections = this.#plan.sections
    let out = ''
    for (let i = 0; i < sections.length; i++) {
      if (!this.#called(i)) continue
      const r = this.#results[i]
      const what = r === undefined ? '!cancelled' : r.outcome === 'ok' ? (r.stale === true ? `${r.origin!}:stale` : r.origin!) : `!${r.outcome}${r.status === 0 ? '' : `:${r.status}`}`
      out += `${out === '' ? '' : ' '}${sections[i]!.key}=${what}`
    }
    return out
  }
}

function onDeadline (f: Fanout): void { f.deadline() }

/**
 * One section call with everything around it: a fresh cached answer
 * instead of the call, the call shared with identical concurrent ones, a
 * stale answer when every origin failed, then parsing and shaping when the
 * section needs them. Resolves with what happened, never rejects.
 */
async function runSection (f: Fanout, s: SectionPlan, path: string, span: SectionSpan | null): Promise<SectionResult> {
  const cache = s.cache
  if (cache === null && s.coalesce === null) return parsed(f, s, await fetchSection(f, s, path, true, span))
  let key: string | null = null
  let entry: CacheEntry | undefined
  if (cache !== null) {
    if (!cache.variesOnAuth && f.headers.authorization !== undefined) {
      // A call carrying credentials is the caller's own unless the key says so.
      if (cache.counters !== null) cache.counters.bypass.inc()
      span?.cache('bypass')
    } else {
      key = cacheKey(s.serviceName, path, cache.vary, f.headers)
      entry = cache.store.get(key)
      if (entry !== undefined && cache.store.now() < entry.freshUntil) {
        if (cache.counters !== null) cache.counters.hit.inc()
        span?.cache('hit')
        return parsed(f, s, fromCache(entry, false))
      }
    }
  }
  if (entry !== undefined) f.keepStale(s.index, entry)
  let r: SectionResult
  if (s.coalesce !== null) {
    // Followers share the leader's bytes; the call is not tied to the
    // leader's answer being still open (its deadline still bounds it).
    const ckey = `${s.serviceName}\u0000${path}${headerValues(s.keyHeaders, f.headers)}`
    r = await s.coalesce.run(ckey, () => fetchAndStore(f, s, path, key, false, span)).promise
  } else {
    r = await fetchAndStore(f, s, path, key, true, span)
  }
  if (cache !== null && key !== null) {
    if (r.outcome !== 'ok' && entry !== undefined && everyOriginFailed(r)) {
      // Past the route deadline the stale copy was already served (and counted) then.
      if (f.deadlinePassed) return r
      if (cache.counters !== null) cache.counters.stale.inc()
      span?.cache('stale')
      return parsed(f, s, fromCache(entry, true))
    }
    if (cache.counters !== null) cache.counters.miss.inc()
    span?.cache('miss')
  }
  return parsed(f, s, r)
}

/** The call, and the answer stored when the section is cached and the answer may be. */
async function fetchAndStore (f: Fanout, s: SectionPlan, path: string, key: string | null, dropWhenDone: boolean, span: SectionSpan | null): Promise<SectionResult> {
  const r = await fetchSection(f, s, path, dropWhenDone, span)
  const cache = s.cache
  if (cache !== null && key !== null && r.outcome === 'ok' && r.status === 200 && r.body!.length <= cache.maxEntryBytes) {
    const ttl = storableTtl(r.cacheControl, cache.ttlMs)
    if (ttl !== null) cache.store.set(key, 200, null, r.body!, ttl, cache.staleMs)
  }
  return r
}

/** Failures that make a stale answer better than none: no usable answer from any origin. */
function everyOriginFailed (r: SectionResult): boolean {
  const o = r.outcome
  return o === 'error' || o === 'timeout' || o === 'deadline' || o === 'invalid_body' || (o === 'error_status' && r.status >= 500)
}

function fromCache (e: CacheEntry, stale: boolean): SectionResult {
  return { outcome: 'ok', body: e.body, status: e.status, origin: 'cache', cause: null, stale }
}

/** Parses (and shapes) an answer that another section reads, that is shaped, or that `?fields=` trims. */
function parsed (f: Fanout, s: SectionPlan, r: SectionResult): SectionResult {
  if (r.outcome !== 'ok' || (!s.parse && f.trimOf(s.index) === null)) return r
  let value: unknown
  try {
    value = JSON.parse(r.body!.toString('utf8'))
  } catch (err) {
    return failed('invalid_body', err, r.origin, r.status)
  }
  if (s.shape === null) return { ...r, value }
  value = applyShape(s.shape, value)
  return { ...r, value, body: Buffer.from(JSON.stringify(value) ?? 'null', 'utf8') }
}

/**
 * Fetches one section through its service; resolves with what happened,
 * never rejects. With `dropWhenDone`, an answer that arrives after the
 * aggregate answer went out is dumped unread (a shared call is read: others
 * may wait for it).
 */
async function fetchSection (f: Fanout, s: SectionPlan, path: string, dropWhenDone: boolean, span: SectionSpan | null): Promise<SectionResult> {
  let res: UpstreamResponse
  try {
    res = await s.service.send({ method: 'GET', path, headers: f.headers, body: null, signal: f.signal, trace: span }, f.clientHeaders, s.sendOptions)
  } catch (err) {
    return failed(errorOutcome(f, err), err, null, 0)
  }
  const status = res.statusCode
  const origin = res.origin.label
  const body = res.body
  if (dropWhenDone && f.done) {
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
  return { outcome: 'ok', body: bytes, status, origin, cause: null, cacheControl: res.headers['cache-control'] }
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
    case 'dependency':
      return new GatewayError('GW_UPSTREAM_FAILED', `${where} could not be called: ${r.cause instanceof Error ? r.cause.message : 'a section it needs failed'}`, opts)
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
