/**
 * Pass-through proxy routes (`type: proxy`): everything under `prefix` is
 * streamed to the service, the prefix rewritten and the query kept.
 *
 * The body is not parsed: it stays on the socket and is pulled by the
 * upstream attempt. A body that may need sending twice (the method is in
 * the service's `retry.methods`) is buffered, bounded by the body limit;
 * any other body is streamed, and the origin group knows whether a byte of
 * it left (a POST is re-sent only when its first connection never opened).
 */
import { Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError, upstreamFailure } from '../src/errors.js'
import { endToEnd } from '../src/http.js'
import type { ProxyRoute } from '../src/config/schema.js'
import type { Service } from '../src/upstream/service.js'
import type { RequestBody, UpstreamResponse } from '../src/upstream/origin-group.js'

export interface ProxyRouteOptions {
  route: ProxyRoute
  service: Service
  bodyLimit: number
}

const METHODS = ['GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH', 'DELETE']

export default async function proxyRoute (fastify: FastifyInstance, opts: ProxyRouteOptions): Promise<void> {
  const { route, service, bodyLimit } = opts
  const prefix = route.prefix.replace(/\/+$/, '')
  const rewrite = (route.rewritePrefix ?? prefix).replace(/\/+$/, '')
  const retryMethods = service.policy.methods
  const label = route.prefix
  const maxResponse = route.maxResponseBytes

  // Leave bodies on the socket: this scope's only parser hands nothing over.
  fastify.removeAllContentTypeParsers()
  fastify.addContentTypeParser('*', function (_request, _payload, done) { done(null) })

  async function handler (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const rest = request.url.slice(prefix.length)
    const path = rest === '' ? (rewrite === '' ? '/' : rewrite) : rest.charCodeAt(0) === 63 /* ? */ ? `${rewrite === '' ? '/' : rewrite}${rest}` : rewrite + rest
    const headers = endToEnd(request.headers)
    // Preview routing (SPEC §11): the header and its token stay at the gateway.
    if (service.previewHeaders !== null) for (const h of service.previewHeaders) delete headers[h]
    headers['x-request-id'] = request.id
    const xff = request.headers['x-forwarded-for']
    headers['x-forwarded-for'] = xff === undefined ? request.ip : `${Array.isArray(xff) ? xff.join(', ') : xff}, ${request.ip}`
    headers['x-forwarded-proto'] = request.protocol
    if (request.headers.host !== undefined) headers['x-forwarded-host'] = request.headers.host
    const body = await requestBody(request, bodyLimit, retryMethods.has(request.method))

    let res: UpstreamResponse
    try {
      res = await service.send({ method: request.method, path, headers, body }, request.headers)
    } catch (err) {
      throw upstreamFailure(err, service.name)
    }
    request.upstream = res.origin.label
    // Hardening: a status fastify cannot send (> 599) is no answer at all.
    if (res.statusCode > 599) {
      res.body.dump().catch(() => {})
      throw upstreamFailure(Object.assign(new Error(`upstream answered status ${res.statusCode}`), { code: 'GW_BAD_UPSTREAM_STATUS' }), service.name)
    }
    // The answer goes straight to the socket (fastify's onResponse hooks —
    // access log, metrics — still run when it finishes). The status line
    // waits for the first body byte: an upstream body that fails before it
    // is still answered with a clean 502/504.
    const out = endToEnd(res.headers)
    out['x-request-id'] = request.id
    reply.hijack()
    relay(request, reply, res, out, service.name, maxResponse)
    return reply
  }

  fastify.route({ method: METHODS, url: prefix === '' ? '/' : prefix, handler, config: { label } })
  fastify.route({ method: METHODS, url: `${prefix}/*`, handler, config: { label } })
}

