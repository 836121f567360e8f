/**
 * Probes for orchestrators on the admin listener (SPEC §7): `/healthz`
 * (both listeners accept connections), `/readyz` (every service can reach a
 * healthy origin in a deployment that has traffic) and `/metrics`.
 */
import type { FastifyInstance } from 'fastify'
import type { Registry } from '../src/upstream/registry.js'
import type { Metrics } from '../src/metrics.js'

export type ListenerPhase = 'starting' | 'ok' | 'stopping'

export interface HealthRouteOptions {
  registry: Registry
  metrics: Metrics
  /** `ok` once both listeners accept connections, `stopping` during a drain. */
  phase: () => ListenerPhase
  /** Cluster workers: the text of every worker's metrics (src/cluster.ts). */
  metricsText?: (() => Promise<string>) | undefined
  /** More parts that are not ready (the fleet state not loaded yet: `fleet`). */
  unready?: (() => string[]) | undefined
}

export default async function healthRoutes (fastify: FastifyInstance, opts: HealthRouteOptions): Promise<void> {
  const { registry, metrics, phase } = opts
  const text = opts.metricsText ?? (() => metrics.registry.metrics())
  fastify.get('/healthz', { config: { label: '/healthz' } }, async (_request, reply) => {
    const p = phase()
    if (p !== 'ok') return reply.code(503).send({ status: p })
    return { status: 'ok' }
  })
  fastify.get('/readyz', { config: { label: '/readyz' } }, async (_request, reply) => {
    const failing = opts.unready === undefined ? registry.unready() : [...registry.unready(), ...opts.unready()]
    if (failing.length > 0) return reply.code(503).send({ status: 'unready', failing })
    return { status: 'ready' }
  })
  fastify.get('/metrics', { config: { label: '/metrics' } }, async (_request, reply) => {
    reply.type(metrics.registry.contentType)
    return text()
  })
}
