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
 * - A failback is applied in a worker at once when its own checks see the
 *   primary healthy, else as soon as they do (OriginGroup.requestFailback);
 *   the answer lists the workers that applied it and those still pending.
 * - The primary keeps the latest weights per service and the failbacks some
 *   worker has still pending; a worker that starts later (a restart after a
 *   crash) takes both before it listens.
 * - `/metrics` on the admin worker asks the primary, whose prom-client
 *   AggregatorRegistry collects every worker's registry.
 * - SIGTERM/SIGINT to the primary: every worker drains (today's drain), the
 *   primary exits 0 once all are gone. A worker that dies otherwise is
 *   restarted (and logged); one that cannot start stops the whole gateway.
 * - With `fleet` (src/fleet/cluster-fleet.ts) the primary holds the one
 *   store connection of this replica: workers hand it their control-plane
 *   calls, and it applies every fleet change in all workers.
 */
import cluster, { type Worker } from 'node:cluster'
import client from 'prom-client'
import type { Logger } from 'pino'
import type { GatewayConfig } from './config/schema.js'
import type { BuildOptions, Gateway } from './app.js'
import { createLogger } from './log.js'
import type { AdminChange, WorkersReport } from './upstream/registry.js'
import type { RolloutState } from './rollout/rollout.js'
import type { Counts } from './rollout/window.js'
import { WorkerFleetPlane, clusterTarget, serveControl, type ControlReply, type ControlRequest, type FleetStatus } from './fleet/cluster-fleet.js'
import type { FleetControlPlane } from './fleet/fleet.js'

type Weights = Record<string, Record<string, number>>
/** An operator failback of one deployment. */
interface Failback { service: string, deployment: string }
type FailbackResult = 'moved' | 'already' | 'pending'

/** Worker -> primary. */
type Up =
  | { lgw: 'sync' }
  | { lgw: 'listening' }
  | { lgw: 'change', id: number, change: AdminChange }
  | { lgw: 'applied', id: number, result?: FailbackResult }
  /** A failback request is fulfilled in this worker (at once, or once its primary turned healthy). */
  | { lgw: 'failback-done', service: string, deployment: string }
  | { lgw: 'metrics', id: number }
  // Rollouts (SPEC §11): the admin worker drives, the others follow its state and lend their counts.
  | { lgw: 'rollout', state: RolloutState }
  | { lgw: 'counts', id: number, service: string, rollout: string }
  | { lgw: 'counted', id: number, key: string, counts: Record<string, Counts> | null }
  | { lgw: 'control', id: number, req: ControlRequest }

/** Primary -> worker. */
type Down =
  | { lgw: 'state', traffic: Weights, versions: Record<string, number>, failbacks: Failback[] }
  | { lgw: 'apply', id: number, change: AdminChange }
  | { lgw: 'done', id: number, workers: WorkersReport }
  | { lgw: 'metrics', id: number, text?: string, error?: string }
  | { lgw: 'rollout', state: RolloutState }
  | { lgw: 'counts', id: number, counts: Record<string, Record<string, Counts>> }
  | { lgw: 'count', id: number, service: string, rollout: string }
  | { lgw: 'stop' }
  | { lgw: 'control', id: number, reply: ControlReply }
  | { lgw: 'fleet', status: FleetStatus }

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
  const logger = createLogger(config.server.logLevel, { shared: true }).child({ worker: id, pid: process.pid })
  // prom-client answers the primary's metrics requests from this registry list.
  void new client.AggregatorRegistry()
  let seq = 0
  const waiting = new Map<number, (m: Down & { lgw: 'done' | 'metrics' | 'counts' | 'control' }) => void>()
  let plane: WorkerFleetPlane | null = null
  let fleetStatus: FleetStatus | null = null
  let gw: Gateway | null = null
  let gotState: ((m: Down & { lgw: 'state' }) => void) | null = null
  /** Failback requests waiting here for a primary to turn healthy ("service\0deployment"). */
  const pendingFailbacks = new Map<string, Failback>()
  const failback = (g: Gateway, f: Failback): FailbackResult | undefined => {
    const result = requestFailback(g, f, logger)
    if (result === 'pending') pendingFailbacks.set(`${f.service}\0${f.deployment}`, f)
    else send({ lgw: 'failback-done', service: f.service, deployment: f.deployment })
    return result
  }
  let stopHandler: ((reason: string) => void) | null = null

  const ask = <T>(m: (id: number) => Up, then: (reply: Down & { lgw: 'done' | 'metrics' | 'counts' | 'control' }) => T): Promise<T> => {
    const n = ++seq
    return new Promise<T>((resolve) => {
      waiting.set(n, (reply) => { waiting.delete(n); resolve(then(reply)) })
      send(m(n))
    })
  }

  process.on('message', (m: unknown) => {
    if (!isMessage<Down>(m)) return
    switch (m.lgw) {
      case 'state': gotState?.(m); break
      case 'apply': {
        let result: FailbackResult | undefined
        if (gw !== null) {
          if (m.change.kind === 'failback') result = failback(gw, m.change)
          else applyTraffic(gw, m.change, logger)
        }
        send(result === undefined ? { lgw: 'applied', id: m.id } : { lgw: 'applied', id: m.id, result })
        break
      }
      case 'done':
      case 'control':
      case 'metrics':
      case 'counts': waiting.get(m.id)?.(m); break
      case 'fleet': fleetStatus = m.status; plane?.status(m.status); break
      case 'rollout': if (gw !== null) void gw.rollouts.sync([m.state]); break
      case 'count': {
        // This worker's window counts of a rollout, for the admin worker's analysis.
        const tap = gw?.registry.get(m.service)?.rolloutTap ?? null
        const counts = tap !== null && gw?.rollouts.state(m.service)?.id === m.rollout ? tap.window.counts() : null
        send({ lgw: 'counted', id: m.id, key: `worker ${id}`, counts })
        break
      }
      // Not listening yet: nothing to drain.
      case 'stop': if (stopHandler === null) process.exit(0); else stopHandler('primary: stop'); break
    }
  })

  return {
    admin: process.env[ADMIN_ENV] === '1',
    build: {
      logger,
      // The admin worker made the change itself first (a failback it could not make answered 409 there).
      adminChange: (change) => ask((n) => ({ lgw: 'change', id: n, change }), (reply) => {
        const workers = reply.lgw === 'done' ? reply.workers : { applied: [], pending: [] }
        return { applied: [id, ...workers.applied].sort((a, b) => a - b), pending: workers.pending }
      }),
      metricsText: () => ask((n) => ({ lgw: 'metrics', id: n }), (reply) => {
        if (reply.lgw === 'metrics' && reply.text !== undefined) return reply.text
        throw new Error(`cluster metrics unavailable: ${reply.lgw === 'metrics' ? reply.error ?? 'no answer' : 'no answer'}`)
      }),
      // Sent before the weight change it leads to, on the same channel: every worker has the state first.
      rolloutWorkers: {
        driving: process.env[ADMIN_ENV] === '1',
        broadcast: async (state) => { send({ lgw: 'rollout', state }) },
        counts: (service, rollout) => ask((n) => ({ lgw: 'counts', id: n, service, rollout }), (reply) => reply.lgw === 'counts' ? reply.counts : {})
      },
      // Fleet: the primary holds the store; this worker's control plane asks it.
      ...(config.fleet === undefined
        ? {}
        : {
            controlPlane: (registry) => {
              plane = new WorkerFleetPlane(registry, config.fleet!.name, (req) => ask((n) => ({ lgw: 'control', id: n, req }), (reply): ControlReply =>
                reply.lgw === 'control' ? reply.reply : { ok: false, code: 'GW_INTERNAL', statusCode: 500, message: 'no answer from the cluster primary' }))
              if (fleetStatus !== null) plane.status(fleetStatus)
              return plane
            }
          })
    },
    async prepare (g) {
      client.AggregatorRegistry.setRegistries([g.metrics.registry])
      const state = new Promise<Down & { lgw: 'state' }>((resolve) => { gotState = resolve })
      gw = g
      // A pending failback is fulfilled by the failover event that moves traffic to a healthy primary.
      g.registry.on('failover', (e) => {
        const key = `${e.service}\0${e.deployment}`
        if (!pendingFailbacks.has(key) || g.registry.get(e.service)?.groups.get(e.deployment)?.failbackPending === true) return
        pendingFailbacks.delete(key)
        send({ lgw: 'failback-done', service: e.service, deployment: e.deployment })
      })
      send({ lgw: 'sync' })
      const { traffic, versions, failbacks } = await state
      for (const [service, weights] of Object.entries(traffic)) {
        const version = versions[service]
        applyTraffic(g, version === undefined ? { kind: 'traffic', service, weights, by: 'cluster sync' } : { kind: 'traffic', service, weights, by: 'cluster sync', version }, logger)
      }
      for (const f of failbacks) failback(g, f)
    },
    listening () { send({ lgw: 'listening' }) },
    onStop (stop) { stopHandler = stop }
  }
}

