/**
 * Builds the gateway: the public app (proxy and aggregate routes), the
 * admin app (health, readiness, metrics, operator API), the upstream
 * registry and the metrics they share. Nothing here listens; `main.ts`
 * does, and tests call `buildGateway()` directly.
 */
import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { GatewayConfig } from './config/schema.js'
import { Registry, type AdminChange, type RegistryOptions, type WorkersReport } from './upstream/registry.js'
import type { LatticeOptions } from './lattice/resolver.js'
import { usesLattice } from './lattice/uses.js'
import { lazyChildLogger } from './child-logger.js'
import { createLogger, logTransitions } from './log.js'
import { Metrics } from './metrics.js'
import { ResponseCache, usesCache } from './cache/store.js'
import { acceptRequestId } from './http.js'
import errors from '../plugins/errors.js'
import requestLog from '../plugins/request-log.js'
import tracingPlugin from '../plugins/tracing.js'
import limits, { frontDoor } from '../plugins/limits.js'
import overload from '../plugins/overload.js'
import methods from '../plugins/methods.js'
import proxyRoute from '../routes/proxy.js'
import aggregateRoute from '../routes/aggregate.js'
import healthRoutes, { type ListenerPhase } from '../routes/health.js'
import adminRoutes from '../routes/admin.js'
import type { Tracing } from './tracing/types.js'
import uiRoutes from '../routes/ui.js'
import type { ControlPlane } from './fleet/control.js'
import type { FleetEvents } from './fleet/fleet.js'
import { LocalControlPlane } from './fleet/local.js'
import { RolloutManager } from './rollout/rollout.js'
import rolloutRoutes from '../routes/rollouts.js'
import { WorkerRolloutBackend, type WorkerLinks } from './rollout/workers.js'
import { createRouteGuards } from './auth/route-guard.js'

export interface Gateway {
  app: FastifyInstance
  admin: FastifyInstance
  registry: Registry
  metrics: Metrics
  logger: Logger
  /** OpenTelemetry tracing (src/tracing); null when `tracing.otlpEndpoint` is not set. */
  tracing: Tracing | null
  /** The one door for weight changes, failbacks and their history (src/fleet/control.ts). */
  control: ControlPlane
  /** Rollouts of every service (SPEC §11). */
  rollouts: RolloutManager
  /** Called once both listeners accept connections (flips `/healthz`). */
  markListening(): void
  /** Starts health checks (and Lattice resolution). */
  start(): void
  /** Stops both apps (draining in-flight requests) and closes upstream pools. */
  close(): Promise<void>
}

export interface BuildOptions extends RegistryOptions {
  /** A pino logger; by default one at `server.logLevel` writing to stdout. */
  logger?: Logger
  /** VPC Lattice client options (e.g. credentials); default: the AWS SDK's chains. */
  lattice?: LatticeOptions
  // --- multi-core (src/cluster.ts): set in cluster workers only ---
  /** Awaited after an admin call changed state here: applies the change in every other worker. */
  adminChange?: (change: AdminChange) => Promise<WorkersReport | undefined>
  /** Replaces this process's `/metrics` text (the whole cluster's, aggregated). */
  metricsText?: () => Promise<string>
  /** Rollouts across the workers: the admin worker drives, the others follow (src/rollout/workers.ts). */
  rolloutWorkers?: WorkerLinks
  /** The control plane of a cluster worker whose primary holds the fleet connection. */
  controlPlane?: (registry: Registry) => ControlPlane
  // --- end multi-core ---
  /** Live replicas sharing the traffic (the fleet's); each allows ceil(rateLimit.max / this). Default 1. */
  liveReplicas?: () => number
  /** The response cache's clock (ms); default Date.now. Tests move time with it. */
  cacheClock?: () => number
}

