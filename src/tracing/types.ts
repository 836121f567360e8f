/**
 * What the request path sees of tracing (SPEC §13): small interfaces with
 * no OpenTelemetry import, so a gateway with tracing off never loads the
 * SDK (src/tracing/otel.ts is imported only when `tracing.otlpEndpoint` is
 * set). Every hook on the request path is null when tracing is off: the
 * cost of the feature being absent is one `null` check.
 *
 * The tree of one request:
 *
 *   SERVER   GET /products/:id/details          (plugins/tracing.ts)
 *   ├─ INTERNAL section product                (src/aggregate/execute.ts)
 *   │  └─ CLIENT GET product  attempt=first    (src/upstream/origin-group.ts)
 *   └─ INTERNAL section reviews
 *      ├─ CLIENT GET review   attempt=first   (failed: ECONNREFUSED)
 *      └─ CLIENT GET review   attempt=retry
 *
 * A proxy request's CLIENT spans hang directly under its SERVER span.
 */
import type { Origin } from '../upstream/origin.js'

/** Why an attempt was made: the `gateway.attempt` attribute of its CLIENT span. */
export type AttemptKind = 'first' | 'retry' | 'shield' | 'hedge'

/** One upstream attempt's CLIENT span. */
export interface AttemptSpan {
  /** The attempt's headers: a copy of the request's with this span's `traceparent` (and `tracestate`). */
  readonly headers: Record<string, string | string[]>
  /** The upstream answered (headers received). */
  response(statusCode: number): void
  /** The attempt failed (no answer, or the answer's body broke off). */
  fail(err: unknown): void
  /** The attempt is over (body delivered, failed or dropped); idempotent. */
  end(): void
}

/** Where upstream attempts hang: a request's SERVER span or an aggregate section's INTERNAL span. */
export interface TraceScope {
  /** Starts the CLIENT span of one attempt on `origin`; `headers` are the request's (never changed). */
  attempt(origin: Origin, kind: AttemptKind, method: string, headers: Record<string, string | string[]>): AttemptSpan
}

/** One aggregate section's INTERNAL span. */
export interface SectionSpan extends TraceScope {
  /** The section's cache result (`hit`, `miss`, `stale`, `bypass`); `none` until set. */
  cache(result: string): void
  /** Ends the span with the section's outcome (`gateway.outcome`). */
  end(outcome: string): void
}

/** One client request's trace: its SERVER span. */
export interface RequestTrace extends TraceScope {
  /** `{trace_id, span_id}` for the request's log lines; null when the request is not sampled. */
  readonly ids: { trace_id: string, span_id: string } | null
  /** Starts the INTERNAL span of an aggregate section. */
  section(key: string): SectionSpan
}

/** The tracing of one gateway process. */
export interface Tracing {
  /** Starts a request's SERVER span, continuing the caller's W3C trace context when it sent one. */
  start(method: string, route: string, headers: Readonly<Record<string, string | string[] | undefined>>): RequestTrace
  /** Ends the SERVER span with the status sent; `aborted` when the answer was cut or never completed. */
  finish(trace: RequestTrace, statusCode: number, aborted: boolean): void
  /** Exports what is queued (bounded in time) and stops. */
  shutdown(): Promise<void>
}