/** Applies a weight change made in another worker; what fails here is logged, never thrown. */
function applyTraffic (gw: Gateway, change: AdminChange & { kind: 'traffic' }, logger: Logger): void {
  try {
    // With a version (src/fleet/): the worker's control plane takes it too.
    if (change.version !== undefined && gw.control.adopt !== undefined) gw.control.adopt(change.service, change.weights, change.version, change.by)
    else gw.registry.get(change.service)?.setTraffic(change.weights, change.by)
  } catch (err) {
    logger.warn({ err, change }, `cluster: admin change not applied in this worker: ${err instanceof Error ? err.message : String(err)}`)
  }
}

/** A failback made in another worker: here now, or once this worker's checks see the primary healthy. */
function requestFailback (gw: Gateway, f: Failback, logger: Logger): FailbackResult | undefined {
  const group = gw.registry.get(f.service)?.groups.get(f.deployment)
  if (group === undefined) return undefined
  const result = group.requestFailback()
  if (result === 'pending') logger.info({ event: 'failback_pending', service: f.service, deployment: f.deployment }, `${f.service}/${f.deployment}: failback requested; the primary is unhealthy as this worker sees it, traffic moves there once it is healthy`)
  return result
}

/** Runs the primary: forks `workers` workers and supervises them. Resolves with the exit code. */
export function runPrimary (config: GatewayConfig, workers: number): Promise<number> {
  const log = createLogger(config.server.logLevel, { shared: true }).child({ role: 'primary', pid: process.pid })
  const aggregator = new client.AggregatorRegistry()
  const traffic: Weights = {}
  const versions: Record<string, number> = {}
  /** Failbacks some worker has still pending, with those workers ("service\0deployment"). */
  const failbacks = new Map<string, Failback & { waiting: Set<Worker> }>()
  /** Workers that built their gateway and take changes. */
  const synced = new Set<Worker>()
  const listened = new Set<Worker>()
  const pending = new Map<number, { left: Set<Worker>, finish: () => void, applied: number[], pending: number[] }>()
  /** Rollout count requests: the workers still to answer and what they sent. */
  const counting = new Map<number, { left: Set<Worker>, counts: Record<string, Record<string, Counts>>, finish: () => void }>()
  const restarts: number[] = []
  let adminWorker: Worker | null = null
  let seq = 0
  let stopping = false
  let code = 0
  // Fleet: this replica's one store connection, in the primary (src/fleet/cluster-fleet.ts).
  let fleet: FleetControlPlane | null = null
  let liveReplicas = 0
  const fleetStatus = (): FleetStatus | null => fleet === null ? null : { replicaId: fleet.replicaId, connected: fleet.connected, loaded: fleet.loaded, replicas: liveReplicas }
  const sendStatus = (to: Iterable<Worker>): void => {
    const status = fleetStatus()
    if (status !== null) for (const w of to) if (w.isConnected()) w.send({ lgw: 'fleet', status } satisfies Down)
  }
  /** Applies a fleet change in every worker; resolves once all applied it (or left), or after APPLY_TIMEOUT_MS. */
  const applyEverywhere = (change: AdminChange): Promise<void> => new Promise<void>((resolve) => {
    if (change.kind === 'traffic') {
      traffic[change.service] = change.weights
      if (change.version !== undefined) versions[change.service] = change.version
    }
    const all = [...synced].filter((x) => x.isConnected())
    if (all.length === 0) { resolve(); return }
    const n = ++seq
    const timer = setTimeout(() => {
      const p = pending.get(n)
      if (p === undefined) return
      pending.delete(n)
      log.warn({ workers: [...p.left].map((x) => x.id), change }, 'cluster: workers did not confirm a fleet change in time')
      resolve()
    }, APPLY_TIMEOUT_MS)
    pending.set(n, { left: new Set(all), applied: [], pending: [], finish: () => { clearTimeout(timer); resolve() } })
    for (const x of all) x.send({ lgw: 'apply', id: n, change } satisfies Down)
  })
  if (config.fleet !== undefined) {
    const fleetConfig = config.fleet
    void import('./fleet/fleet.js').then((m) => {
      if (stopping) return
      const f = new m.FleetControlPlane(fleetConfig, clusterTarget(config, applyEverywhere), log)
      fleet = f
      f.on('connection', () => sendStatus(synced))
      f.on('replicas', (n) => { liveReplicas = n; sendStatus(synced) })
      f.start()
    })
  }

  const run = new Promise<number>((resolve) => {
    /** A worker that left confirms nothing more: stop waiting for it. */
    const settle = (w: Worker): void => {
      for (const [n, p] of pending) {
        if (p.left.delete(w) && p.left.size === 0) { pending.delete(n); p.finish() }
      }
      for (const [key, f] of failbacks) if (f.waiting.delete(w) && f.waiting.size === 0) failbacks.delete(key)
      for (const [n, p] of counting) {
        if (p.left.delete(w) && p.left.size === 0) { counting.delete(n); p.finish() }
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
          for (const f of failbacks.values()) f.waiting.add(w)
          sendStatus([w])
          w.send({ lgw: 'state', traffic, versions, failbacks: [...failbacks.values()].map(({ service, deployment }) => ({ service, deployment })) } satisfies Down)
          break
        case 'failback-done': {
          const key = `${m.service}\0${m.deployment}`
          const f = failbacks.get(key)
          if (f !== undefined && f.waiting.delete(w) && f.waiting.size === 0) failbacks.delete(key)
          break
        }
        case 'listening':
          listened.add(w)
          log.info({ worker: w.id, workerPid: w.process.pid, admin: w === adminWorker }, `worker ${w.id} listening`)
          break
        case 'change': {
          const change = m.change
          if (change.kind === 'traffic') {
            traffic[change.service] = change.weights
            if (change.version !== undefined) versions[change.service] = change.version
          }
          const others = [...synced].filter((x) => x !== w && x.isConnected())
          if (change.kind === 'failback') {
            // Every other worker holds the request until it is fulfilled there (or the worker leaves).
            const key = `${change.service}\0${change.deployment}`
            const f = failbacks.get(key) ?? { service: change.service, deployment: change.deployment, waiting: new Set<Worker>() }
            for (const x of others) f.waiting.add(x)
            if (f.waiting.size > 0) failbacks.set(key, f)
          }
          const report: WorkersReport = { applied: [], pending: [] }
          const reply = (): void => {
            report.applied.sort((a, b) => a - b)
            report.pending.sort((a, b) => a - b)
            if (w.isConnected()) w.send({ lgw: 'done', id: m.id, workers: report } satisfies Down)
          }
          if (others.length === 0) { reply(); break }
          const n = ++seq
          const timer = setTimeout(() => {
            const p = pending.get(n)
            if (p === undefined) return
            pending.delete(n)
            // Not confirmed: reported as pending, never as applied.
            for (const x of p.left) report.pending.push(x.id)
            log.warn({ workers: [...p.left].map((x) => x.id), change }, 'cluster: workers did not confirm an admin change in time')
            reply()
          }, APPLY_TIMEOUT_MS)
          pending.set(n, { left: new Set(others), finish: () => { clearTimeout(timer); reply() }, applied: report.applied, pending: report.pending })
          for (const x of others) x.send({ lgw: 'apply', id: n, change: m.change } satisfies Down)
          break
        }
        case 'applied': {
          const p = pending.get(m.id)
          if (p === undefined || !p.left.has(w)) break
          if (m.result === 'pending') p.pending.push(w.id)
          else p.applied.push(w.id)
          p.left.delete(w)
          if (p.left.size === 0) { pending.delete(m.id); p.finish() }
          break
        }
        case 'rollout':
          for (const x of synced) if (x !== w && x.isConnected()) x.send({ lgw: 'rollout', state: m.state } satisfies Down)
          break
        case 'counts': {
          // The admin worker's analysis: every other worker's window counts.
          const reply = (counts: Record<string, Record<string, Counts>>): void => { if (w.isConnected()) w.send({ lgw: 'counts', id: m.id, counts } satisfies Down) }
          const others = [...synced].filter((x) => x !== w && x.isConnected())
          if (others.length === 0) { reply({}); break }
          const n = ++seq
          const p = { left: new Set(others), counts: {} as Record<string, Record<string, Counts>>, finish: () => { clearTimeout(timer); reply(p.counts) } }
          const timer = setTimeout(() => { if (counting.delete(n)) reply(p.counts) }, APPLY_TIMEOUT_MS)
          counting.set(n, p)
          for (const x of others) x.send({ lgw: 'count', id: n, service: m.service, rollout: m.rollout } satisfies Down)
          break
        }
        case 'counted': {
          const p = counting.get(m.id)
          if (p === undefined) break
          if (m.counts !== null) p.counts[m.key] = m.counts
          if (p.left.delete(w) && p.left.size === 0) { counting.delete(m.id); p.finish() }
          break
        }
        case 'control': {
          const answer = (reply: ControlReply): void => { if (w.isConnected()) w.send({ lgw: 'control', id: m.id, reply } satisfies Down) }
          if (fleet === null) answer({ ok: false, code: 'GW_FLEET_UNAVAILABLE', statusCode: 503, message: 'the fleet store is not connected yet' })
          else void serveControl(fleet, m.req).then(answer)
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
  // The replica leaves the fleet's live set as the last workers go.
  return run.then(async (exitCode) => {
    await fleet?.close()
    return exitCode
  })
}
