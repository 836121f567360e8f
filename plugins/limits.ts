/**
 * The public listener's front door: what is checked before a request is
 * routed, and what Node's HTTP parser is told to refuse.
 *
 * - `rewriteUrl` (a fastify option, so it runs before the router) checks
 *   the URL length and header count and normalises the path (src/path.ts).
 *   A request that fails is routed to `/` with a verdict attached; this
 *   plugin's `onRequest` hook answers it — 414, 431 or 400, code
 *   GW_BAD_REQUEST — before any route handler runs, with the usual access
 *   log line and `x-request-id`.
 * - `clientErrorHandler` answers what Node's parser refuses before fastify
 *   sees a request (bad request line, invalid header characters, headers
 *   over `maxHeaderBytes`, Content-Length with Transfer-Encoding, a client
 *   too slow to send its headers) with the same SPEC §6 JSON body, then
 *   closes the connection (408 GW_CLIENT_TIMEOUT for a slow client). A
 *   request without Host, with two, or with one that is not a valid
 *   `host[:port]` is refused by `rewriteUrl` instead, so it gets the JSON
 *   body too. Garbage pipelined after valid requests is answered after
 *   their answers, in order. The raw bytes of such a request are never
 *   logged: they may hold credentials.
 * - `http` options for the server: header size, header and request
 *   timeouts, and how often Node checks them (its default, 30 s, would let
 *   a slow client hold a socket long past `headersTimeoutMs`).
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { ServerConfig } from '../src/config/schema.js'
import type { RouteConfig } from '../src/config/schema.js'
import { GatewayError, errorBody } from '../src/errors.js'
import { compilePathPolicy, normaliseTarget } from '../src/path.js'

const kVerdict = Symbol('lattice-gateway.front-door-verdict')
type MarkedRequest = IncomingMessage & { [kVerdict]?: GatewayError }

export interface FrontDoor {
  rewriteUrl: (req: IncomingMessage) => string
  clientErrorHandler: (this: FastifyInstance, err: Error & { code?: string }, socket: Socket) => void
  http: { maxHeaderSize: number, headersTimeout: number, requestTimeout: number, requireHostHeader: boolean, connectionsCheckingInterval: number }
}

/** Compiles the front door once, from the server config and the routes. */
export function frontDoor (server: ServerConfig, routes: readonly RouteConfig[]): FrontDoor {
  const policy = compilePathPolicy({
    prefixes: routes.flatMap((r) => r.type === 'proxy' ? [r.prefix.replace(/\/+$/, '')] : []),
    encodedSlashes: server.encodedSlashes
  })
  const maxUrl = server.maxUrlLength
  // rawHeaders holds name and value in turn.
  const maxRawHeaders = server.maxHeaderCount * 2

  function rewriteUrl (req: IncomingMessage): string {
    const url = req.url ?? '/'
    if (url.length > maxUrl) return reject(req, new GatewayError('GW_BAD_REQUEST', `request URL is longer than ${maxUrl} characters`, { statusCode: 414 }))
    if (req.rawHeaders.length > maxRawHeaders) return reject(req, new GatewayError('GW_BAD_REQUEST', `request has more than ${server.maxHeaderCount} headers`, { statusCode: 431 }))
    // HTTP/1.1 requires Host (RFC 9112 §3.2); Node's own check answers without a body.
    const host = req.headers.host
    if (host === undefined) {
      if (req.httpVersionMinor === 1) return reject(req, new GatewayError('GW_BAD_REQUEST', 'an HTTP/1.1 request needs a Host header'))
    } else {
      // Node keeps the first of several Host lines: count them in rawHeaders.
      const bad = hostProblem(host, req.rawHeaders)
      if (bad !== null) return reject(req, new GatewayError('GW_BAD_REQUEST', bad))
    }
    const r = normaliseTarget(url, policy)
    if (r.ok) return r.path
    return reject(req, new GatewayError('GW_BAD_REQUEST', `request path refused: ${MESSAGES[r.problem]}`))
  }

  const headersTimeout = Math.min(server.headersTimeoutMs, server.requestTimeoutMs)
  return {
    rewriteUrl,
    clientErrorHandler,
    http: {
      maxHeaderSize: server.maxHeaderBytes,
      // Node refuses a headersTimeout above requestTimeout.
      headersTimeout,
      requestTimeout: server.requestTimeoutMs,
      requireHostHeader: false,
      connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(headersTimeout / 4)))
    }
  }
}

