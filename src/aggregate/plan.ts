/**
 * Compiles an aggregate route (`type: aggregate`, SPEC §5) once, at
 * start-up, into a plan the request path only executes: each section's
 * service resolved, its path template split into literal parts and
 * parameter slots (values URL-encoded per request), the bytes that go
 * before its value in the merged answer (`{"product":`, `,"reviews":`),
 * the client headers to forward, and pre-bound metric children.
 *
 * Sections keep config order: it is the order of keys in the answer and of
 * names in `x-aggregate-failed`.
 */
import type { AggregateRoute } from '../config/schema.js'
import { HOP_BY_HOP } from '../http.js'
import type { Service } from '../upstream/service.js'

/**
 * How one section of one request ended; the `outcome` label of
 * `gateway_aggregate_sections_total`.
 * - `ok`: a 2xx JSON answer within the size limit
 * - `client_error` / `error_status`: a 4xx / any other non-2xx answer (after failover)
 * - `invalid_body`: not JSON (content type or bytes)
 * - `too_large`: over `maxSectionBytes`
 * - `error`: no answer (connection refused or reset on every allowed origin)
 * - `timeout`: every allowed attempt hit the service's `timeoutMs`
 * - `deadline`: still running when the route's `timeoutMs` passed
 * - `cancelled`: stopped because a required section had already failed
 */
export const SECTION_OUTCOMES = ['ok', 'client_error', 'error_status', 'invalid_body', 'too_large', 'error', 'timeout', 'deadline', 'cancelled'] as const
export type SectionOutcome = typeof SECTION_OUTCOMES[number]

/** How a whole aggregate request ended; the `result` label of `gateway_aggregate_responses_total`. */
export const AGGREGATE_RESULTS = ['complete', 'partial', 'failed'] as const
export type AggregateResult = typeof AGGREGATE_RESULTS[number]

/** Something that counts; a prom-client counter child fits. */
export interface Tally { inc(): void }

/** Where a plan's counters come from (the gateway's Metrics); absent means no counting. */
export interface AggregateMetricsSource {
  aggregateSectionCounters(route: string, section: string, outcomes: readonly SectionOutcome[]): Record<SectionOutcome, Tally>
  aggregateResponseCounters(route: string, results: readonly AggregateResult[]): Record<AggregateResult, Tally>
}

/** A path template compiled into literals and parameter names: `lit[0] p[0] lit[1] p[1] … lit[n]`. */
export interface PathTemplate {
  readonly literals: readonly string[]
  readonly params: readonly string[]
}

export interface SectionPlan {
  readonly key: string
  readonly index: number
  readonly serviceName: string
  readonly service: Service
  readonly required: boolean
  readonly template: PathTemplate
  /** Bytes written before this section's value: `{"key":` for the first, `,"key":` after. */
  readonly prefix: Buffer
  /** Counter children per outcome, or null without metrics. */
  readonly counters: Record<SectionOutcome, Tally> | null
}

export interface AggregatePlan {
  /** The route's label in logs and metrics: its path template. */
  readonly label: string
  readonly method: 'GET' | 'HEAD'
  readonly path: string
  readonly timeoutMs: number
  readonly maxSectionBytes: number
  /** Client headers copied to every section call (lower-case, end-to-end only). */
  readonly forwardHeaders: readonly string[]
  /** True when the client's `accept` is forwarded; otherwise sections get `accept: application/json`. */
  readonly forwardsAccept: boolean
  readonly sections: readonly SectionPlan[]
  readonly counters: Record<AggregateResult, Tally> | null
}

// Never forwarded even when listed: they describe the client's connection or
// body, not the section call (the gateway sets its own).
const NOT_FORWARDED: ReadonlySet<string> = new Set([...HOP_BY_HOP, 'host', 'content-length', 'content-type', 'x-request-id'])

/**
 * Compiles one aggregate route. `lookup` resolves a service name (the
 * loader has already checked that every section names a known service and
 * that every `{placeholder}` is a route parameter; this throws if not).
 */
export function compileAggregate (route: AggregateRoute, lookup: (name: string) => Service | undefined, metrics: AggregateMetricsSource | null = null): AggregatePlan {
  const label = route.path
  const sections: SectionPlan[] = []
  for (const [key, s] of Object.entries(route.sections)) {
    const service = lookup(s.service)
    if (service === undefined) throw new Error(`aggregate route ${route.path}: section ${key} names unknown service ${s.service}`)
    const index = sections.length
    sections.push({
      key,
      index,
      serviceName: s.service,
      service,
      required: s.required,
      template: compileTemplate(s.path),
      prefix: Buffer.from(`${index === 0 ? '{' : ','}${JSON.stringify(key)}:`, 'utf8'),
      counters: metrics === null ? null : metrics.aggregateSectionCounters(label, key, SECTION_OUTCOMES)
    })
  }
  const forwardHeaders = [...new Set(route.forwardHeaders.map((h) => h.toLowerCase()))].filter((h) => !NOT_FORWARDED.has(h))
  return {
    label,
    method: route.method,
    path: route.path,
    timeoutMs: route.timeoutMs,
    maxSectionBytes: route.maxSectionBytes,
    forwardHeaders,
    forwardsAccept: forwardHeaders.includes('accept'),
    sections,
    counters: metrics === null ? null : metrics.aggregateResponseCounters(label, AGGREGATE_RESULTS)
  }
}

/** Splits `/reviews?productId={id}` into literals `['/reviews?productId=', '']` and params `['id']`. */
export function compileTemplate (path: string): PathTemplate {
  const literals: string[] = []
  const params: string[] = []
  let last = 0
  for (const m of path.matchAll(/\{([^}]*)\}/g)) {
    literals.push(path.slice(last, m.index))
    params.push(m[1]!)
    last = m.index + m[0].length
  }
  literals.push(path.slice(last))
  return { literals, params }
}

/**
 * Fills a template with route parameters, each URL-encoded (a `/` in a value
 * stays inside its segment). Null when the filled path would have a `.` or
 * `..` segment: encoding leaves dots alone, and a route such as
 * `/files/:name.json` hands `..` over for `/files/...json`; an upstream that
 * normalises paths would resolve `/items/../meta` to `/meta`, outside the
 * section's template. The caller refuses the request instead.
 */
export function fillTemplate (t: PathTemplate, values: Readonly<Record<string, string | undefined>>): string | null {
  const { literals, params } = t
  let out = literals[0]!
  for (let i = 0; i < params.length; i++) {
    out += encodeURIComponent(values[params[i]!] ?? '') + literals[i + 1]!
  }
  // A dot-segment starts the path or follows a "/": one cheap test first.
  return (out.charCodeAt(0) === 46 || out.includes('/.')) && hasDotSegment(out) ? null : out
}

/** True when the path part (before `?` or `#`) has a segment that is exactly `.` or `..`. */
function hasDotSegment (target: string): boolean {
  const end = target.search(/[?#]/)
  const segments = (end === -1 ? target : target.slice(0, end)).split('/')
  for (let i = 0; i < segments.length; i++) {
    if (segments[i] === '.' || segments[i] === '..') return true
  }
  return false
}