/** Streams an upstream answer to the client with backpressure. */
function relay (request: FastifyRequest, reply: FastifyReply, res: UpstreamResponse, headers: Record<string, string | string[]>, service: string, maxBytes: number): void {
  const raw = reply.raw
  const body = res.body
  let started = false
  let bytes = 0
  const tooLarge = (): Error => new GatewayError('GW_UPSTREAM_FAILED', `service ${service} answered with more than the route's maxResponseBytes (${maxBytes})`)
  const start = (): void => {
    started = true
    raw.writeHead(res.statusCode, headers)
  }
  raw.on('drain', () => body.resume())
  // The client went away: stop reading the upstream (its socket is released).
  raw.on('close', () => body.destroy())
  const fail = (err: Error): void => {
    if (started) {
      // Part of the answer is out: cutting the connection is the only
      // honest way to tell the client it is incomplete.
      raw.destroy()
      return
    }
    const e = upstreamFailure(err, service)
    request.log.error({ err, code: e.code }, e.message)
    const json = JSON.stringify(e.toJSON())
    raw.writeHead(e.statusCode, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(json), 'x-request-id': request.id })
    raw.end(json)
  }
  if (maxBytes > 0 && Number(res.headers['content-length'] ?? 0) > maxBytes) {
    body.destroy()
    fail(tooLarge())
    return
  }
  body.consume({
    data (chunk) {
      if (maxBytes > 0 && (bytes += chunk.length) > maxBytes) {
        body.destroy()
        fail(tooLarge())
        return false
      }
      if (!started) start()
      return raw.write(chunk)
    },
    end () {
      if (!started) start()
      raw.end()
    },
    error: fail
  })
}

/** The request's body for the upstream, or null when it has none. */
async function requestBody (request: FastifyRequest, limit: number, buffer: boolean): Promise<RequestBody | null> {
  const raw = request.raw
  const te = request.headers['transfer-encoding']
  const cl = request.headers['content-length']
  if (te === undefined && (cl === undefined || cl === '0')) return null
  if (cl !== undefined && Number(cl) > limit) throw new GatewayError('GW_BODY_TOO_LARGE', `request body is larger than ${limit} bytes`)
  if (buffer) {
    const chunks: Buffer[] = []
    let n = 0
    try {
      for await (const chunk of raw) {
        n += (chunk as Buffer).length
        if (n > limit) throw new GatewayError('GW_BODY_TOO_LARGE', `request body is larger than ${limit} bytes`)
        chunks.push(chunk as Buffer)
      }
    } catch (err) {
      throw clientBodyError(err)
    }
    const all = Buffer.concat(chunks)
    return { open: () => all, started: false, replayable: true }
  }
  return new StreamedBody(raw, limit)
}

/** A body pulled from the client only when an attempt starts sending it. */
class StreamedBody implements RequestBody {
  started = false
  readonly replayable = false
  readonly #raw: Readable
  readonly #limit: number

  constructor (raw: Readable, limit: number) {
    this.#raw = raw
    this.#limit = limit
  }

  open (): Readable {
    return Readable.from(this.#pull(), { objectMode: false })
  }

  async * #pull (): AsyncGenerator<Buffer> {
    this.started = true
    let n = 0
    try {
      for await (const chunk of this.#raw.iterator({ destroyOnReturn: false })) {
        n += (chunk as Buffer).length
        if (n > this.#limit) throw new GatewayError('GW_BODY_TOO_LARGE', `request body is larger than ${this.#limit} bytes`)
        yield chunk as Buffer
      }
    } catch (err) {
      throw clientBodyError(err)
    }
  }
}

/**
 * A request body that failed on the client's side (too large, or the client
 * hung up mid-upload) is a GatewayError: the origin group then knows it is
 * not the origin's fault (no breaker failure, no failover) and the client
 * error is not logged as an upstream failure.
 */
function clientBodyError (err: unknown): GatewayError {
  if (err instanceof GatewayError) return err
  return new GatewayError('GW_BAD_REQUEST', 'the client closed the connection before the request body was complete', { cause: err })
}
