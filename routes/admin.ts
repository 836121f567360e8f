/**
 * The operator API under `/admin` (SPEC §7), on the admin listener only.
 * Every call needs `Authorization: Bearer <admin.token>`; with no token
 * configured the API is closed (403), never open. Tokens are compared in
 * constant time over their SHA-256 digests, so neither content nor length
 * leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GatewayError } from '../src/errors.js'
import type { Registry, ServiceSnapshot } from '../src/upstream/registry.js'
import type { Service } from '../src/upstream/service.js'
import { parseIfMatch, type ControlPlane } from '../src/fleet/control.js'

export interface AdminRouteOptions {
  registry: Registry
  token: string
  /** Every state change goes through it (local, or the fleet's); with workers it reaches every worker before the answer. */
  control: ControlPlane
}

/** A service's entry with its weights' version beside `traffic` (SPEC §10). */
export type VersionedSnapshot = { traffic: ServiceSnapshot['traffic'], version: number } & Omit<ServiceSnapshot, 'traffic'>

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

/** The bearer-token check of every `/admin` call, as an onRequest hook (other admin route files use it too). */
export function adminAuth (token: string): (request: FastifyRequest) => Promise<void> {
  const expected = token === '' ? null : digest(token)
  return async (request) => {
    if (expected === null) throw new GatewayError('GW_FORBIDDEN', 'the admin API is disabled: set admin.token to enable it')
    const auth = request.headers.authorization
    const given = auth !== undefined && auth.length > 7 && auth.slice(0, 7).toLowerCase() === 'bearer ' ? auth.slice(7).trim() : null
    if (given === null || !timingSafeEqual(digest(given), expected)) {
      throw new GatewayError('GW_UNAUTHORIZED', 'missing or wrong bearer token', { headers: { 'www-authenticate': 'Bearer realm="lattice-gateway-admin"' } })
    }
  }
}

export default async function adminRoutes (fastify: FastifyInstance, opts: AdminRouteOptions): Promise<void> {
  const { registry, control } = opts
  fastify.addHook('onRequest', adminAuth(opts.token))

  function serviceOf (request: FastifyRequest<{ Params: { name: string } }>): Service {
    const s = registry.get(request.params.name)
    if (s === undefined) throw new GatewayError('GW_NOT_FOUND', `unknown service "${request.params.name}"`)
    return s
  }

  const versioned = (name: string): VersionedSnapshot => {
    const { traffic, ...rest } = registry.snapshot(name)!
    return { traffic, version: control.version(name), ...rest }
  }

  fastify.get('/admin/services', { config: { label: '/admin/services' } }, async () => {
    const out: Record<string, VersionedSnapshot> = {}
    for (const name of registry.services.keys()) out[name] = versioned(name)
    return out
  })

  fastify.get<{ Params: { name: string } }>('/admin/services/:name', { config: { label: '/admin/services/:name' } }, async (request, reply) => {
    const name = serviceOf(request).name
    const snap = versioned(name)
    void reply.header('etag', `"${snap.version}"`)
    return snap
  })

  fastify.put<{ Params: { name: string }, Body: unknown }>('/admin/services/:name/traffic', { config: { label: '/admin/services/:name/traffic' } }, async (request, reply) => {
    const service = serviceOf(request)
    const ifMatch = parseIfMatch(request.headers['if-match'])
    const body = request.body
    // parseTraffic answers a malformed body with the same 400 as before, ahead of any control-plane work.
    service.parseTraffic(body)
    const result = await control.changeTraffic({ service: service.name, weights: body as Record<string, number>, source: 'admin', by: request.ip, ...(ifMatch === undefined ? {} : { ifMatch }) })
    const snap = versioned(service.name)
    void reply.header('etag', `"${result.version}"`)
    return result.fleet === undefined ? snap : { ...snap, version: result.version, fleet: result.fleet }
  })

  fastify.get('/admin/fleet', { config: { label: '/admin/fleet' } }, async () => {
    if (control.fleet === undefined) throw new GatewayError('GW_NOT_FOUND', 'no fleet is configured: this gateway keeps its own state (see fleet in the config)')
    return control.fleet.view()
  })

  fastify.get<{ Params: { name: string } }>('/admin/services/:name/history', { config: { label: '/admin/services/:name/history' } }, async (request) => {
    return control.history(serviceOf(request).name)
  })

  fastify.post<{ Params: { name: string, dep: string } }>('/admin/services/:name/deployments/:dep/failback', { config: { label: '/admin/services/:name/deployments/:dep/failback' } }, async (request) => {
    const service = serviceOf(request)
    if (!service.groups.has(request.params.dep)) throw new GatewayError('GW_NOT_FOUND', `service ${service.name} has no deployment "${request.params.dep}"`)
    const result = await control.failback(service.name, request.params.dep, request.ip)
    const answer = { failedBack: result.failedBack, service: versioned(service.name), ...(result.workers === undefined ? {} : { workers: result.workers }) }
    return result.fleet === undefined ? answer : { ...answer, fleet: result.fleet }
  })
}
