/**
 * Multi-core (`server.workers` > 1): a primary process and N workers
 * (node:cluster). Loaded only when the config asks for more than one
 * worker; with one, `main.ts` runs the gateway in its own process and
 * nothing here exists.
 *
 * - Every worker builds the whole gateway and listens on the public port,
 *   which the cluster shares. Each holds its own upstream pools, health
 *   checks, breakers and active origins.
 * - One worker (the "admin worker") also listens on the admin port. A
 *   state-changing admin call (traffic weights, failback) is applied there,
 *   then sent through the primary to every other worker, and answered only
 *   once they all applied it (or left): a request after the answer sees the
 *   new weights whichever worker serves it.
 * - The primary keeps the latest weights per service; a worker that starts
 *   later (a restart after a crash) takes them before it listens.
 * - `/metrics` on the admin worker asks the primary, whose prom-client
 *   AggregatorRegistry collects every worker's registry.
 * - SIGTERM/SIGINT to the primary: every worker drains (today's drain), the
 *   primary exits 0 once all are gone. A worker that dies otherwise is
 *   restarted (and logged); one that cannot start stops the whole gateway.
 */
import cluster, { type Worker } from 'node:cluster'
import client from 'prom-client'
import type { Logger } from 'pino'
import type { GatewayConfig } from './config/schema.js'
import { createLogger, type BuildOptions, type Gateway } from './app.js'

/** A state change made through the admin API, to apply in every worker. */
export type AdminChange =
  | { kind: 'traffic', service: string, weights: Record<string, number>, by: string, version?: number }
  | { kind: 'failback', service: string, deployment: string }

type Weights = Record<string, Record<string, number>>

/** Worker -> primary. */
type Up =
  | { lgw: 'sync' }
  | { lgw: 'listening' }
  | { lgw: 'change', id: number, change: AdminChange }
  | { lgw: 'applied', id: number }
  | { lgw: 'metrics', id: number }

/** Primary -> worker. */
type Down =
  | { lgw: 'state', traffic: Weights, versions?: Record<string, number> }
  | { lgw: 'apply', id: number, change: AdminChange }
  | { lgw: 'done', id: number }
  | { lgw: 'metrics', id: number, text?: string, error?: string }
  | { lgw: 'stop' }

const ADMIN_ENV = 'LATTICE_GATEWAY_ADMIN_WORKER'
/** How long the primary waits for the other workers to apply a change. */
const APPLY_TIMEOUT_MS = 2000
/** More restarts than this within RESTART_WINDOW_MS: the gateway gives up (exit 1). */
const MAX_RESTARTS = 5
const RESTART_WINDOW_MS = 10000

function isMessage<T extends { lgw: string }> (m: unknown): m is T {
  return typeof m === 'object' && m !== null && typeof (m as { lgw?: unknown }).lgw === 'string'
}

/** True in the primary of a cluster (and in a process that is no worker). */
export function isPrimary (): boolean {
  return cluster.isPrimary
}

/** What `main.ts` run() needs to know and call in a cluster worker. */
export interface WorkerRole {
  /** This worker listens on the admin port too. */
  admin: boolean
  /** Hooks for buildGateway (logger with the worker's id, admin change and metrics). */
  build: BuildOptions
  /** Takes the cluster's current weights and starts applying changes; before listening. */
  prepare(gw: Gateway): Promise<void>
  /** Both listeners (or the public one) accept connections. */
  listening(): void
  /** The primary asks this worker to drain. */
  onStop(stop: (reason: string) => void): void
}