// RFC 9112 §3.2: Host = uri-host [ ":" port ], uri-host per RFC 3986:
// IP-literal ([IPv6] or [vFuture]), IPv4address or reg-name (unreserved,
// pct-encoded, sub-delims). nginx also refuses an empty Host; so does this.
const HOST = /^(?:\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::[0-9]{0,5})?$/

/** Why a request's Host is refused (RFC 9112 §3.2), or null when it is one valid `host[:port]`. */
export function hostProblem (host: string, rawHeaders: readonly string[]): string | null {
  let n = 0
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!
    if (name.length === 4 && name.toLowerCase() === 'host' && ++n > 1) return 'a request may carry only one Host header'
  }
  if (!HOST.test(host)) return 'the Host header is not a valid host[:port]'
  return null
}

const MESSAGES: Record<string, string> = {
  'not-origin-form': 'the request target must be a path starting with "/"',
  fragment: 'a request target may not contain "#"',
  'bad-escape': 'malformed percent-encoding',
  nul: 'the path contains %00',
  backslash: 'the path contains a backslash',
  'encoded-slash': 'the path contains an encoded slash (%2F)',
  'double-encoded': 'the path contains a double-encoded dot or slash',
  'dot-segment-parameter': 'the path contains a disguised dot-segment',
  'escapes-prefix': 'a ".." segment climbs out of the route'
}

function reject (req: IncomingMessage, err: GatewayError): string {
  (req as MarkedRequest)[kVerdict] = err
  // Anything routable will do: the onRequest hook answers before a handler runs.
  return '/'
}

const kAnswering = Symbol('lattice-gateway.client-error')
type ClientSocket = Socket & {
  [kAnswering]?: true
  // Node's http server internals: the request being parsed, the response being written.
  parser?: { incoming: IncomingMessage | null } | null
  _httpMessage?: ServerResponse | null
}

function clientErrorHandler (this: FastifyInstance, err: Error & { code?: string }, s: Socket): void {
  const socket = s as ClientSocket
  // A reset connection has nobody left to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  // Bytes after a request that said `Connection: close` (or HTTP/1.0):
  // that request is valid and being answered, and the connection closes
  // after its response; the extra bytes are never parsed, so drop them
  // rather than replace a real answer with a 400.
  if (err.code === 'HPE_CLOSED_CONNECTION') return
  // The parser stays failed: later bytes report again; one answer is enough.
  if (socket[kAnswering] === true) return
  socket[kAnswering] = true
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
  const message = status === 431 ? 'request headers are too large' : status === 408 ? 'request not received in time' : 'malformed HTTP request'
  // Only the code: the error's rawPacket holds the request's bytes.
  this.log.debug({ event: 'client_error', code: err.code, status, remoteAddress: socket.remoteAddress }, message)
  const body = JSON.stringify(errorBody(status === 408 ? 'GW_CLIENT_TIMEOUT' : 'GW_BAD_REQUEST', status, message))
  const answer = `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
  const incoming = socket.parser?.incoming ?? null
  const res = socket._httpMessage ?? null
  if (incoming !== null && !incoming.complete) {
    // The request being received is the broken one (e.g. a bad chunk in its
    // body): answer it now, unless an answer is already under way.
    if (socket.writable && (res === null || (res.req === incoming && !res.headersSent))) socket.write(answer)
    socket.destroy()
    return
  }
  // Pipelining: the requests before the broken one are valid and may still
  // be answered; their answers go first, in order, then the 400 (RFC 9112 §9.3.2).
  answerAfterPending(socket, answer)
}

/** Writes `answer` once every response queued on the connection is done, then closes it. */
function answerAfterPending (socket: ClientSocket, answer: string): void {
  if (socket.destroyed) return
  const res = socket._httpMessage ?? null
  if (res !== null) {
    // 'close' comes after Node's own 'finish' listener assigned the next queued response.
    res.once('close', () => answerAfterPending(socket, answer))
    return
  }
  if (socket.writable) socket.write(answer)
  // Flush, then close (a plain destroy could drop the tail of an earlier answer).
  socket.destroySoon()
}

export interface LimitsOptions {
  server: ServerConfig
}

/** Answers the verdicts `rewriteUrl` attached; caps the headers Node parses. */
export default fp<LimitsOptions>(async function limits (fastify: FastifyInstance, opts) {
  // Node silently drops headers past maxHeadersCount; one more than the
  // limit lets rewriteUrl see that there were too many and refuse.
  fastify.server.maxHeadersCount = opts.server.maxHeaderCount + 1
  fastify.addHook('onRequest', function (request, _reply, done) {
    const verdict = (request.raw as MarkedRequest)[kVerdict]
    if (verdict === undefined) {
      done()
      return
    }
    done(verdict)
  })
}, { name: 'gateway-limits' })
