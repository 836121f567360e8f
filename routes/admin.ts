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
import type { AdminChange, Registry, WorkersReport } from '../src/upstream/registry.js'
import type { Service } from '../src/upstream/service.js'

export interface AdminRouteOptions {
  registry: Registry
  token: string
  /** Cluster workers: awaited after a change applied here, so every worker has it before the answer. */
  afterChange?: ((change: AdminChange) => Promise<WorkersReport | undefined>) | undefined
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

export default async function adminRoutes (fastify: FastifyInstance, opts: AdminRouteOptions): Promise<void> {
  const { registry } = opts
  const afterChange = opts.afterChange ?? null
  const expected = opts.token === '' ? null : digest(opts.token)

  fastify.addHook('onRequest', async (request) => {
    if (expected === null) throw new GatewayError('GW_FORBIDDEN', 'the admin API is disabled: set admin.token to enable it')
    const auth = request.headers.authorization
    const given = auth !== undefined && auth.length > 7 && auth.slice(0, 7).toLowerCase() === 'bearer ' ? auth.slice(7).trim() : null
    if (given === null || !timingSafeEqual(digest(given), expected)) {
      throw new GatewayError('GW_UNAUTHORIZED', 'missing or wrong bearer token', { headers: { 'www-authenticate': 'Bearer realm="lattice-gateway-admin"' } })
    }
  })

  function serviceOf (request: FastifyRequest<{ Params: { name: string } }>): Service {
    const s = registry.get(request.params.name)
    if (s === undefined) throw new GatewayError('GW_NOT_FOUND', `unknown service "${request.params.name}"`)
    return s
  }

  fastify.get('/admin/services', { config: { label: '/admin/services' } }, async () => registry.snapshotAll())

  fastify.get<{ Params: { name: string } }>('/admin/services/:name', { config: { label: '/admin/services/:name' } }, async (request) => {
    return registry.snapshot(serviceOf(request).name)
  })

  fastify.put<{ Params: { name: string }, Body: unknown }>('/admin/services/:name/traffic', { config: { label: '/admin/services/:name/traffic' } }, async (request) => {
    const service = serviceOf(request)
    const weights = service.setTraffic(request.body, request.ip)
    if (afterChange !== null) await afterChange({ kind: 'traffic', service: service.name, weights: { ...weights }, by: request.ip })
    return registry.snapshot(service.name)
  })

  fastify.post<{ Params: { name: string, dep: string } }>('/admin/services/:name/deployments/:dep/failback', { config: { label: '/admin/services/:name/deployments/:dep/failback' } }, async (request) => {
    const service = serviceOf(request)
    const group = service.groups.get(request.params.dep)
    if (group === undefined) throw new GatewayError('GW_NOT_FOUND', `service ${service.name} has no deployment "${request.params.dep}"`)
    const moved = group.failback()
    // Every worker holds its own active origin: the other workers fail back even when this one was already there.
    // A worker whose own checks still see the primary unhealthy fails back as soon as they see it healthy ("pending").
    const workers = afterChange === null ? undefined : await afterChange({ kind: 'failback', service: service.name, deployment: group.deployment })
    return { failedBack: moved, service: registry.snapshot(service.name), ...(workers === undefined ? {} : { workers }) }
  })
}
