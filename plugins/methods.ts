/**
 * Methods no route serves (SPEC §17): `CONNECT`, `TRACE`, WebDAV verbs and
 * any other method Node's parser accepts get a JSON 405
 * GW_METHOD_NOT_ALLOWED with `Allow`, never a 404 or a silently closed
 * connection.
 *
 * - A path a route matches: `Allow` lists that route's methods (a proxy
 *   route serves GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE; an aggregate
 *   route its `method`, plus HEAD for GET).
 * - A path no route matches: a method some route serves is 404 GW_NO_ROUTE
 *   as before; a method no route serves anywhere is 405, `Allow` listing
 *   every method the gateway serves.
 * - `CONNECT` never reaches the router (Node hands it to the server's
 *   'connect' event and closes the socket when nobody listens): answered
 *   405 here, then the connection is closed.
 *
 * All of it is compiled at start-up into extra router entries, one per
 * route URL for the methods it does not serve: a served request costs
 * nothing more.
 */
import { METHODS, STATUS_CODES, type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { RouteConfig } from '../src/config/schema.js'
import { GatewayError } from '../src/errors.js'

const PROXY_METHODS = ['GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH', 'DELETE']

export interface MethodsOptions {
  routes: readonly RouteConfig[]
}

/** The URLs each route registers and the methods it serves there. */
function served (routes: readonly RouteConfig[]): Map<string, { methods: Set<string>, label: string }> {
  const map = new Map<string, { methods: Set<string>, label: string }>()
  const add = (url: string, methods: readonly string[], label: string): void => {
    const entry = map.get(url) ?? { methods: new Set<string>(), label }
    for (const m of methods) entry.methods.add(m)
    map.set(url, entry)
  }
  const prefixes: string[] = []
  for (const r of routes) {
    if (r.type === 'proxy') {
      const prefix = r.prefix.replace(/\/+$/, '')
      prefixes.push(prefix)
      add(prefix === '' ? '/' : prefix, PROXY_METHODS, r.prefix)
      add(`${prefix}/*`, PROXY_METHODS, r.prefix)
    }
  }
  for (const r of routes) {
    if (r.type === 'proxy') continue
    add(r.path, r.method === 'GET' ? ['GET', 'HEAD'] : [r.method], r.path)
    // An aggregate path inside a proxy prefix: the proxy serves its other
    // methods there (the router prefers the aggregate's static path).
    if (prefixes.some((p) => r.path === p || r.path.startsWith(`${p}/`))) add(r.path, PROXY_METHODS, r.path)
  }
  return map
}

const order = (methods: Iterable<string>): string => [...methods].sort((a, b) => METHODS.indexOf(a) - METHODS.indexOf(b)).join(', ')

export default fp<MethodsOptions>(async function methods (fastify: FastifyInstance, opts) {
  const byUrl = served(opts.routes)
  const everywhere = new Set<string>()
  for (const e of byUrl.values()) for (const m of e.methods) everywhere.add(m)
  const allowAll = order(everywhere)
  // Every method Node parses becomes routable (fastify knows the common ones).
  const known = new Set(fastify.supportedMethods)
  for (const m of METHODS) {
    if (m !== 'CONNECT' && !known.has(m)) fastify.addHttpMethod(m, { hasBody: true })
  }
  const routable = METHODS.filter((m) => m !== 'CONNECT')

  const entries: Array<{ url: string, methods: string[], allow: string, label: string }> = []
  for (const [url, e] of byUrl) {
    const methods = routable.filter((m) => !e.methods.has(m))
    if (methods.length > 0) entries.push({ url, methods, allow: order(e.methods), label: e.label })
  }
  // Paths no route matches: only the methods no route serves anywhere.
  for (const url of ['/', '/*']) {
    if (byUrl.has(url)) continue
    const methods = routable.filter((m) => !everywhere.has(m))
    if (methods.length > 0) entries.push({ url, methods, allow: allowAll, label: 'unmatched' })
  }

  await fastify.register(async function notAllowed (scope) {
    // A refused request's body is never parsed.
    scope.removeAllContentTypeParsers()
    scope.addContentTypeParser('*', function (_request, _payload, done) { done(null) })
    for (const e of entries) {
      const handler = async (request: FastifyRequest, _reply: FastifyReply): Promise<never> => {
        throw new GatewayError('GW_METHOD_NOT_ALLOWED', `${request.method} is not allowed here`, { headers: { allow: e.allow } })
      }
      scope.route({ method: e.methods, url: e.url, handler, exposeHeadRoute: false, config: { label: e.label } })
    }
  })

  // CONNECT: Node would close the socket without a word.
  const connect = JSON.stringify(new GatewayError('GW_METHOD_NOT_ALLOWED', 'CONNECT is not allowed').toJSON())
  const answer = `HTTP/1.1 405 ${STATUS_CODES[405]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(connect)}\r\nAllow: ${allowAll}\r\nConnection: close\r\n\r\n${connect}`
  fastify.server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    socket.on('error', () => {})
    fastify.log.debug({ event: 'client_error', code: 'CONNECT', status: 405 }, 'CONNECT is not allowed')
    socket.end(answer, () => socket.destroy())
  })
}, { name: 'gateway-methods' })
