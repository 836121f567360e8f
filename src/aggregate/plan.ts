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
 *
 * SPEC §12 adds, all compiled here: the dependency graph of chained
 * sections (graph.ts), each section's shaping (shape.ts), its cache
 * settings and key headers, a singleflight per section for coalescing, and
 * the hedging option handed to the send primitive. A section with none of
 * them costs nothing more per request than before.
 */
import type { IncomingHttpHeaders } from 'node:http'
import type { AggregateRoute } from '../config/schema.js'
import { HOP_BY_HOP } from '../http.js'
import type { Service } from '../upstream/service.js'
import type { SendOptions } from '../upstream/origin-group.js'
import { CACHE_RESULTS, type CacheResult, type ResponseCache } from '../cache/store.js'
import { Singleflight } from '../cache/coalesce.js'
import { buildGraph, parsePath } from './graph.js'
import { compileShape, type Shape } from './shape.js'

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
 * - `dependency`: a section it waits for failed, or the named field is missing or not a string or number
 */
export const SECTION_OUTCOMES = ['ok', 'client_error', 'error_status', 'invalid_body', 'too_large', 'error', 'timeout', 'deadline', 'cancelled', 'dependency'] as const
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
  /** `gateway_cache_total` children (optional: a source without it counts no cache results). */
  cacheCounters?(route: string, section: string, results: readonly CacheResult[]): Record<CacheResult, Tally>
}

/** A field of another section's (shaped) answer: `{product.sku}`. */
export interface SectionRef {
  readonly section: number
  readonly path: readonly string[]
}

/** A path template compiled into literals and parameter names: `lit[0] p[0] lit[1] p[1] … lit[n]`. */
export interface PathTemplate {
  readonly literals: readonly string[]
  readonly params: readonly string[]
  /** Per slot, the section field it takes, or null for a route parameter; absent when no slot is chained. */
  readonly refs?: ReadonlyArray<SectionRef | null>
}

/** What one section produced. */
export interface SectionResult {
  outcome: SectionOutcome
  /** The validated JSON bytes when `outcome` is `ok` (after shaping, when the section has any). */
  body: Buffer | null
  /** The upstream status, 0 when there was no answer. */
  status: number
  /** Which origin answered (service/deployment/role), when one did; `cache` for a stored answer. */
  origin: string | null
  /** Why it failed, for the log (never sent to the client). */
  cause: unknown
  /** The upstream's `cache-control`, for the cache. */
  cacheControl?: string | string[] | undefined
  /** True when a stored answer past its freshness was served because every origin failed. */
  stale?: boolean
  /** The parsed (and shaped) value, when the section is parsed. */
  value?: unknown
}

/** A section's `cache:` compiled. */
export interface SectionCache {
  readonly store: ResponseCache
  readonly ttlMs: number
  readonly staleMs: number
  /** Lower-case header names whose values are part of the key. */
  readonly vary: readonly string[]
  readonly maxEntryBytes: number
  /** True when `authorization` is in `vary`: otherwise a call that carries it is not cached. */
  readonly variesOnAuth: boolean
  readonly counters: Record<CacheResult, Tally> | null
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
  /** `"key":`, for answers whose first section is not the first of the plan (client fields). */
  readonly keyJson: Buffer
  /** Sections this one waits for (indexes) and those that wait for it. */
  readonly deps: readonly number[]
  readonly dependents: readonly number[]
  /** True when the answer is parsed: it is shaped, or another section reads a field of it. */
  readonly parse: boolean
  readonly shape: Shape | null
  readonly cache: SectionCache | null
  /** Shares concurrent identical calls; null with `coalesce: false`. */
  readonly coalesce: Singleflight<SectionResult> | null
  /** Headers whose values make two calls different (forwarded ones and `vary`), for the coalescing key. */
  readonly keyHeaders: readonly string[]
  readonly sendOptions: SendOptions | undefined
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
  /** Clients may choose sections and fields (`?fields=`). */
  readonly fields: boolean
  /** True when some section waits for another. */
  readonly chained: boolean
}

// Never forwarded even when listed: they describe the client's connection or
// body, not the section call (the gateway sets its own).
const NOT_FORWARDED: ReadonlySet<string> = new Set([...HOP_BY_HOP, 'host', 'content-length', 'content-type', 'x-request-id'])

/**
 * Compiles one aggregate route. `lookup` resolves a service name (the
 * loader has already checked that every section names a known service and
 * that every `{placeholder}` is a route parameter; this throws if not).
 */
