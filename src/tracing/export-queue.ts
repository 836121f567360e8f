/**
 * The span export pipeline's accounting: a bounded queue in front of the
 * SDK's BatchSpanProcessor and a counting wrapper around the OTLP exporter,
 * so every span that is lost is counted in
 * `gateway_trace_spans_dropped_total{reason}`:
 *
 * - `queue_full`: the queue already holds `maxQueueSize` spans (a slow or
 *   unreachable collector); the span is dropped at `end()`, in O(1), and
 *   the request goes on.
 * - `export_failed`: the exporter gave up on a batch (collector down,
 *   refused, answered an error, timed out after its own retries).
 * - `shutdown`: a span that ended after the processor shut down.
 *
 * Why not the processor's own queue limit: the SDK drops silently there
 * (a debug line through `diag`, and a self-observability meter marked
 * experimental). Counting spans in — `pending` — and out — the exporter's
 * callback — gives the same bound with a number the gateway owns: `pending`
 * includes the batch being exported, so the SDK's queue, given the same
 * size, never reaches its own limit.
 *
 * A failing exporter is a state, not a per-batch event: one log line when
 * exports start failing and one when they recover.
 */
import type { Context } from '@opentelemetry/api'
import { TraceFlags } from '@opentelemetry/api'
import { ExportResultCode, type ExportResult } from '@opentelemetry/core'
import type { ReadableSpan, Span, SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace-base'

export type DropReason = 'queue_full' | 'export_failed' | 'shutdown'

export interface ExportAccounting {
  /** Spans lost, by reason. */
  dropped(reason: DropReason, n: number): void
  /** Spans the collector accepted. */
  exported(n: number): void
  /** The exporter went from working to failing (or back); `reason` when failing. */
  health(healthy: boolean, reason: string): void
}

/** Shared between the queue guard and the exporter wrapper. */
export class ExportQueue {
  /** Spans handed to the batch processor and not yet settled by the exporter. */
  pending = 0
  readonly max: number
  readonly #acct: ExportAccounting
  #healthy = true
  #closed = false

  constructor (max: number, acct: ExportAccounting) {
    this.max = max
    this.#acct = acct
  }

  /** A span processor that enforces the bound before `inner` sees the span. */
  guard (inner: SpanProcessor): SpanProcessor {
    return {
      onStart: (span: Span, ctx: Context) => inner.onStart(span, ctx),
      onEnd: (span: ReadableSpan) => {
        if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return
        if (this.#closed) {
          this.#acct.dropped('shutdown', 1)
          return
        }
        if (this.pending >= this.max) {
          this.#acct.dropped('queue_full', 1)
          return
        }
        this.pending++
        inner.onEnd(span)
      },
      forceFlush: () => inner.forceFlush(),
      shutdown: () => {
        this.#closed = true
        return inner.shutdown()
      }
    }
  }

  /** An exporter that settles `pending` and counts what was exported or lost. */
  wrap (inner: SpanExporter): SpanExporter {
    const settle = (n: number, result: ExportResult): void => {
      this.pending -= n
      if (result.code === ExportResultCode.SUCCESS) {
        this.#acct.exported(n)
        if (!this.#healthy) {
          this.#healthy = true
          this.#acct.health(true, 'export succeeded')
        }
        return
      }
      this.#acct.dropped('export_failed', n)
      if (this.#healthy) {
        this.#healthy = false
        this.#acct.health(false, describe(result.error))
      }
    }
    return {
      export: (spans, done) => {
        const n = spans.length
        let settled = false
        const once = (result: ExportResult): void => {
          if (settled) return
          settled = true
          settle(n, result)
          done(result)
        }
        try {
          inner.export(spans, once)
        } catch (err) {
          once({ code: ExportResultCode.FAILED, error: err instanceof Error ? err : new Error(String(err)) })
        }
      },
      shutdown: () => inner.shutdown(),
      forceFlush: () => inner.forceFlush?.() ?? Promise.resolve()
    }
  }
}

function describe (err: Error | undefined): string {
  if (err === undefined) return 'export failed'
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' ? `${err.message} (${code})` : err.message
}
