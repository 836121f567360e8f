/**
 * Request ids and the access log. Every response carries `x-request-id`
 * (the client's when sane, else generated; the id itself is chosen by
 * fastify's `genReqId`, see app.ts). One log line per request — route,
 * method, status, duration, upstream — written when the response is done,
 * with metrics recorded in the same hook.
 */
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { Metrics } from '../src/metrics.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route's label in logs and metrics (its prefix or path template). */
    label?: string
  }
  interface FastifyRequest {
    /** Which origin answered (service/deployment/role), for the access log. */
    upstream: string | null
  }
}

export interface RequestLogOptions {
  metrics: Metrics | null
}

export default fp<RequestLogOptions>(async function requestLog (fastify: FastifyInstance, opts) {
  const metrics = opts.metrics
  fastify.decorateRequest('upstream', null)
  fastify.addHook('onRequest', function (request, reply, done) {
    reply.header('x-request-id', request.id)
    done()
  })
  fastify.addHook('onResponse', function (request, reply, done) {
    const route = request.routeOptions.config.label ?? 'unmatched'
    const status = reply.statusCode
    const ms = reply.elapsedTime
    if (metrics !== null) metrics.observeRequest(route, request.method, status, ms / 1000)
    request.log.info({ route, method: request.method, url: request.url, status, durationMs: Math.round(ms * 100) / 100, upstream: request.upstream }, 'request')
    done()
  })
}, { name: 'gateway-request-log' })
