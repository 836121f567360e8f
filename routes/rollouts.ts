/**
 * The rollout API (SPEC §11) on the admin listener, behind the same bearer
 * token as the rest of `/admin` (routes/admin.ts's check).
 *
 *   POST /admin/services/:name/rollouts          start (201)
 *   GET  /admin/services/:name/rollout           the current or last one
 *   POST /admin/services/:name/rollout/pause|resume|promote|abort
 */
import type { FastifyInstance } from 'fastify'
import type { RolloutManager } from '../src/rollout/rollout.js'
import { adminAuth } from './admin.js'

export interface RolloutRouteOptions {
  rollouts: RolloutManager
  token: string
}

type Named = { Params: { name: string } }

export default async function rolloutRoutes (fastify: FastifyInstance, opts: RolloutRouteOptions): Promise<void> {
  const { rollouts } = opts
  fastify.addHook('onRequest', adminAuth(opts.token))

  fastify.post<Named & { Body: unknown }>('/admin/services/:name/rollouts', { config: { label: '/admin/services/:name/rollouts' } }, async (request, reply) => {
    const state = await rollouts.start(request.params.name, request.body ?? null, request.ip)
    return reply.code(201).send(state)
  })

  fastify.get<Named>('/admin/services/:name/rollout', { config: { label: '/admin/services/:name/rollout' } }, async (request) => rollouts.get(request.params.name))

  fastify.post<Named>('/admin/services/:name/rollout/pause', { config: { label: '/admin/services/:name/rollout/pause' } }, async (request) => rollouts.pause(request.params.name))
  fastify.post<Named>('/admin/services/:name/rollout/resume', { config: { label: '/admin/services/:name/rollout/resume' } }, async (request) => rollouts.resume(request.params.name))
  fastify.post<Named>('/admin/services/:name/rollout/promote', { config: { label: '/admin/services/:name/rollout/promote' } }, async (request) => rollouts.promote(request.params.name, request.ip))
  fastify.post<Named>('/admin/services/:name/rollout/abort', { config: { label: '/admin/services/:name/rollout/abort' } }, async (request) => rollouts.abort(request.params.name, request.ip))
}
