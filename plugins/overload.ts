/**
 * Load shedding on the public listener: answer 503 GW_OVERLOADED with
 * `Retry-After` early and cheaply, instead of queueing work until the
 * process falls over. (The per-origin bulkhead, `maxConnections +
 * maxQueued`, lives in the send primitive; this is the listener-wide part.)
 *
 * - `server.maxInFlight`: requests in progress on the public listener.
 *   One counter, incremented in `onRequest`, decremented when the response
 *   closes (finished or cut), so a client that hangs up is released too.
 * - `server.maxEventLoopDelayMs` / `server.maxHeapUsedBytes`:
 *   @fastify/under-pressure samples the event loop and the heap every
 *   `server.loadSampleIntervalMs` and sheds while a sample is over.
 *
 * The admin listener is a separate app without any of this: /healthz,
 * /readyz and /metrics keep answering while the public side sheds.
 * Shed requests are counted in `gateway_shed_total{reason}`; the current
 * count is `gateway_in_flight_requests`.
 */
import type { ServerResponse } from 'node:http'
import fp from 'fastify-plugin'
import underPressure from '@fastify/under-pressure'
import client from 'prom-client'
import type { FastifyInstance } from 'fastify'
import type { ServerConfig } from '../src/config/schema.js'
import type { Metrics } from '../src/metrics.js'
import { GatewayError } from '../src/errors.js'

export interface OverloadOptions {
  server: ServerConfig
  metrics: Metrics | null
}

export default fp<OverloadOptions>(async function overload (fastify: FastifyInstance, opts) {
  const s = opts.server
  const headers = { 'retry-after': String(s.retryAfterSeconds) }
  const registers = opts.metrics === null ? [] : [opts.metrics.registry]
  const shed = new client.Counter({ name: 'gateway_shed_total', help: 'Requests answered 503 GW_OVERLOADED by the public listener, by reason', labelNames: ['reason'], registers })

  if (s.maxEventLoopDelayMs > 0 || s.maxHeapUsedBytes > 0) {
    const pressure = new GatewayError('GW_OVERLOADED', 'the gateway is overloaded; retry later', { headers })
    await fastify.register(underPressure, {
      maxEventLoopDelay: s.maxEventLoopDelayMs,
      maxHeapUsedBytes: s.maxHeapUsedBytes,
      sampleInterval: s.loadSampleIntervalMs,
      retryAfter: s.retryAfterSeconds,
      // Rejecting hands the error to the gateway's error handler (SPEC §6 body).
      pressureHandler: async (_req, _reply, type) => {
        shed.inc({ reason: type === 'eventLoopDelay' ? 'event_loop_delay' : type === 'heapUsedBytes' ? 'heap' : String(type) })
        throw pressure
      }
    })
  }

  if (s.maxInFlight > 0) {
    const max = s.maxInFlight
    let inFlight = 0
    const full = new GatewayError('GW_OVERLOADED', `the gateway has ${max} requests in progress; retry later`, { headers })
    const release = (): void => { inFlight-- }
    new client.Gauge({ name: 'gateway_in_flight_requests', help: 'Requests in progress on the public listener', registers, collect () { this.set(inFlight) } })
    fastify.addHook('onRequest', function (_request, reply, done) {
      if (inFlight >= max) {
        shed.inc({ reason: 'in_flight' })
        done(full)
        return
      }
      inFlight++
      // 'close' comes once per response, finished or cut short (a plain
      // listener: once() would wrap it in a new function per request).
      ;(reply.raw as ServerResponse).on('close', release)
      done()
    })
  }
}, { name: 'gateway-overload' })
