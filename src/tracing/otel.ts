/**
 * Tracing with OpenTelemetry (SPEC §13): the SDK set up for one gateway
 * process, and the spans the request path asks for through the interfaces
 * of ./types.ts.
 *
 * Loaded with a dynamic import, only when `tracing.otlpEndpoint` is set (as
 * the AWS SDK is loaded only for Lattice origins): a gateway with tracing
 * off never loads a module of the SDK.
 *
 * Contexts are passed explicitly — a request's SERVER span context to its
 * attempts and sections, a section's to its attempts — never through a
 * global context manager (AsyncLocalStorage costs on every await of every
 * request, traced or not). Nothing is registered globally, so an
 * application embedding the gateway keeps its own tracer provider.
 *
 * Sampling is parent-based: a caller's sampled `traceparent` is kept, an
 * unsampled one is not, and a request without one starts a new trace
 * sampled at `sampleRatio`. An unsampled request still gets span ids and
 * passes `traceparent` (flags 00) upstream, so the trace stays one trace;
 * it records nothing and exports nothing. Attributes are set only on
 * recording spans.
 *
 * Export: BatchSpanProcessor in the background behind a bounded queue
 * (./export-queue.ts); a slow or dead collector costs the request path
 * nothing but a dropped span, counted in gateway_trace_spans_dropped_total.
 */
import {
  ROOT_CONTEXT, SpanKind, SpanStatusCode, defaultTextMapGetter, trace,
  type Attributes, type Context, type Span, type SpanContext, type Tracer
} from '@opentelemetry/api'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { resourceFromAttributes } from '@opentelemetry/resources'
import { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, type SpanExporter } from '@opentelemetry/sdk-trace-base'
import client from 'prom-client'
import type { Logger } from 'pino'
import type { TracingConfig } from '../config/schema.js'
import { errorCode } from '../errors.js'
import type { Origin } from '../upstream/origin.js'
import type { Registry } from '../upstream/registry.js'
import type { FailoverEvent } from '../upstream/origin-group.js'
import { ExportQueue, type DropReason } from './export-queue.js'
import type { AttemptKind, AttemptSpan, RequestTrace, SectionSpan, Tracing } from './types.js'

export interface TracingDeps {
  /** Switch and failback transitions become events on the SERVER spans of requests in flight. */
  registry: Registry
  /** Where gateway_trace_spans_dropped_total and gateway_trace_spans_exported_total are registered. */
  metrics: client.Registry
  logger: Logger
}

const DROP_REASONS: DropReason[] = ['queue_full', 'export_failed', 'shutdown']
/** How long `shutdown()` waits for the last export at most. */
const SHUTDOWN_WAIT_MS = 2000

/** Sets up the SDK and answers the request path's span requests. */
export async function startTracing (config: TracingConfig, deps: TracingDeps): Promise<Tracing> {
  const { OTLPTraceExporter } = config.protocol === 'http/protobuf'
    ? await import('@opentelemetry/exporter-trace-otlp-proto')
    : await import('@opentelemetry/exporter-trace-otlp-http')
  const dropped = new client.Counter({ name: 'gateway_trace_spans_dropped_total', help: 'Spans lost before reaching the collector, by reason (queue_full, export_failed, shutdown)', labelNames: ['reason'], registers: [deps.metrics] })
  const exported = new client.Counter({ name: 'gateway_trace_spans_exported_total', help: 'Spans the collector accepted', registers: [deps.metrics] })
  const droppedBy = new Map(DROP_REASONS.map((r) => [r, dropped.labels(r)]))
  for (const c of droppedBy.values()) c.inc(0)
  const log = deps.logger
  const endpoint = withoutCredentials(config.otlpEndpoint)
  const queue = new ExportQueue(config.maxQueueSize, {
    dropped: (reason, n) => droppedBy.get(reason)!.inc(n),
    exported: (n) => exported.inc(n),
    // A transition, logged once: never a line per failed batch.
    health: (healthy, reason) => log.warn({ event: 'trace_export', healthy, from: healthy ? 'failing' : 'ok', to: healthy ? 'ok' : 'failing', endpoint, reason }, healthy ? 'trace export recovered' : `trace export failing: ${reason}`)
  })
  const exporter: SpanExporter = new OTLPTraceExporter({
    url: config.otlpEndpoint,
    headers: { ...config.headers },
    timeoutMillis: config.exportTimeoutMs,
    concurrencyLimit: 2
  })
  const processor = new BatchSpanProcessor(queue.wrap(exporter), {
    maxQueueSize: config.maxQueueSize,
    maxExportBatchSize: Math.min(512, config.maxQueueSize),
    scheduledDelayMillis: config.batchDelayMs,
    // The exporter's own timeout (with its retries) ends every export first.
    exportTimeoutMillis: config.exportTimeoutMs + 1000
  })
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': config.serviceName }),
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.sampleRatio) }),
    spanProcessors: [queue.guard(processor)]
  })
  const otel = new Otel(provider.getTracer('lattice-gateway'))
  const onFailover = (e: FailoverEvent): void => otel.failover(e)
  deps.registry.on('failover', onFailover)
  return {
    start: (method, route, headers) => otel.start(method, route, headers),
    finish: (t, status, aborted) => otel.finish(t as ServerTrace, status, aborted),
    async shutdown () {
      deps.registry.off('failover', onFailover)
      let timer: NodeJS.Timeout | undefined
      await Promise.race([
        provider.shutdown().catch(() => {}),
        new Promise<void>((resolve) => { timer = setTimeout(resolve, SHUTDOWN_WAIT_MS) })
      ])
      clearTimeout(timer)
    }
  }
}

