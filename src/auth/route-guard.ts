/**
 * Edge authentication on routes (SPEC §14): one `onRequest` hook per route
 * that has `auth` or `rateLimit`, compiled when the route is registered.
 * A route with neither is registered exactly as before: no hook, no cost.
 *
 * The hook, in order:
 *  1. `auth`: the bearer token is verified (src/auth/jwt.ts) — missing or
 *     invalid: 401 GW_UNAUTHENTICATED with `WWW-Authenticate: Bearer`; no
 *     keys yet: 503 GW_AUTH_UNAVAILABLE.
 *  2. `auth: { policy }`: the compiled policy (src/auth/policy.ts) — denied:
 *     403 GW_FORBIDDEN.
 *  3. The request's headers are adjusted before any route copies them:
 *     `Authorization` removed unless `forwardAuthorization: true`; each
 *     `claimHeaders` header removed, then set from the verified claim (so a
 *     client cannot send its own).
 *  4. `rateLimit`: counted with @fastify/rate-limit's store, per key (`ip`,
 *     `header:<name>`, `jwt:<claim>`; a request without that header or
 *     claim is counted by its IP). Over the limit: 429 GW_RATE_LIMITED with
 *     `Retry-After` and `RateLimit-Limit/-Remaining/-Reset` (seconds); under
 *     it the three `RateLimit-*` headers go on the answer. Rejected requests
 *     (401/403) are not counted.
 *
 * Fleet: each replica allows `ceil(max / live replicas)`, the replica count
 * read per request from `liveReplicas()` (default: 1). Counts are kept in
 * this process (per worker with `server.workers > 1`).
 *
 * Nothing here logs a token or a claim value: refusals are logged by the
 * error handler with their code and a message naming the problem only.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import rateLimitPlugin, { normalizeIP } from '@fastify/rate-limit'
import type { JWTPayload } from 'jose'
import type { Logger } from 'pino'
import type { GatewayConfig, RateLimitConfig, RouteConfig } from '../config/schema.js'
import { GatewayError } from '../errors.js'
import type { HotCounter, Metrics } from '../metrics.js'
import { AuthFailure, JwtVerifier } from './jwt.js'
import { compilePolicy, primitives, type Policy } from './policy.js'

export const AUTH_RESULTS = ['ok', 'unauthenticated', 'forbidden', 'unavailable'] as const
type AuthResult = typeof AUTH_RESULTS[number]

/** A route plugin as routes/*.ts export them. */
export type RoutePlugin<O> = (fastify: FastifyInstance, opts: O) => Promise<void>

export interface RouteGuardOptions {
  metrics: Metrics | null
  logger: Logger
  /**
   * The number of live replicas sharing the traffic (the fleet's control
   * plane knows it); rate limits allow `ceil(max / liveReplicas())` here.
   * Read per request, so it may change at any time. Default: 1.
   */
  liveReplicas?: () => number
}

export interface RouteGuards {
  /** The verifier shared by every route with `auth` (null when no route has one). */
  readonly verifier: JwtVerifier | null
  /** `plugin` itself for a route without `auth`/`rateLimit`; else `plugin` behind the route's hook. */
  wrap<O>(route: RouteConfig, plugin: RoutePlugin<O>): RoutePlugin<O>
  /** Starts fetching the JWKS (the gateway starts whether or not it can). */
  start(): void
  close(): void
}

// Keys one route's rate-limit store keeps (least recently used dropped).
const RATE_LIMIT_KEYS = 10000
const kClaims = Symbol('gateway.claims')
// Node refuses header values outside these; such a claim is not sent.
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/

export function createRouteGuards (config: GatewayConfig, opts: RouteGuardOptions): RouteGuards {
  const jwt = config.auth?.jwt
  const used = config.routes.some((r) => r.auth !== undefined)
  const verifier = used && jwt !== undefined ? new JwtVerifier(jwt) : null
  if (verifier !== null) {
    verifier.on('state', (e) => {
      const line = { event: 'jwks', from: e.from, to: e.to, reason: e.reason }
      if (e.to === 'ok') opts.logger.info(line, `JWKS ${e.from} -> ok`)
      else opts.logger.warn(line, `JWKS could not be fetched (${e.reason}); ${e.to === 'stale' ? 'keys in hand still used' : 'requests with a token get 503 until it is'}`)
    })
  }
  const policies = new Map<string, Policy>()
  for (const [name, statements] of Object.entries(config.auth?.policies ?? {})) policies.set(name, compilePolicy(statements))

  return {
    verifier,
    wrap<O> (route: RouteConfig, plugin: RoutePlugin<O>): RoutePlugin<O> {
      if (route.auth === undefined && route.rateLimit === undefined) return plugin
      return async function guarded (scope, o) {
        scope.addHook('onRequest', await compileGuard(scope, route, route.auth === undefined ? null : verifier, policies, opts))
        await plugin(scope, o)
      }
    },
    start () { verifier?.start() },
    close () { verifier?.close() }
  }
}

type Guard = (request: FastifyRequest, reply: FastifyReply) => Promise<void>

