/**
 * Request ids and the access log. Every response carries `x-request-id`
 * (the client's when sane, else generated; the id itself is chosen by
 * fastify's `genReqId`, see app.ts). One log line per request — route,
 * method, status, duration, upstream — written when the response is done,
 * with metrics recorded at the same moment. A response cut short (the
 * client went away mid-answer, or the answer was cut) is recorded too,
 * with the status sent (499 when none was) and `aborted: true` (SPEC §17).
 */
import fp from 'fastify-plugin'
import type { ServerResponse } from 'node:http'
import type { FastifyInstance, FastifyReply } from 'fastify'
import pino, { type Logger } from 'pino'
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

const kReply = Symbol('lattice-gateway.reply')
type LoggedResponse = ServerResponse & { [kReply]?: FastifyReply }

export default fp<RequestLogOptions>(async function requestLog (fastify: FastifyInstance, opts) {
  const metrics = opts.metrics
  const access = accessLogWriter(fastify.log as unknown as Logger)
  fastify.decorateRequest('upstream', null)
  // The line is written when the response closes — finished, or cut short
  // because the client went away (or the gateway cut it): 'close' comes
  // exactly once either way, where fastify's onResponse only follows a
  // finished one. One shared listener; the reply rides on the response.
  function onClose (this: LoggedResponse): void {
    const reply = this[kReply]!
    this[kReply] = undefined
    const request = reply.request
    const route = request.routeOptions.config.label ?? 'unmatched'
    const aborted = !this.writableFinished
    // Nothing sent at all: nginx's 499 (client closed request).
    const status = this.headersSent ? this.statusCode : 499
    const ms = reply.elapsedTime
    if (metrics !== null) metrics.observeRequest(route, request.method, status, ms / 1000)
    // originalUrl: a request the front door refused was rewritten to `/`.
    if (access !== null) access(request.id, route, request.method, request.originalUrl, status, ms, request.upstream, aborted)
  }
  fastify.addHook('onRequest', function (request, reply, done) {
    reply.header('x-request-id', request.id)
    const res = reply.raw as LoggedResponse
    res[kReply] = reply
    res.on('close', onClose)
    done()
  })
}, { name: 'gateway-request-log' })

type AccessLog = (reqId: string, route: string, method: string, url: string, status: number, ms: number, upstream: string | null, aborted: boolean) => void

/**
 * The access-log line, written as pino would write
 * `request.log.info({ route, method, url, status, durationMs, upstream, aborted? }, 'request')`
 * — same stream, same bindings, same keys — but formatted directly: it is
 * the one log call every request makes, and pino's generic path (object
 * walk, redaction of paths this line never has) is most of its cost.
 * Null when `info` is off.
 */
function accessLogWriter (logger: Logger): AccessLog | null {
  if (!logger.isLevelEnabled('info')) return null
  const internals = logger as unknown as Record<symbol, unknown>
  const stream = internals[pino.symbols.streamSym] as { write(line: string): unknown }
  const bindings = ownBindings(internals[pino.symbols.chindingsSym] as string)
  const level = logger.levels.values.info
  return (reqId, route, method, url, status, ms, upstream, aborted) => {
    stream.write(`{"level":${level},"time":${Date.now()}${bindings},"reqId":${JSON.stringify(reqId)},"route":${JSON.stringify(route)},"method":${JSON.stringify(method)},"url":${JSON.stringify(url)},"status":${status},"durationMs":${Math.round(ms * 100) / 100},"upstream":${upstream === null ? 'null' : JSON.stringify(upstream)}${aborted ? ',"aborted":true' : ''},"msg":"request"}\n`)
  }
}

/** The keys the access line writes itself. */
const ACCESS_KEYS = new Set(['level', 'time', 'reqId', 'route', 'method', 'url', 'status', 'durationMs', 'upstream', 'aborted', 'msg'])

/**
 * The logger's bindings (pino's serialised `,"k":v` string) without the
 * keys the access line writes itself, so no key appears twice in it.
 */
function ownBindings (chindings: string): string {
  if (chindings === '') return ''
  const parsed = JSON.parse(`{${chindings.slice(1)}}`) as Record<string, unknown>
  let out = ''
  for (const [k, v] of Object.entries(parsed)) {
    if (!ACCESS_KEYS.has(k)) out += `,${JSON.stringify(k)}:${JSON.stringify(v)}`
  }
  return out
}
