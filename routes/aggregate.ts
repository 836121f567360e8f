/**
 * Aggregate routes (`type: aggregate`, SPEC §5): one client request fans
 * out to every section in parallel and gets one merged JSON object back.
 *
 * The route is compiled into a plan when it is registered
 * (src/aggregate/plan.ts); the handler only builds the section headers and
 * executes the plan (src/aggregate/execute.ts). A complete answer carries
 * `x-aggregate-complete: true`; a partial one `false` plus
 * `x-aggregate-failed: key,key` (config order), its failed optional
 * sections `null`. A failed required section answers with a GatewayError,
 * rendered by plugins/errors.ts.
 *
 * SPEC §12: with `fields: true`, `?fields=` picks the sections (and paths)
 * to return; sections answered from a stale cached copy are named in
 * `x-aggregate-stale`.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { AggregateRoute } from '../src/config/schema.js'
import type { Registry } from '../src/upstream/registry.js'
import { compileAggregate, type AggregateMetricsSource } from '../src/aggregate/plan.js'
import { execute, sectionHeaders } from '../src/aggregate/execute.js'
import { parseFields } from '../src/aggregate/fields.js'
import type { ResponseCache } from '../src/cache/store.js'

export interface AggregateRouteOptions {
  route: AggregateRoute
  registry: Registry
  /** Per-section and per-route counters; absent or null counts nothing. */
  metrics?: AggregateMetricsSource | null
  /** The process's response cache; null when no route caches. */
  cache?: ResponseCache | null
}

const CONTENT_TYPE = 'application/json; charset=utf-8'

export default async function aggregateRoute (fastify: FastifyInstance, opts: AggregateRouteOptions): Promise<void> {
  const plan = compileAggregate(opts.route, (name) => opts.registry.get(name), opts.metrics ?? null, opts.cache ?? null)

  async function handler (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const headers = sectionHeaders(plan, request.headers, request.id, request.ip, request.protocol)
    const fields = plan.fields ? parseFields(plan, (request.query as Record<string, string | string[] | undefined>).fields) : null
    const r = await execute(plan, request.params as Record<string, string | undefined>, request.headers, headers, fields, request.trace)
    request.upstream = r.upstream
    if (!r.ok) throw r.error
    reply.header('content-type', CONTENT_TYPE)
    if (r.stale !== null) reply.header('x-aggregate-stale', r.stale)
    if (r.failed === null) {
      reply.header('x-aggregate-complete', 'true')
    } else {
      reply.header('x-aggregate-complete', 'false')
      reply.header('x-aggregate-failed', r.failed)
    }
    return reply.send(r.body)
  }

  fastify.route({ method: plan.method, url: plan.path, handler, config: { label: plan.label } })
}