export function compileAggregate (route: AggregateRoute, lookup: (name: string) => Service | undefined, metrics: AggregateMetricsSource | null = null, store: ResponseCache | null = null): AggregatePlan {
  const label = route.path
  const sections: SectionPlan[] = []
  const entries = Object.entries(route.sections)
  const graph = buildGraph(entries.map(([k, s]) => [k, s.path] as const))
  if (graph.issues.length > 0) throw new Error(`aggregate route ${route.path}: ${graph.issues.map((i) => `section ${i.section}: ${i.message}`).join('; ')}`)
  const forwardHeaders = [...new Set(route.forwardHeaders.map((h) => h.toLowerCase()))].filter((h) => !NOT_FORWARDED.has(h))
  for (const [key, s] of entries) {
    const service = lookup(s.service)
    if (service === undefined) throw new Error(`aggregate route ${route.path}: section ${key} names unknown service ${s.service}`)
    const index = sections.length
    const shape = compileShape(s)
    const vary = [...new Set((s.cache?.vary ?? []).map((h) => h.toLowerCase()))]
    let cache: SectionCache | null = null
    if (s.cache !== undefined && store !== null) {
      cache = {
        store,
        ttlMs: s.cache.ttlMs,
        staleMs: s.cache.staleIfErrorMs,
        vary,
        maxEntryBytes: Math.min(s.cache.maxEntryBytes, route.maxSectionBytes),
        variesOnAuth: vary.includes('authorization'),
        counters: metrics?.cacheCounters === undefined ? null : metrics.cacheCounters(label, key, CACHE_RESULTS)
      }
    }
    sections.push({
      key,
      index,
      serviceName: s.service,
      service,
      required: s.required,
      template: compileTemplate(s.path, graph.names),
      prefix: Buffer.from(`${index === 0 ? '{' : ','}${JSON.stringify(key)}:`, 'utf8'),
      counters: metrics === null ? null : metrics.aggregateSectionCounters(label, key, SECTION_OUTCOMES),
      keyJson: Buffer.from(`${JSON.stringify(key)}:`, 'utf8'),
      deps: graph.deps[index]!,
      dependents: graph.dependents[index]!,
      parse: shape !== null || graph.dependents[index]!.length > 0,
      shape,
      cache,
      coalesce: s.coalesce ? new Singleflight<SectionResult>() : null,
      keyHeaders: [...new Set([...forwardHeaders, ...vary])],
      sendOptions: s.hedgeAfterMs === undefined ? undefined : { hedgeAfterMs: s.hedgeAfterMs }
    })
  }
  return {
    label,
    method: route.method,
    path: route.path,
    timeoutMs: route.timeoutMs,
    maxSectionBytes: route.maxSectionBytes,
    forwardHeaders,
    forwardsAccept: forwardHeaders.includes('accept'),
    sections,
    counters: metrics === null ? null : metrics.aggregateResponseCounters(label, AGGREGATE_RESULTS),
    fields: route.fields,
    chained: graph.deps.some((d) => d.length > 0)
  }
}

/**
 * Splits `/reviews?productId={id}` into literals `['/reviews?productId=', '']`
 * and params `['id']`; with the route's section names, `{product.sku}`
 * becomes a reference to section `product`, field `sku`.
 */
export function compileTemplate (path: string, sections: readonly string[] = []): PathTemplate {
  const parsed = parsePath(path)
  const params: string[] = []
  const refs: Array<SectionRef | null> = []
  for (const p of parsed.placeholders) {
    // A dotted name is a section field only when that section exists (the
    // loader reports the others); otherwise it is a plain parameter name.
    if (p.kind === 'param' || !sections.includes(p.section)) {
      params.push(p.kind === 'param' ? p.name : `${p.section}.${p.path.join('.')}`)
      refs.push(null)
    } else {
      params.push(`${p.section}.${p.path.join('.')}`)
      refs.push({ section: sections.indexOf(p.section), path: p.path })
    }
  }
  return refs.some((r) => r !== null) ? { literals: parsed.literals, params, refs } : { literals: parsed.literals, params }
}

/** A chained slot's value: a string or a finite number; null otherwise. */
export type RefValue = (ref: SectionRef) => string | null

/** The values of `headers` named in `names`, for keys. */
export function headerValues (names: readonly string[], headers: IncomingHttpHeaders | Readonly<Record<string, string | string[] | undefined>>): string {
  let out = ''
  for (let i = 0; i < names.length; i++) {
    const v = headers[names[i]!]
    out += `\u0000${v === undefined ? '' : Array.isArray(v) ? v.join(', ') : v}`
  }
  return out
}

/**
 * Fills a template with route parameters, each URL-encoded (a `/` in a value
 * stays inside its segment). Null when the filled path would have a `.` or
 * `..` segment: encoding leaves dots alone, and a route such as
 * `/files/:name.json` hands `..` over for `/files/...json`; an upstream that
 * normalises paths would resolve `/items/../meta` to `/meta`, outside the
 * section's template. The caller refuses the request instead.
 */
export function fillTemplate (t: PathTemplate, values: Readonly<Record<string, string | undefined>>, refValue?: RefValue): string | null {
  const { literals, params, refs } = t
  let out = literals[0]!
  for (let i = 0; i < params.length; i++) {
    const ref = refs === undefined ? null : refs[i]!
    let v: string | null | undefined
    if (ref === null) v = values[params[i]!]
    else {
      // Without a resolver (checking route parameters only), a neutral stand-in.
      v = refValue === undefined ? 'x' : refValue(ref)
      if (v === null) return null
    }
    out += encodeURIComponent(v ?? '') + literals[i + 1]!
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