/** The role of this cluster worker; call once, early. */
export function workerRole (config: GatewayConfig): WorkerRole {
  const send = (m: Up): void => { if (process.connected) process.send!(m) }
  const id = cluster.worker?.id ?? 0
  const logger = createLogger(config.server.logLevel, 2048).child({ worker: id, pid: process.pid })
  // prom-client answers the primary's metrics requests from this registry list.
  void new client.AggregatorRegistry()
  let seq = 0
  const waiting = new Map<number, (m: Down & { lgw: 'done' | 'metrics' }) => void>()
  let gw: Gateway | null = null
  let gotState: ((w: Weights, versions: Record<string, number>) => void) | null = null
  let stopHandler: ((reason: string) => void) | null = null

  const ask = <T>(m: (id: number) => Up, then: (reply: Down & { lgw: 'done' | 'metrics' }) => T): Promise<T> => {
    const n = ++seq
    return new Promise<T>((resolve) => {
      waiting.set(n, (reply) => { waiting.delete(n); resolve(then(reply)) })
      send(m(n))
    })
  }

  process.on('message', (m: unknown) => {
    if (!isMessage<Down>(m)) return
    switch (m.lgw) {
      case 'state': gotState?.(m.traffic, m.versions ?? {}); break
      case 'apply':
        if (gw !== null) apply(gw, m.change, logger)
        send({ lgw: 'applied', id: m.id })
        break
      case 'done':
      case 'metrics': waiting.get(m.id)?.(m); break
      // Not listening yet: nothing to drain.
      case 'stop': if (stopHandler === null) process.exit(0); else stopHandler('primary: stop'); break
    }
  })

  return {
    admin: process.env[ADMIN_ENV] === '1',
    build: {
      logger,
      adminChange: (change) => ask((n) => ({ lgw: 'change', id: n, change }), () => undefined),
      metricsText: () => ask((n) => ({ lgw: 'metrics', id: n }), (reply) => {
        if (reply.lgw === 'metrics' && reply.text !== undefined) return reply.text
        throw new Error(`cluster metrics unavailable: ${reply.lgw === 'metrics' ? reply.error ?? 'no answer' : 'no answer'}`)
      })
    },
    async prepare (g) {
      client.AggregatorRegistry.setRegistries([g.metrics.registry])
      const state = new Promise<[Weights, Record<string, number>]>((resolve) => { gotState = (w, v) => resolve([w, v]) })
      gw = g
      send({ lgw: 'sync' })
      const [traffic, versions] = await state
      for (const [service, weights] of Object.entries(traffic)) {
        const version = versions[service]
        apply(g, version === undefined ? { kind: 'traffic', service, weights, by: 'cluster sync' } : { kind: 'traffic', service, weights, by: 'cluster sync', version }, logger)
      }
    },
    listening () { send({ lgw: 'listening' }) },
    onStop (stop) { stopHandler = stop }
  }
}

/** Applies a change made in another worker; what fails here is logged, never thrown. */
function apply (gw: Gateway, change: AdminChange, logger: Logger): void {
  try {
    const service = gw.registry.get(change.service)
    if (service === undefined) return
    if (change.kind === 'traffic') {
      // With a version (src/fleet/): the worker's control plane takes it too.
      if (change.version !== undefined && gw.control.adopt !== undefined) gw.control.adopt(change.service, change.weights, change.version, change.by)
      else service.setTraffic(change.weights, change.by)
    } else {
      service.groups.get(change.deployment)?.failback()
    }
  } catch (err) {
    // e.g. a failback while this worker's health checks still see the primary as unhealthy.
    logger.warn({ err, change }, `cluster: admin change not applied in this worker: ${err instanceof Error ? err.message : String(err)}`)
  }
}