const propagator = new W3CTraceContextPropagator()

class Otel {
  readonly tracer: Tracer
  /** Recording requests in flight: the ones a switch or failback is told to. */
  readonly inflight = new Set<ServerTrace>()

  constructor (tracer: Tracer) { this.tracer = tracer }

  start (method: string, route: string, headers: Readonly<Record<string, string | string[] | undefined>>): ServerTrace {
    const parent = headers.traceparent === undefined ? ROOT_CONTEXT : propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter)
    const span = this.tracer.startSpan(route === 'unmatched' ? method : `${method} ${route}`, { kind: SpanKind.SERVER }, parent)
    const t = new ServerTrace(this, span, trace.setSpan(parent, span))
    if (t.recording) {
      span.setAttributes({ 'http.request.method': method, 'http.route': route })
      this.inflight.add(t)
    }
    return t
  }

  finish (t: ServerTrace, status: number, aborted: boolean): void {
    if (t.recording) {
      this.inflight.delete(t)
      t.span.setAttribute('http.response.status_code', status)
      if (aborted) {
        t.span.setAttribute('gateway.aborted', true)
        t.span.setAttribute('error.type', 'aborted')
        t.span.setStatus({ code: SpanStatusCode.ERROR, message: 'the answer was cut or the client went away' })
      } else if (status >= 500) {
        t.span.setAttribute('error.type', String(status))
        t.span.setStatus({ code: SpanStatusCode.ERROR })
      }
    }
    t.span.end()
  }

  attempt (parent: Context, root: ServerTrace, origin: Origin, kind: AttemptKind, method: string, headers: Record<string, string | string[]>): AttemptSpan {
    const span = this.tracer.startSpan(`${method} ${origin.service}`, { kind: SpanKind.CLIENT }, parent)
    const recording = span.isRecording()
    if (recording) {
      (root.touched ??= new Set()).add(origin)
      const host = origin.host
      const colon = host.lastIndexOf(':')
      const attrs: Attributes = {
        'gateway.service': origin.service,
        'gateway.deployment': origin.deployment,
        'gateway.origin': origin.role,
        'gateway.attempt': kind,
        'http.request.method': method,
        'server.address': colon === -1 || host.endsWith(']') ? host : host.slice(0, colon)
      }
      if (colon !== -1 && !host.endsWith(']')) attrs['server.port'] = Number(host.slice(colon + 1))
      span.setAttributes(attrs)
    }
    return new Attempt(span, recording, withTraceContext(headers, span.spanContext()))
  }

  /** A switch or failback: an event on every recording request in flight that used that deployment. */
  failover (e: FailoverEvent): void {
    if (e.kind === 'retry' || this.inflight.size === 0) return
    const attrs: Attributes = { 'gateway.service': e.service, 'gateway.deployment': e.deployment, 'gateway.from': e.from, 'gateway.to': e.to, 'gateway.reason': e.reason }
    for (const t of this.inflight) {
      if (t.touched === null) continue
      for (const o of t.touched) {
        if (o.service === e.service && o.deployment === e.deployment) {
          t.span.addEvent(`gateway.${e.kind}`, attrs)
          break
        }
      }
    }
  }
}

