/**
 * The SERVER span of every request (SPEC §13), registered only when
 * tracing is on: a gateway without tracing has no hook here at all.
 *
 * Written with the OpenTelemetry API (src/tracing/otel.ts) rather than
 * @fastify/otel: that instrumentation wraps every hook and handler of every
 * plugin in a span-creating function and uses the global context manager
 * (AsyncLocalStorage) — costs each request pays whether sampled or not.
 * Two hooks and an explicitly passed context are all this gateway needs.
 *
 * A sampled request's own log lines (errors through `request.log`) carry
 * `trace_id` and `span_id`, as does its access line (plugins/request-log.ts).
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { lazyChildLogger } from '../src/child-logger.js'
import type { Tracing } from '../src/tracing/types.js'

export interface TracingPluginOptions {
  tracing: Tracing
}

export default fp<TracingPluginOptions>(async function tracingPlugin (fastify: FastifyInstance, opts) {
  const tracing = opts.tracing
  fastify.addHook('onRequest', function (request, reply, done) {
    const t = tracing.start(request.method, request.routeOptions.config.label ?? 'unmatched', request.headers)
    request.trace = t
    // Made on first use, like the request's own logger: nothing is serialised unless it logs.
    if (t.ids !== null) request.log = lazyChildLogger(request.log, t.ids, {})
    // 'close', not onResponse: fastify runs onResponse only for an answer
    // that finished, and a span must end for a cut or abandoned one too.
    const res = reply.raw
    res.once('close', () => tracing.finish(t, res.statusCode, !res.writableFinished))
    done()
  })
}, { name: 'gateway-tracing', dependencies: ['gateway-request-log'] })
