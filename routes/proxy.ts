/**
 * Pass-through proxy routes (`type: proxy`): everything under `prefix` is
 * streamed to the service, the prefix rewritten and the query kept.
 *
 * The body is not parsed. A body up to `server.requestBufferBytes`, and
 * one that may need sending twice (the method is in the service's
 * `retry.methods`; bounded by the body limit), is read in full before any
 * origin is contacted (SPEC §17: a slow client holds no upstream
 * connection and is never an origin's failure). A larger body stays on the
 * socket and is pulled by the upstream attempt, and the origin group knows
 * whether a byte of it left (a POST is re-sent only when its first
 * connection never opened).
 */
import type { IncomingMessage } from 'node:http'
import { Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError, upstreamFailure } from '../src/errors.js'
import { endToEnd } from '../src/http.js'
import type { ProxyRoute } from '../src/config/schema.js'
import type { Service } from '../src/upstream/service.js'
import type { RequestBody, UpstreamResponse } from '../src/upstream/origin-group.js'
import { ProxyCache, type CacheMetricsSource } from '../src/cache/proxy-cache.js'
import type { ResponseCache } from '../src/cache/store.js'

export interface ProxyRouteOptions {
  route: ProxyRoute
  service: Service
  bodyLimit: number
  /** `server.requestBufferBytes` and `server.clientBodyTimeoutMs` (SPEC §17). */
  bufferBytes: number
  bodyTimeoutMs: number
  /** The process's response cache and counters (SPEC §12), for a route with `cache:`. */
  cache?: ResponseCache | null
  metrics?: CacheMetricsSource | null
}

const METHODS = ['GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH', 'DELETE']

export default async function proxyRoute (fastify: FastifyInstance, opts: ProxyRouteOptions): Promise<void> {
  const { route, service } = opts
  const bodies: BodyPolicy = { limit: opts.bodyLimit, bufferBytes: opts.bufferBytes, timeoutMs: opts.bodyTimeoutMs }
  const prefix = route.prefix.replace(/\/+$/, '')
  const rewrite = (route.rewritePrefix ?? prefix).replace(/\/+$/, '')
  const retryMethods = service.policy.methods
  const label = route.prefix
  const maxResponse = route.maxResponseBytes
  const cache = route.cache !== undefined && opts.cache != null ? new ProxyCache(route.cache, service.name, opts.cache, label, opts.metrics ?? null) : null

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
    // Response cache (SPEC §12): a fresh entry answers without an upstream call.
    const cached = cache === null ? null : cache.lookup(request, path)
    if (cached !== null && cached.fresh) return cache!.serve(request, reply, cached.entry!, false)
    let body = requestBody(request, bodies, retryMethods.has(request.method))
    if (body !== null && body instanceof Promise) body = await body

    let res: UpstreamResponse
    try {
      res = await service.send({ method: request.method, path, headers, body, trace: request.trace }, request.headers)
    } catch (err) {
      if (cached?.entry !== undefined) return cache!.serve(request, reply, cached.entry, true)
      throw upstreamFailure(err, service.name)
    }
    if (cached?.entry !== undefined && cache!.failed(res)) {
      res.body.dump().catch(() => {})
      return cache!.serve(request, reply, cached.entry, true)
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
    if (cache !== null) cache.tee(request, cached, res, out)
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

/** How the proxy reads request bodies (SPEC §17); compiled once per route. */
interface BodyPolicy {
  /** `server.bodyLimitBytes`: more is 413. */
  limit: number
  /** `server.requestBufferBytes`: bodies up to this are read in full before any origin is contacted. */
  bufferBytes: number
  /** `server.clientBodyTimeoutMs`: a buffered body's whole read, a streamed body's gap between chunks. */
  timeoutMs: number
}

/**
 * The request's body for the upstream: null when it has none (returned
 * without a promise, so a bodiless request awaits nothing), else a
 * buffered or a streamed body.
 *
 * Like nginx's request buffering, a body that fits in `bufferBytes` (by
 * Content-Length, or a chunked body that ends within it) and a body that
 * may be sent twice (a `retry.methods` request, up to the body limit) are
 * read in full before any origin is contacted: a client that trickles or
 * stalls holds no upstream connection, and gets 408 GW_CLIENT_TIMEOUT when
 * it does not finish within `timeoutMs`. A larger body streams; the
 * attempt's own deadline starts only once its last byte was handed over
 * (src/upstream/origin-group.ts), and a gap longer than `timeoutMs`
 * between two chunks is the client's 408 too — never the origin's fault.
 */
function requestBody (request: FastifyRequest, p: BodyPolicy, replay: boolean): RequestBody | null | Promise<RequestBody> {
  const te = request.headers['transfer-encoding']
  const cl = request.headers['content-length']
  if (te === undefined && (cl === undefined || cl === '0')) return null
  const declared = cl === undefined ? -1 : Number(cl)
  if (declared > p.limit) throw new GatewayError('GW_BODY_TOO_LARGE', `request body is larger than ${p.limit} bytes`)
  const raw = request.raw
  if (replay || declared !== -1) {
    if (!replay && declared > p.bufferBytes) return new StreamedBody(raw, [], 0, p)
    return readBody(raw, p, Infinity).then((r) => buffered(r.chunks))
  }
  // Chunked: its size is known only once it ends.
  return readBody(raw, p, p.bufferBytes).then((r) => r.ended ? buffered(r.chunks) : new StreamedBody(raw, r.chunks, r.bytes, p))
}

function buffered (chunks: Buffer[]): RequestBody {
  const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)
  return { open: () => all, started: false, replayable: true }
}

interface BodyStart {
  chunks: Buffer[]
  bytes: number
  /** True when the whole body is in `chunks`. */
  ended: boolean
}

/**
 * Reads the client's body until it ends or more than `stopAfter` bytes are
 * in (the stream is then left paused for a StreamedBody), within the
 * client-body deadline.
 */
function readBody (raw: IncomingMessage, p: BodyPolicy, stopAfter: number): Promise<BodyStart> {
  if (raw.destroyed) return Promise.reject(clientBodyError(new Error('request closed')))
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let bytes = 0
    const finish = (err: GatewayError | null, ended: boolean): void => {
      clearTimeout(timer)
      raw.off('data', onData)
      raw.off('end', onEnd)
      raw.off('error', onError)
      raw.off('close', onClose)
      if (!ended) raw.pause()
      if (err !== null) reject(err)
      else resolve({ chunks, bytes, ended })
    }
    const timer = setTimeout(() => finish(clientTimeout(p.timeoutMs), false), p.timeoutMs)
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk)
      bytes += chunk.length
      if (bytes > p.limit) finish(tooLarge(p.limit), false)
      else if (bytes > stopAfter) finish(null, false)
    }
    const onEnd = (): void => finish(null, true)
    const onError = (err: Error): void => finish(clientBodyError(err), false)
    // 'close' before 'end': the client hung up mid-upload.
    const onClose = (): void => finish(clientBodyError(new Error('request closed')), false)
    raw.on('data', onData)
    raw.on('end', onEnd)
    raw.on('error', onError)
    raw.on('close', onClose)
  })
}