/** Runs the primary: forks `workers` workers and supervises them. Resolves with the exit code. */
export function runPrimary (config: GatewayConfig, workers: number): Promise<number> {
  const log = createLogger(config.server.logLevel).child({ role: 'primary', pid: process.pid })
  const aggregator = new client.AggregatorRegistry()
  const traffic: Weights = {}
  const versions: Record<string, number> = {}
  /** Workers that built their gateway and take changes. */
  const synced = new Set<Worker>()
  const listened = new Set<Worker>()
  const pending = new Map<number, { left: Set<Worker>, finish: () => void }>()
  const restarts: number[] = []
  let adminWorker: Worker | null = null
  let seq = 0
  let stopping = false
  let code = 0

  return new Promise<number>((resolve) => {
    /** A worker that left confirms nothing more: stop waiting for it. */
    const settle = (w: Worker): void => {
      for (const [n, p] of pending) {
        if (p.left.delete(w) && p.left.size === 0) { pending.delete(n); p.finish() }
      }
    }

    const stopAll = (reason: string): void => {
      if (stopping) {
        // A repeated signal: workers close their remaining connections now.
        log.warn({ reason }, 'signal repeated: workers close their remaining connections now')
        for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM')
        return
      }
      stopping = true
      log.info({ reason, workers: Object.keys(cluster.workers ?? {}).length }, 'draining every worker')
      for (const w of Object.values(cluster.workers ?? {})) if (w?.isConnected() === true) w.send({ lgw: 'stop' } satisfies Down)
      // A worker that does not finish its drain in time is ended.
      const force = setTimeout(() => {
        for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL')
      }, config.server.shutdownGraceMs + 5000)
      force.unref()
      if (Object.keys(cluster.workers ?? {}).length === 0) resolve(code)
    }

    const onMessage = (w: Worker, m: unknown): void => {
      if (!isMessage<Up>(m)) return
      switch (m.lgw) {
        case 'sync':
          synced.add(w)
          w.send({ lgw: 'state', traffic, versions } satisfies Down)
          break
        case 'listening':
          listened.add(w)
          log.info({ worker: w.id, workerPid: w.process.pid, admin: w === adminWorker }, `worker ${w.id} listening`)
          break
        case 'change': {
          if (m.change.kind === 'traffic') {
            traffic[m.change.service] = m.change.weights
            if (m.change.version !== undefined) versions[m.change.service] = m.change.version
          }
          const reply = (): void => { if (w.isConnected()) w.send({ lgw: 'done', id: m.id } satisfies Down) }
          const others = [...synced].filter((x) => x !== w && x.isConnected())
          if (others.length === 0) { reply(); break }
          const n = ++seq
          const timer = setTimeout(() => {
            const p = pending.get(n)
            if (p === undefined) return
            pending.delete(n)
            log.warn({ workers: [...p.left].map((x) => x.id), change: m.change }, 'cluster: workers did not confirm an admin change in time')
            reply()
          }, APPLY_TIMEOUT_MS)
          pending.set(n, { left: new Set(others), finish: () => { clearTimeout(timer); reply() } })
          for (const x of others) x.send({ lgw: 'apply', id: n, change: m.change } satisfies Down)
          break
        }
        case 'applied': {
          const p = pending.get(m.id)
          if (p !== undefined && p.left.delete(w) && p.left.size === 0) { pending.delete(m.id); p.finish() }
          break
        }
        case 'metrics':
          aggregator.clusterMetrics().then(
            (text) => { if (w.isConnected()) w.send({ lgw: 'metrics', id: m.id, text } satisfies Down) },
            (err: unknown) => { if (w.isConnected()) w.send({ lgw: 'metrics', id: m.id, error: err instanceof Error ? err.message : String(err) } satisfies Down) })
          break
      }
    }

    const fork = (admin: boolean): Worker => {
      const w = cluster.fork({ [ADMIN_ENV]: admin ? '1' : '0' })
      if (admin) adminWorker = w
      w.on('message', (m: unknown) => onMessage(w, m))
      // A message to a worker that is exiting fails (EPIPE); its 'exit' follows and is handled there.
      w.on('error', (err: Error) => log.debug({ err, worker: w.id }, 'cluster: message to an exiting worker lost'))
      w.on('exit', (exitCode: number | null, signal: string | null) => {
        synced.delete(w)
        settle(w)
        const wasAdmin = w === adminWorker
        if (wasAdmin) adminWorker = null
        const started = listened.delete(w)
        if (stopping) {
          if (Object.keys(cluster.workers ?? {}).length === 0) {
            log.info('stopped')
            resolve(code)
          }
          return
        }
        if (!started) {
          // It could not start (a port, a config problem): the gateway cannot run as configured.
          log.fatal({ worker: w.id, code: exitCode, signal }, `worker ${w.id} exited before listening: stopping the gateway`)
          code = exitCode === 2 ? 2 : 1
          stopAll('a worker could not start')
          return
        }
        const now = Date.now()
        restarts.push(now)
        while (restarts.length > 0 && restarts[0]! < now - RESTART_WINDOW_MS) restarts.shift()
        if (restarts.length > MAX_RESTARTS) {
          log.fatal({ restarts: restarts.length, windowMs: RESTART_WINDOW_MS }, 'workers keep dying: stopping the gateway')
          code = 1
          stopAll('too many restarts')
          return
        }
        const next = fork(wasAdmin)
        log.error({ worker: w.id, workerPid: w.process.pid, code: exitCode, signal, admin: wasAdmin, replacement: next.id }, `worker ${w.id} exited unexpectedly: restarted as worker ${next.id}`)
      })
      return w
    }

    log.info({ workers }, `starting ${workers} workers`)
    process.on('SIGTERM', () => stopAll('SIGTERM'))
    process.on('SIGINT', () => stopAll('SIGINT'))
    for (let i = 0; i < workers; i++) fork(i === 0)
  })
}
