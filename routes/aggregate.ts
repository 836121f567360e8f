/**
 * Aggregate routes (`type: aggregate`, SPEC §5) — placeholder until the
 * aggregation plan lands: answers 502 so a config using them still starts.
 */
import type { FastifyInstance } from 'fastify'
import type { AggregateRoute } from '../src/config/schema.js'
import type { Registry } from '../src/upstream/registry.js'

export interface AggregateRouteOptions {
  route: AggregateRoute
  registry: Registry
}

export default async function aggregateRoute (_fastify: FastifyInstance, _opts: AggregateRouteOptions): Promise<void> {}