async function compileGuard (scope: FastifyInstance, route: RouteConfig, verifier: JwtVerifier | null, policies: ReadonlyMap<string, Policy>, opts: RouteGuardOptions): Promise<Guard> {
  const label = route.type === 'proxy' ? route.prefix : route.path
  const counters: Record<AuthResult, HotCounter> | null = verifier !== null && opts.metrics !== null ? opts.metrics.authCounters(label, AUTH_RESULTS) : null
  const policy = typeof route.auth === 'object' ? policies.get(route.auth.policy)! : null
  const stripAuthorization = route.forwardAuthorization !== true
  const claimHeaders = Object.entries(route.claimHeaders ?? {})
  const limit = route.rateLimit === undefined ? null : await rateLimiter(scope, route.rateLimit, label, opts)
  const keepClaims = route.rateLimit?.key.startsWith('jwt:') === true
  if (keepClaims) scope.decorateRequest(kClaims, null)

  return async function guard (request, reply) {
    if (verifier !== null) {
      const token = bearer(request.headers.authorization)
      if (token === null) {
        counters?.unauthenticated.inc()
        throw unauthenticated('a bearer token is required')
      }
      let claims: JWTPayload
      try {
        claims = await verifier.verify(token)
      } catch (err) {
        if (err instanceof AuthFailure && err.kind === 'unavailable') {
          counters?.unavailable.inc()
          throw new GatewayError('GW_AUTH_UNAVAILABLE', err.message, { headers: { 'retry-after': '1' } })
        }
        counters?.unauthenticated.inc()
        throw unauthenticated(err instanceof AuthFailure ? err.message : 'the bearer token is not valid')
      }
      if (policy !== null) {
        const q = request.url.indexOf('?')
        const decision = policy({ method: request.method, path: q === -1 ? request.url : request.url.slice(0, q), headers: request.headers, query: request.query as Record<string, unknown>, ip: request.ip, claims })
        if (decision !== 'allow') {
          counters?.forbidden.inc()
          throw new GatewayError('GW_FORBIDDEN', decision === 'explicit-deny' ? 'the route\'s policy denies this request' : 'no statement of the route\'s policy allows this request')
        }
      }
      counters?.ok.inc()
      // The node request's own headers: what every route copies from (fastify's
      // `request.headers` is a merged copy once something has assigned to it).
      const h = request.raw.headers
      if (stripAuthorization) delete h.authorization
      for (let i = 0; i < claimHeaders.length; i++) {
        const [claim, header] = claimHeaders[i]!
        delete h[header]
        const v = headerValue(claims[claim])
        if (v !== null) h[header] = v
      }
      if (keepClaims) (request as unknown as Record<symbol, unknown>)[kClaims] = claims
    }
    if (limit !== null) await limit(request, reply)
  }
}

function unauthenticated (message: string): GatewayError {
  return new GatewayError('GW_UNAUTHENTICATED', message, { headers: { 'www-authenticate': 'Bearer' } })
}

/** The token of `Authorization: Bearer <token>`, else null. */
function bearer (value: string | undefined): string | null {
  if (value === undefined || value.length < 8) return null
  if (value.slice(0, 7).toLowerCase() !== 'bearer ') return null
  const token = value.slice(7).trim()
  return token === '' || token.includes(' ') ? null : token
}

/** A claim as one header value; null when it has none Node could send. */
function headerValue (v: unknown): string | null {
  let s: string
  if (typeof v === 'string') s = v
  else if (typeof v === 'number' || typeof v === 'boolean') s = String(v)
  else if (Array.isArray(v)) s = primitives(v, false).join(',')
  else if (typeof v === 'object' && v !== null) s = JSON.stringify(v)
  else return null
  return HEADER_VALUE.test(s) ? s : null
}

type Limiter = (request: FastifyRequest, reply: FastifyReply) => Promise<void>

async function rateLimiter (scope: FastifyInstance, cfg: RateLimitConfig, label: string, opts: RouteGuardOptions): Promise<Limiter> {
  await scope.register(rateLimitPlugin, { global: false })
  const replicas = opts.liveReplicas
  const counter = opts.metrics?.rateLimitedCounter(label) ?? null
  const options = {
    // A count that is not a number >= 1 (a control plane not connected yet) counts as 1.
    max: replicas === undefined ? cfg.max : () => { const n = replicas(); return Math.ceil(cfg.max / (n >= 1 ? n : 1)) },
    timeWindow: cfg.windowMs,
    keyGenerator: rateLimitKey(cfg.key),
    // The store of this route (@fastify/rate-limit's LocalStore, an LRU).
    cache: RATE_LIMIT_KEYS
  }
  const check = scope.createRateLimit(options)
  const per = cfg.windowMs % 1000 === 0 ? `${cfg.windowMs / 1000} s` : `${cfg.windowMs} ms`
  return async function limit (request, reply) {
    const r = await check(request)
    if (r.isAllowed) return
    const reset = String(r.ttlInSeconds)
    if (!r.isExceeded) {
      // On the raw response: a proxied answer is written there directly (hijacked).
      const raw = reply.raw
      raw.setHeader('ratelimit-limit', String(r.max))
      raw.setHeader('ratelimit-remaining', String(r.remaining))
      raw.setHeader('ratelimit-reset', reset)
      return
    }
    counter?.inc()
    throw new GatewayError('GW_RATE_LIMITED', `over the route's rate limit (${r.max} requests per ${per}); retry in ${reset} s`, {
      headers: { 'retry-after': reset, 'ratelimit-limit': String(r.max), 'ratelimit-remaining': '0', 'ratelimit-reset': reset }
    })
  }
}

/** The counting key of a request; prefixed so an IP never equals a header value. */
function rateLimitKey (key: string): (request: FastifyRequest) => string {
  if (key === 'ip') return (request) => `ip ${normalizeIP(request.ip)}`
  if (key.startsWith('header:')) {
    const name = key.slice('header:'.length).toLowerCase()
    return (request) => {
      const v = request.headers[name]
      return v === undefined ? `ip ${normalizeIP(request.ip)}` : `h ${Array.isArray(v) ? v.join(',') : v}`
    }
  }
  const claim = key.slice('jwt:'.length)
  return (request) => {
    const claims = (request as unknown as Record<symbol, JWTPayload | null>)[kClaims]
    const v = claims?.[claim]
    return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? `c ${String(v)}` : `ip ${normalizeIP(request.ip)}`
  }
}
