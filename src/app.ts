/**
 * Builds the gateway: the public app (proxy and aggregate routes), the
 * admin app (health, readiness, metrics, operator API), the upstream
 * registry and the metrics they share. Nothing here listens; `main.ts`
 * does, and tests call `buildGateway()` directly.
 */
import { randomUUID } from 'node:crypto'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import pino, { type Logger } from 'pino'
import type { GatewayConfig } from './config/schema.js'
import { Registry, type RegistryOptions } from './upstream/registry.js'
import type { LatticeOptions } from './lattice/resolver.js'
import { usesLattice } from './lattice/uses.js'
import { lazyChildLogger } from './child-logger.js'
import { Metrics } from './metrics.js'
import { acceptRequestId } from './http.js'
import errors from '../plugins/errors.js'
import requestLog from '../plugins/request-log.js'
import limits, { frontDoor } from '../plugins/limits.js'
import overload from '../plugins/overload.js'
import proxyRoute from '../routes/proxy.js'
import aggregateRoute from '../routes/aggregate.js'
import healthRoutes, { type ListenerPhase } from '../routes/health.js'
import adminRoutes from '../routes/admin.js'
import uiRoutes from '../routes/ui.js'
import type { AdminChange } from './cluster.js'
import type { ControlPlane } from './fleet/control.js'
import { LocalControlPlane } from './fleet/local.js'
import { RolloutManager } from './rollout/rollout.js'
import rolloutRoutes from '../routes/rollouts.js'

export interface Gateway {
  app: FastifyInstance
  admin: FastifyInstance
  registry: Registry
  metrics: Metrics
  logger: Logger
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
  adminChange?: (change: AdminChange) => Promise<void>
  /** Replaces this process's `/metrics` text (the whole cluster's, aggregated). */
  metricsText?: () => Promise<string>
  /** The control plane of a cluster worker whose primary holds the fleet connection. */
  controlPlane?: (registry: Registry) => ControlPlane
  // --- end multi-core ---
}

/** Secrets never written to logs, wherever they appear. */
export const REDACT = [
  'req.headers.authorization', 'req.headers.cookie', 'req.headers["proxy-authorization"]',
  'res.headers["set-cookie"]', 'headers.authorization', 'headers.cookie',
  'token', '*.token', 'admin.token', 'credentials', '*.credentials', '*.secretAccessKey', '*.sessionToken',
  // Hardening: raw bytes carried by parser errors (an upstream's answer, a client's request).
  'err.data', 'err.rawPacket',
  // Fleet: the store URL may carry a password.
  'fleet.url', 'config.fleet.url'
]

export function createLogger (level: string, minLength = 8192): Logger {
  // Buffered writes: a line per request must not cost a write(2) each.
  // Lines wait at most 250 ms for 8 KiB to gather; what is left is written
  // when the process exits. Synchronous writes of whole buffers cost less
  // CPU than the thread-pool round trip of asynchronous ones.
  // (Cluster workers share stdout and gather less: one write stays within
  // PIPE_BUF, so lines of different workers never interleave.)
  const dest = pino.destination({ dest: 1, sync: true, minLength })
  setInterval(() => { dest.flush() }, 250).unref()
  process.once('exit', () => { try { dest.flushSync() } catch {} })
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'lattice-gateway' } }, dest)
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
  // Fleet (src/fleet/fleet.ts): loaded only when configured, like the AWS SDK.
  const fleet = config.fleet === undefined || opts.controlPlane !== undefined
    ? null
    : await import('./fleet/fleet.js').then((m) => new m.FleetControlPlane(config.fleet!, m.registryTarget(registry, logger), logger))
  const control: ControlPlane = opts.controlPlane?.(registry) ?? fleet ?? new LocalControlPlane(registry, { broadcast: opts.adminChange })
  if (fleet !== null) metrics.bindFleet(fleet)
  // Rollouts (SPEC §11): weight changes through the control plane, one log line per transition.
  metrics.bindRollouts(registry)
  const rollouts = new RolloutManager({ registry, control, onEnd: (service, result) => metrics.rollouts.labels(service, result).inc() })
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
  await app.register(requestLog, { metrics })
  await app.register(limits, { server: config.server })
  await app.register(overload, { server: config.server, metrics })
  for (const route of config.routes) {
    if (route.type === 'proxy') {
      await app.register(proxyRoute, { route, service: registry.get(route.service)!, bodyLimit: config.server.bodyLimitBytes })
    } else {
      await app.register(aggregateRoute, { route, registry, metrics })
    }
  }

  let phase: ListenerPhase = 'starting'
  const admin = Fastify({ loggerInstance: logger.child({ listener: 'admin' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }), genReqId, requestIdHeader: false, forceCloseConnections: true })
  await admin.register(errors)
  await admin.register(requestLog, { metrics: null })
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
    control,
    rollouts,
    markListening () { phase = 'ok' },
    start () {
      registry.start()
      lattice?.start(registry.origins)
      control.start()
    },
    async close () {
      phase = 'stopping'
      await app.close()
      await admin.close()
      rollouts.close()
      await control.close()
      // Lattice first: no address may be set on an origin being closed.
      await lattice?.close()
      await registry.close()
    }
  }
}

/** One log line per state transition, never per request. */
function logTransitions (registry: Registry, logger: Logger): void {
  registry.on('health', (e) => logger.warn({ event: 'origin_health', service: e.origin.service, deployment: e.origin.deployment, origin: e.origin.role, healthy: e.healthy, from: e.healthy ? 'unhealthy' : 'healthy', to: e.healthy ? 'healthy' : 'unhealthy', reason: e.reason }, `origin ${e.origin.label} is ${e.healthy ? 'healthy' : 'unhealthy'}`))
  registry.on('breaker', (e) => logger.warn({ event: 'breaker', service: e.origin.service, deployment: e.origin.deployment, origin: e.origin.role, state: e.state, from: e.from, to: e.state, reason: e.reason }, `breaker of ${e.origin.label}: ${e.from} -> ${e.state}`))
  registry.on('failover', (e) => logger.warn({ event: 'failover', service: e.service, deployment: e.deployment, kind: e.kind, from: e.from, to: e.to, reason: e.reason }, `${e.service}/${e.deployment}: ${e.kind} ${e.from} -> ${e.to}`))
  registry.on('traffic', (e) => logger.warn({ event: 'traffic', service: e.service, from: e.from, to: e.to, changed: e.changed, by: e.by, version: e.version }, `${e.service}: traffic ${weights(e.from)} -> ${weights(e.to)} by ${e.by}${e.version === undefined ? '' : ` (version ${e.version})`}`))
}

/** `blue=0 green=100`, for log messages. */
function weights (w: Readonly<Record<string, number>>): string {
  return Object.entries(w).map(([dep, n]) => `${dep}=${n}`).join(' ')
}