// The rest of a refused body is never read: the connection closes after the answer.
const CLOSE = { connection: 'close' }

/** A body found too large while being read: the rest is never read. */
function tooLarge (limit: number): GatewayError {
  return new GatewayError('GW_BODY_TOO_LARGE', `request body is larger than ${limit} bytes`, { headers: CLOSE })
}

function clientTimeout (ms: number): GatewayError {
  return new GatewayError('GW_CLIENT_TIMEOUT', `the request body was not received in time (${ms} ms)`, { headers: CLOSE })
}

/**
 * A body pulled from the client only when an attempt starts sending it,
 * after what was already read; each wait for the client's next chunk is
 * bounded by the client-body timeout.
 */
class StreamedBody implements RequestBody {
  started = false
  readonly replayable = false
  readonly #raw: IncomingMessage
  readonly #head: Buffer[]
  readonly #headBytes: number
  readonly #p: BodyPolicy

  constructor (raw: IncomingMessage, head: Buffer[], headBytes: number, p: BodyPolicy) {
    this.#raw = raw
    this.#head = head
    this.#headBytes = headBytes
    this.#p = p
  }

  open (): Readable {
    return Readable.from(this.#pull(), { objectMode: false })
  }

  async * #pull (): AsyncGenerator<Buffer> {
    this.started = true
    const raw = this.#raw
    const limit = this.#p.limit
    for (const chunk of this.#head) yield chunk
    let n = this.#headBytes
    for (;;) {
      const chunk = raw.read() as Buffer | null
      if (chunk !== null) {
        n += chunk.length
        if (n > limit) throw tooLarge(limit)
        yield chunk
        continue
      }
      if (raw.readableEnded) return
      if (!await nextChunk(raw, this.#p.timeoutMs)) return
    }
  }
}

/** Waits for the client's next chunk: true when there may be one, false at the end; rejects on a hang-up or the timeout. */
function nextChunk (raw: IncomingMessage, ms: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const settle = (err: GatewayError | null, more: boolean): void => {
      clearTimeout(timer)
      raw.off('readable', onReadable)
      raw.off('end', onEnd)
      raw.off('error', onError)
      raw.off('close', onClose)
      if (err !== null) reject(err)
      else resolve(more)
    }
    const timer = setTimeout(() => settle(clientTimeout(ms), false), ms)
    const onReadable = (): void => settle(null, true)
    const onEnd = (): void => settle(null, false)
    const onError = (err: Error): void => settle(clientBodyError(err), false)
    const onClose = (): void => settle(clientBodyError(new Error('request closed')), false)
    raw.on('readable', onReadable)
    raw.on('end', onEnd)
    raw.on('error', onError)
    raw.on('close', onClose)
  })
}

/**
 * A request body that failed on the client's side (too large, too slow, or
 * the client hung up mid-upload) is a GatewayError: the origin group then
 * knows it is not the origin's fault (no breaker failure, no failover) and
 * the client error is not logged as an upstream failure.
 */
function clientBodyError (err: unknown): GatewayError {
  if (err instanceof GatewayError) return err
  return new GatewayError('GW_BAD_REQUEST', 'the client closed the connection before the request body was complete', { cause: err })
}