export async function buildGateway (config: GatewayConfig, opts: BuildOptions = {}): Promise<Gateway> {
  const logger = opts.logger ?? createLogger(config.server.logLevel)
  // VPC Lattice (src/lattice): resolves `lattice:` origins, signs `auth: iam` ones.
  // Loaded only when used: the AWS SDK is the largest module the gateway has.
  const lattice = usesLattice(config)
    ? new (await import('./lattice/resolver.js')).LatticeResolver(config.lattice, logger, opts.lattice)
    : null
  const registry = new Registry(config, { ...opts, decorate: opts.decorate ?? lattice?.decorate })
  const metrics = new Metrics()
  metrics.bind(registry)
  logTransitions(registry, logger)
  // Tracing (SPEC §13): the OpenTelemetry SDK is loaded only when an OTLP endpoint is set.
  const tracing = config.tracing.otlpEndpoint === ''
    ? null
    : await (await import('./tracing/otel.js')).startTracing(config.tracing, { registry, metrics: metrics.registry, logger })
  // Fleet (src/fleet/fleet.ts): loaded only when configured, like the AWS SDK.
  const custom = opts.controlPlane?.(registry) ?? null
  const fleet = config.fleet === undefined || custom !== null
    ? null
    : await import('./fleet/fleet.js').then((m) => new m.FleetControlPlane(config.fleet!, m.registryTarget(registry, logger), logger))
  const control: ControlPlane = custom ?? fleet ?? new LocalControlPlane(registry, { broadcast: opts.adminChange })
  if (control.fleet !== undefined && control instanceof EventEmitter) metrics.bindFleet(control as EventEmitter<FleetEvents>)
  // Rollouts (SPEC §11): weight changes through the control plane, one log line per transition.
  metrics.bindRollouts(registry)
  // With a fleet store (not in a cluster worker, whose primary holds the connection): one driver, state and counts in PostgreSQL.
  const fleetPool = control.fleet?.pool ?? null
  const rolloutBackend = config.fleet !== undefined && control.fleet !== undefined && fleetPool !== null
    ? new (await import('./rollout/lease.js')).FleetRolloutBackend({ fleet: control.fleet, pool: fleetPool, registry, self: control.replicaId, url: config.fleet.url, heartbeatMs: config.fleet.heartbeatMs, logger })
    : undefined
  const backend = rolloutBackend ?? (opts.rolloutWorkers === undefined ? undefined : new WorkerRolloutBackend(registry, control.replicaId, opts.rolloutWorkers))
  const rollouts = new RolloutManager({ registry, control, ...(backend === undefined ? {} : { backend }), onEnd: (service, result) => metrics.rollouts.labels(service, result).inc() })
  rollouts.on('rollout', (e) => {
    const { message, ...fields } = e
    logger[e.action === 'error' ? 'error' : 'warn']({ event: 'rollout', ...fields }, message)
  })

  const genReqId = (req: { headers: Record<string, string | string[] | undefined> }): string => acceptRequestId(req.headers['x-request-id']) ?? randomUUID()
  // Hardening: path normalisation before routing, request limits, client errors (plugins/limits.ts).
  const door = frontDoor(config.server, config.routes)
  const app = Fastify({
    rewriteUrl: door.rewriteUrl,
    clientErrorHandler: door.clientErrorHandler,
    loggerInstance: logger as FastifyBaseLogger,
    childLoggerFactory: lazyChildLogger,
    // One access-log line per request is written by plugins/request-log.ts.
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    genReqId,
    bodyLimit: config.server.bodyLimitBytes,
    requestTimeout: config.server.requestTimeoutMs,
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    http: door.http,
    return503OnClosing: false,
    forceCloseConnections: 'idle'
  })
  await app.register(errors)
  await app.register(requestLog, { metrics, redactQueryParams: config.server.redactQueryParams })
  if (tracing !== null) await app.register(tracingPlugin, { tracing })
  await app.register(limits, { server: config.server })
  await app.register(overload, { server: config.server, metrics })
  // Edge authentication and rate limits (SPEC §14): a hook per route that has them.
  // With fleet, rate limits split over the live replicas (SPEC §14): the count
  // the fleet's heartbeats report, kept as a plain number for the request path.
  let live = 1
  if (control.fleet !== undefined && control instanceof EventEmitter) (control as EventEmitter<FleetEvents>).on('replicas', (n: number) => { live = n })
  const guards = createRouteGuards(config, { metrics, logger, liveReplicas: opts.liveReplicas ?? (control.fleet === undefined ? undefined : () => live) })
  // The response cache (SPEC §12): one per process, only when some route or section caches.
  const cache = config.server.cacheMaxBytes > 0 && usesCache(config) ? new ResponseCache(config.server.cacheMaxBytes, opts.cacheClock) : null
  for (const route of config.routes) {
    if (route.type === 'proxy') {
      await app.register(guards.wrap(route, proxyRoute), { route, service: registry.get(route.service)!, bodyLimit: config.server.bodyLimitBytes, bufferBytes: config.server.requestBufferBytes, bodyTimeoutMs: config.server.clientBodyTimeoutMs, cache, metrics })
    } else {
      await app.register(guards.wrap(route, aggregateRoute), { route, registry, metrics, cache })
    }
  }
  // Hostile clients: CONNECT, TRACE and methods no route serves get 405 (plugins/methods.ts).
  await app.register(methods, { routes: config.routes })

  let phase: ListenerPhase = 'starting'
  const admin = Fastify({ loggerInstance: logger.child({ listener: 'admin' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }), genReqId, requestIdHeader: false, forceCloseConnections: true })
  await admin.register(errors)
  await admin.register(requestLog, { metrics: null, redactQueryParams: config.server.redactQueryParams })
  await admin.register(uiRoutes, {})
  await admin.register(healthRoutes, { registry, metrics, phase: () => phase, metricsText: opts.metricsText, unready: control.fleet === undefined ? undefined : () => control.fleet!.loaded ? [] : ['fleet'] })
  await admin.register(adminRoutes, { registry, token: config.admin.token, control })
  await admin.register(rolloutRoutes, { rollouts, token: config.admin.token })

  await app.ready()
  await admin.ready()
  return {
    app,
    admin,
    registry,
    metrics,
    logger,
    tracing,
    control,
    rollouts,
    markListening () { phase = 'ok' },
    start () {
      registry.start()
      guards.start()
      lattice?.start(registry.origins)
      control.start()
      rolloutBackend?.start(rollouts)
    },
    async close () {
      phase = 'stopping'
      await app.close()
      await admin.close()
      rollouts.close()
      await rolloutBackend?.close()
      await tracing?.shutdown()
      await control.close()
      guards.close()
      // Lattice first: no address may be set on an origin being closed.
      await lattice?.close()
      await registry.close()
    }
  }
}