class ServerTrace implements RequestTrace {
  readonly span: Span
  readonly ctx: Context
  readonly recording: boolean
  readonly ids: { trace_id: string, span_id: string } | null
  /** Origins this request sent attempts to (recording requests only). */
  touched: Set<Origin> | null = null
  readonly #otel: Otel

  constructor (otel: Otel, span: Span, ctx: Context) {
    this.#otel = otel
    this.span = span
    this.ctx = ctx
    this.recording = span.isRecording()
    const sc = span.spanContext()
    this.ids = this.recording ? { trace_id: sc.traceId, span_id: sc.spanId } : null
  }

  attempt (origin: Origin, kind: AttemptKind, method: string, headers: Record<string, string | string[]>): AttemptSpan {
    return this.#otel.attempt(this.ctx, this, origin, kind, method, headers)
  }

  section (key: string): SectionSpan {
    // An unsampled request records no section span: its attempts hang from the SERVER span's context.
    return this.recording ? new SectionTrace(this.#otel, this, key) : new UnrecordedSection(this)
  }
}

/** A section of an unsampled request: nothing to record, attempts still get their own span ids. */
class UnrecordedSection implements SectionSpan {
  readonly #root: ServerTrace
  constructor (root: ServerTrace) { this.#root = root }
  attempt (origin: Origin, kind: AttemptKind, method: string, headers: Record<string, string | string[]>): AttemptSpan {
    return this.#root.attempt(origin, kind, method, headers)
  }

  cache (): void {}
  end (): void {}
}

class SectionTrace implements SectionSpan {
  readonly #otel: Otel
  readonly #root: ServerTrace
  readonly #span: Span
  readonly #ctx: Context
  #cache = 'none'

  constructor (otel: Otel, root: ServerTrace, key: string) {
    this.#otel = otel
    this.#root = root
    this.#span = otel.tracer.startSpan(`section ${key}`, { kind: SpanKind.INTERNAL }, root.ctx)
    this.#ctx = trace.setSpan(root.ctx, this.#span)
    this.#span.setAttribute('gateway.section', key)
  }

  attempt (origin: Origin, kind: AttemptKind, method: string, headers: Record<string, string | string[]>): AttemptSpan {
    return this.#otel.attempt(this.#ctx, this.#root, origin, kind, method, headers)
  }

  cache (result: string): void { this.#cache = result }

  end (outcome: string): void {
    this.#span.setAttributes({ 'gateway.outcome': outcome, 'gateway.cache': this.#cache })
    if (outcome !== 'ok' && outcome !== 'cancelled') this.#span.setStatus({ code: SpanStatusCode.ERROR })
    this.#span.end()
  }
}

class Attempt implements AttemptSpan {
  readonly headers: Record<string, string | string[]>
  readonly #span: Span
  readonly #recording: boolean
  #ended = false

  constructor (span: Span, recording: boolean, headers: Record<string, string | string[]>) {
    this.#span = span
    this.#recording = recording
    this.headers = headers
  }

  response (statusCode: number): void {
    if (!this.#recording) return
    this.#span.setAttribute('http.response.status_code', statusCode)
    // A CLIENT span's 4xx and 5xx are errors (OpenTelemetry HTTP conventions).
    if (statusCode >= 400) {
      this.#span.setAttribute('error.type', String(statusCode))
      this.#span.setStatus({ code: SpanStatusCode.ERROR })
    }
  }

  fail (err: unknown): void {
    if (!this.#recording) return
    this.#span.setAttribute('error.type', errorCode(err) ?? (err instanceof Error ? err.name : 'Error'))
    this.#span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) })
  }

  end (): void {
    if (this.#ended) return
    this.#ended = true
    this.#span.end()
  }
}

/** A copy of an attempt's headers carrying its span as the parent of whatever the upstream does. */
function withTraceContext (headers: Record<string, string | string[]>, sc: SpanContext): Record<string, string | string[]> {
  const out = Object.assign({}, headers)
  out.traceparent = `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 1) === 1 ? '01' : '00'}`
  const state = sc.traceState?.serialize()
  if (state !== undefined && state !== '') out.tracestate = state
  else if (out.tracestate !== undefined) delete out.tracestate
  return out
}

/** The endpoint for log lines: a `user:password@` in it is never written. */
function withoutCredentials (url: string): string {
  try {
    const u = new URL(url)
    u.username = ''
    u.password = ''
    return u.href
  } catch {
    return '[invalid url]'
  }
}
