/**
 * The fleet control plane (SPEC §10): one control state for every replica
 * that shares `fleet.url` and `fleet.name`, kept in PostgreSQL.
 *
 * - A change is committed with compare-and-set on the service's version
 *   (src/fleet/store.ts), applied here at once, and pushed to the other
 *   replicas by NOTIFY; each applies it (an atomic table swap in `Service`)
 *   and records its applied versions in its replica row, with a NOTIFY
 *   back. The admin call waits until every live replica's row shows the
 *   version, or `applyTimeoutMs`.
 * - One LISTEN connection and a small pool. The request path never touches
 *   either: it reads `Service`'s in-memory table.
 * - Joining: LISTEN first, then read the whole state (stored weights win
 *   over the config's), then the first heartbeat; until then `loaded` is
 *   false (`/readyz` names `fleet`) and requests use the config weights.
 * - Store down (the LISTEN connection fails, or heartbeats keep failing):
 *   `connected` false, admin changes GW_FLEET_UNAVAILABLE before anything is
 *   written, traffic goes on with what is applied. Reconnects back off
 *   from 100 ms to 2 s; every (re)connect re-reads the whole state, and so
 *   does a periodic re-read every 10 heartbeats (lost notifications).
 * - With `server.workers > 1` this runs in the cluster's primary; its
 *   `FleetTarget` applies a change in every worker before reporting it.
 */
import { EventEmitter } from 'node:events'
import { hostname } from 'node:os'
import { randomBytes } from 'node:crypto'
import pg, { type Pool } from 'pg'
import type { Logger } from 'pino'
import type { FleetConfig } from '../config/schema.js'
import { GatewayError } from '../errors.js'
import { parseWeights } from '../upstream/service.js'
import type { Registry } from '../upstream/registry.js'
import type { OriginGroup } from '../upstream/origin-group.js'
import { sameWeights } from './local.js'
import type { ChangeResult, ControlPlane, FleetApply, FleetHandle, FleetView, HistoryEntry, ReplicaView, TrafficChange } from './control.js'
import * as store from './store.js'

/** What the fleet control plane changes: this replica's services (in one process, or in every worker of a cluster). */
export interface FleetTarget {
  /** Deployments in config order and the config's weights, per service. */
  readonly services: ReadonlyMap<string, { deployments: readonly string[], traffic: Readonly<Record<string, number>> }>
  /** Applies weights with their version everywhere in this replica; resolves once applied. */
  apply(service: string, weights: Readonly<Record<string, number>>, version: number, by: string): Promise<void>
  /** Throws GW_CONFLICT when an operator failback cannot happen here now (the primary is unhealthy). */
  checkFailback(service: string, deployment: string): void
  /** An operator failback everywhere in this replica; resolves true when traffic moved. Never throws. */
  failback(service: string, deployment: string): Promise<boolean>
}

export interface FleetEvents {
  /** The store became reachable (and the state was re-read) or unreachable. */
  connection: [{ connected: boolean }]
  /** A service's applied version changed here. */
  version: [{ service: string, version: number }]
  /** Live replicas, counted at each heartbeat. */
  replicas: [number]
}

const MAX_BACKOFF_MS = 2000
/** Consecutive failed heartbeats that count as a lost store (a silent partition keeps the socket open). */
const FAILED_BEATS = 3

const unavailable = (cause?: unknown): GatewayError =>
  new GatewayError('GW_FLEET_UNAVAILABLE', 'the fleet store is unreachable: nothing was changed; traffic goes on with the current weights, retry once it is back', cause === undefined ? {} : { cause })

export class FleetControlPlane extends EventEmitter<FleetEvents> implements ControlPlane, FleetHandle {
  readonly replicaId: string
  readonly name: string
  readonly pool: Pool
  readonly #config: FleetConfig
  readonly #url: string
  readonly #target: FleetTarget
  readonly #log: Logger
  readonly #versions = new Map<string, number>()
  readonly #weights = new Map<string, Readonly<Record<string, number>>>()
  readonly #startedAt = new Date()
  #listener: pg.Client | null = null
  #connected = false
  #loaded = false
  #started = false
  #closing = false
  #schemaOk = false
  /** The newest failback request this replica has processed. */
  #failback = 0
  #guard: ((change: TrafficChange) => void) | null = null
  #stats: (() => unknown) | null = null
  /** Applies, in order: a notification, a re-read and a local commit never interleave. */
  #chain: Promise<void> = Promise.resolve()
  /** Admin calls waiting for replicas to report. */
  readonly #wakers = new Set<() => void>()
  #writing: Promise<void> | null = null
  #writeAgain = false
  #notifyNext = false
  #failedBeats = 0
  #beats = 0
  #timers: NodeJS.Timeout[] = []

  get fleet (): FleetHandle { return this }

  constructor (config: FleetConfig, target: FleetTarget, logger: Logger) {
    super()
    this.#config = config
    this.#url = config.url
    this.name = config.name
    this.#target = target
    this.#log = logger.child({ fleet: config.name })
    this.replicaId = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`
    for (const [name, s] of target.services) {
      this.#versions.set(name, 1)
      this.#weights.set(name, { ...s.traffic })
    }
    this.pool = new pg.Pool({ connectionString: config.url, max: 4, connectionTimeoutMillis: Math.max(2000, config.applyTimeoutMs), idleTimeoutMillis: 30000, keepAlive: true })
    // An idle pooled connection that breaks emits here; the next query reconnects.
    this.pool.on('error', (err) => this.#log.debug({ err: { code: store.errCode(err), message: err.message } }, 'fleet: an idle store connection closed'))
  }

  get connected (): boolean { return this.#connected }
  get loaded (): boolean { return this.#loaded }

  version (service: string): number { return this.#versions.get(service) ?? 0 }

  setGuard (guard: ((change: TrafficChange) => void) | null): void { this.#guard = guard }

  setHeartbeatStats (fn: (() => unknown) | null): void { this.#stats = fn }

  start (): void {
    if (this.#started) return
    this.#started = true
    for (const [service, version] of this.#versions) this.emit('version', { service, version })
    void this.#connect()
    const hb = this.#config.heartbeatMs
    this.#timers.push(setInterval(() => { void this.#heartbeat() }, hb))
    this.#timers.push(setInterval(() => { if (this.#connected) void this.#enqueue(() => this.#reread(false)).catch(() => {}) }, 10 * hb))
    for (const t of this.#timers) t.unref()
  }

  async changeTraffic (change: TrafficChange): Promise<ChangeResult> {
    const svc = this.#service(change.service)
    const weights = parseWeights(change.service, svc.deployments, change.weights)
    this.#guard?.(change)
    if (!this.#connected) throw unavailable()
    let r: Awaited<ReturnType<typeof store.commitTraffic>>
    try {
      r = await store.commitTraffic(this.pool, {
        fleet: this.name,
        service: change.service,
        initial: { ...svc.traffic },
        next: weights,
        ifMatch: change.ifMatch,
        source: change.source,
        by: change.by,
        reason: change.reason ?? null,
        replica: this.replicaId
      }, sameWeights)
    } catch (err) {
      if (err instanceof GatewayError) throw err
      this.#log.warn({ err: { code: store.errCode(err), message: err instanceof Error ? err.message : String(err) } }, 'fleet: a change could not be committed (store unreachable)')
      throw unavailable(err)
    }
    // Here at once (own notification arrives later and changes nothing), then the others.
    await this.#enqueue(() => this.#adopt(change.service, r.version, r.weights, change.by))
    const fleet = await this.#awaitReplicas(r.version, (row) => (row.versions[change.service] ?? 0) >= r.version)
    if (r.changed && fleet.pending.length > 0) this.#log.warn({ event: 'fleet_apply', service: change.service, version: r.version, pending: fleet.pending, applied: fleet.applied.length }, `fleet: ${change.service} version ${r.version} not confirmed by ${fleet.pending.length} live replica(s) within ${this.#config.applyTimeoutMs} ms`)
    return { version: r.version, weights: r.weights, fleet }
  }

  async failback (service: string, deployment: string, by: string): Promise<{ failedBack: boolean, fleet: FleetApply }> {
    const svc = this.#service(service)
    if (!svc.deployments.includes(deployment)) throw new GatewayError('GW_NOT_FOUND', `service ${service} has no deployment "${deployment}"`)
    this.#target.checkFailback(service, deployment)
    if (!this.#connected) throw unavailable()
    let id: number
    try {
      id = await store.commitFailback(this.pool, this.name, service, deployment, this.replicaId, by)
    } catch (err) {
      throw unavailable(err)
    }
    let failedBack = false
    await this.#enqueue(async () => {
      failedBack = await this.#target.failback(service, deployment)
      if (id > this.#failback) this.#failback = id
      this.#report(true)
    })
    const fleet = await this.#awaitReplicas(id, (row) => row.failback >= id)
    return { failedBack, fleet }
  }

  async history (service: string): Promise<HistoryEntry[]> {
    this.#service(service)
    if (!this.#connected) throw unavailable()
    try {
      return await store.readHistory(this.pool, this.name, service)
    } catch (err) {
      throw unavailable(err)
    }
  }

  async view (): Promise<FleetView> {
    return { name: this.name, connected: this.#connected, self: this.replicaId, replicas: await this.#replicaViews() }
  }

  async liveReplicas (): Promise<ReplicaView[]> {
    return (await this.#replicaViews()).filter((r) => r.live)
  }

  async close (): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    for (const t of this.#timers) clearInterval(t)
    for (const wake of this.#wakers) wake()
    // A heartbeat still in flight must not land after the row is removed.
    await this.#writing?.catch(() => {})
    // Leave the live set at once rather than after 3 heartbeats.
    if (this.#connected) await store.leave(this.pool, this.name, this.replicaId).catch(() => {})
    const l = this.#listener
    this.#listener = null
    this.#connected = false
    await l?.end().catch(() => {})
    await this.pool.end().catch(() => {})
  }

  // ---- internals ----

  #service (name: string): { deployments: readonly string[], traffic: Readonly<Record<string, number>> } {
    const s = this.#target.services.get(name)
    if (s === undefined) throw new GatewayError('GW_NOT_FOUND', `unknown service "${name}"`)
    return s
  }

  async #replicaViews (): Promise<ReplicaView[]> {
    if (!this.#connected) throw unavailable()
    let rows: store.ReplicaRow[]
    try {
      rows = await store.replicas(this.pool, this.name, 3 * this.#config.heartbeatMs)
    } catch (err) {
      throw unavailable(err)
    }
    return rows.map((r) => {
      const v: ReplicaView = { id: r.id, host: r.host, pid: r.pid, startedAt: r.startedAt, lastSeenAt: r.lastSeenAt, live: r.live, versions: r.versions }
      if (r.stats !== null && r.stats !== undefined) v.stats = r.stats
      return v
    })
  }

  #enqueue (fn: () => Promise<void>): Promise<void> {
    const run = this.#chain.then(fn)
    this.#chain = run.catch(() => {})
    return run
  }

  /** Applies a stored weighting when it is newer than what runs here (or the same version with other weights: a join). */
  async #adopt (service: string, version: number, weights: Readonly<Record<string, number>>, by: string): Promise<void> {
    const svc = this.#target.services.get(service)
    const local = this.#versions.get(service)
    if (svc === undefined || local === undefined) return
    if (version < local) return
    if (version === local && sameWeights(this.#weights.get(service) ?? {}, weights)) return
    let parsed: Record<string, number>
    try {
      parsed = parseWeights(service, svc.deployments, weights)
    } catch (err) {
      // Another replica's config has other deployments: keep what runs here.
      this.#log.error({ service, version, weights, err: { message: err instanceof Error ? err.message : String(err) } }, `fleet: stored weights of ${service} (version ${version}) do not fit this replica's deployments; not applied`)
      return
    }
    await this.#target.apply(service, parsed, version, by)
    this.#versions.set(service, version)
    this.#weights.set(service, parsed)
    this.emit('version', { service, version })
    this.#report(true)
  }

  /** Reads the whole state and applies what is newer; the first read also skips failbacks made before this replica joined. */
  async #reread (first: boolean): Promise<void> {
    const rows = await store.readWeights(this.pool, this.name)
    for (const row of rows) await this.#adopt(row.service, row.version, row.weights, `fleet ${first ? 'join' : 'resync'}`)
    if (first) {
      this.#failback = await store.lastFailback(this.pool, this.name)
    } else {
      for (const fb of await store.failbacksAfter(this.pool, this.name, this.#failback)) await this.#applyFailback(fb.id, fb.service, fb.deployment)
    }
  }

  async #applyFailback (id: number, service: string, deployment: string): Promise<void> {
    if (id <= this.#failback) return
    this.#failback = id
    if (this.#target.services.get(service)?.deployments.includes(deployment) === true) {
      const moved = await this.#target.failback(service, deployment)
      this.#log.info({ event: 'fleet_failback', service, deployment, id, moved }, `fleet: operator failback of ${service}/${deployment} ${moved ? 'applied' : 'found nothing to move'}`)
    }
    this.#report(true)
  }

  #onNotice (payload: string | undefined): void {
    let n: store.Notice
    try {
      n = JSON.parse(payload ?? '') as store.Notice
    } catch {
      return
    }
    if (n.fleet !== this.name) return
    if (n.kind === 'applied') {
      for (const wake of this.#wakers) wake()
    } else if (n.kind === 'traffic') {
      void this.#enqueue(() => this.#adopt(n.service, n.version, n.weights, `fleet (replica ${n.replica})`)).catch((err: unknown) => this.#log.error({ err }, 'fleet: applying a change failed'))
    } else if (n.kind === 'failback') {
      void this.#enqueue(() => this.#applyFailback(n.id, n.service, n.deployment)).catch((err: unknown) => this.#log.error({ err }, 'fleet: applying a failback failed'))
    }
  }

  /** Resolves once every live replica passes `done`, or at applyTimeoutMs. */
  async #awaitReplicas (version: number, done: (row: store.ReplicaRow) => boolean): Promise<FleetApply> {
    const deadline = Date.now() + this.#config.applyTimeoutMs
    let applied: string[] = []
    let pending: string[] = []
    for (;;) {
      try {
        const live = (await store.replicas(this.pool, this.name, 3 * this.#config.heartbeatMs)).filter((r) => r.live)
        applied = live.filter(done).map((r) => r.id)
        pending = live.filter((r) => !done(r)).map((r) => r.id)
      } catch {
        // The store went away after the commit: report what was last known.
      }
      const left = deadline - Date.now()
      if (pending.length === 0 || left <= 0 || this.#closing) break
      await new Promise<void>((resolve) => {
        const finish = (): void => { clearTimeout(timer); this.#wakers.delete(finish); resolve() }
        const timer = setTimeout(finish, Math.min(left, Math.max(20, this.#config.heartbeatMs / 2)))
        this.#wakers.add(finish)
      })
    }
    return { version, applied, pending }
  }

  /** Writes this replica's row (serialised: a later write never lands before an earlier one). */
  #report (notify: boolean): void {
    if (notify) this.#notifyNext = true
    if (this.#writing !== null) {
      this.#writeAgain = true
      return
    }
    this.#writing = (async () => {
      do {
        this.#writeAgain = false
        const n = this.#notifyNext
        this.#notifyNext = false
        if (!this.#loaded || this.#closing) break
        try {
          await store.beat(this.pool, this.#row(), n)
          this.#failedBeats = 0
        } catch (err) {
          this.#beatFailed(err)
          break
        }
      } while (this.#writeAgain)
    })().finally(() => { this.#writing = null })
  }

  #row (): store.Heartbeat {
    let stats: unknown = null
    try {
      stats = this.#stats?.() ?? null
    } catch (err) {
      this.#log.debug({ err }, 'fleet: heartbeat stats failed')
    }
    return { fleet: this.name, id: this.replicaId, host: hostname(), pid: process.pid, startedAt: this.#startedAt, versions: Object.fromEntries(this.#versions), failback: this.#failback, stats }
  }

  async #heartbeat (): Promise<void> {
    if (!this.#connected || this.#closing) return
    this.#report(false)
    try {
      // Count live replicas (the gauge), and forget long-dead ones now and then.
      if (++this.#beats % 60 === 0) await store.forget(this.pool, this.name, Math.max(3600000, 100 * this.#config.heartbeatMs))
      const rows = await store.replicas(this.pool, this.name, 3 * this.#config.heartbeatMs)
      this.emit('replicas', rows.filter((r) => r.live).length)
    } catch (err) {
      this.#beatFailed(err)
    }
  }

  #beatFailed (err: unknown): void {
    this.#log.debug({ err: { code: store.errCode(err), message: err instanceof Error ? err.message : String(err) } }, 'fleet: heartbeat failed')
    if (++this.#failedBeats >= FAILED_BEATS && this.#listener !== null) {
      // The LISTEN socket may look open through a partition: start over.
      this.#lost(this.#listener, err)
    }
  }

  async #connect (): Promise<void> {
    let delay = 100
    let attempts = 0
    while (!this.#closing) {
      try {
        await this.#open()
        return
      } catch (err) {
        attempts++
        const msg = err instanceof Error ? err.message : String(err)
        // The first failure is worth a line; the retries that follow are not.
        if (attempts === 1) this.#log.warn({ event: 'fleet', state: 'unreachable', url: store.redactUrl(this.#url), err: { code: store.errCode(err), message: msg } }, `fleet store unreachable (${msg}); retrying every ${MAX_BACKOFF_MS} ms at most, traffic goes on with ${this.#loaded ? 'the last known' : 'the config\'s'} weights`)
        await new Promise((resolve) => setTimeout(resolve, delay))
        delay = Math.min(delay * 2, MAX_BACKOFF_MS)
      }
    }
  }

  async #open (): Promise<void> {
    const client = new pg.Client({ connectionString: this.#url, connectionTimeoutMillis: 5000, keepAlive: true })
    let opened = false
    client.on('error', (err) => { if (opened) this.#lost(client, err) })
    client.on('end', () => { if (opened) this.#lost(client, null) })
    client.on('notification', (m) => { if (m.channel === store.CHANNEL) this.#onNotice(m.payload) })
    try {
      await client.connect()
      if (!this.#schemaOk) {
        if (!(await store.hasSchema(this.pool))) {
          this.#log.info({ event: 'fleet_schema' }, 'fleet: creating the store\'s tables')
          await store.migrate(this.pool)
        }
        this.#schemaOk = true
      }
      // LISTEN before reading: a change committed in between is not missed.
      await client.query(`LISTEN ${store.CHANNEL}`)
      await this.#enqueue(() => this.#reread(!this.#loaded))
      if (this.#closing) throw new Error('closing')
    } catch (err) {
      client.removeAllListeners('notification')
      await client.end().catch(() => {})
      throw err
    }
    opened = true
    this.#listener = client
    this.#loaded = true
    this.#connected = true
    this.#failedBeats = 0
    this.#report(true)
    this.emit('connection', { connected: true })
    this.#log.info({ event: 'fleet', state: 'connected', url: store.redactUrl(this.#url), replica: this.replicaId, versions: Object.fromEntries(this.#versions) }, `fleet store connected (${this.name}); state loaded`)
  }

  #lost (client: pg.Client, err: unknown): void {
    if (client !== this.#listener) return
    this.#listener = null
    client.removeAllListeners('notification')
    void client.end().catch(() => {})
    const was = this.#connected
    this.#connected = false
    if (this.#closing) return
    if (was) {
      this.emit('connection', { connected: false })
      const msg = err instanceof Error ? err.message : 'connection ended'
      this.#log.warn({ event: 'fleet', state: 'disconnected', url: store.redactUrl(this.#url), err: { code: store.errCode(err), message: msg } }, `fleet store disconnected (${msg}): traffic goes on with the applied weights, admin changes answer 503 until it is back`)
    }
    void this.#connect()
  }
}

/** The target of a gateway in one process: its registry's services. */
export function registryTarget (registry: Registry, logger: Logger): FleetTarget {
  const services = new Map<string, { deployments: readonly string[], traffic: Readonly<Record<string, number>> }>()
  for (const [name, s] of registry.services) services.set(name, { deployments: [...s.groups.keys()], traffic: s.config.traffic })
  const group = (service: string, deployment: string): OriginGroup | undefined => registry.get(service)?.groups.get(deployment)
  return {
    services,
    async apply (service, weights, version, by) {
      registry.get(service)?.setTraffic(weights, by, version)
    },
    checkFailback (service, deployment) {
      const g = group(service, deployment)
      if (g !== undefined && g.active !== g.primary && !g.primary.healthy) throw new GatewayError('GW_CONFLICT', `the primary of ${service}/${deployment} is not healthy; failback refused`)
    },
    async failback (service, deployment) {
      const result = group(service, deployment)?.requestFailback()
      // This replica's primary is not healthy as its own checks see it: the
      // request waits here and traffic moves once the primary is healthy.
      if (result === 'pending') logger.info({ event: 'failback_pending', service, deployment }, `fleet: failback of ${service}/${deployment} pending here until the primary is healthy`)
      return result === 'moved'
    }
  }
}

/** `lattice-gateway migrate`: creates the store's tables (when missing) and resolves with the exit code. */
export async function migrateStore (config: FleetConfig, out: (line: string) => void, err: (line: string) => void): Promise<number> {
  const pool = new pg.Pool({ connectionString: config.url, max: 1, connectionTimeoutMillis: 10000 })
  pool.on('error', () => {})
  try {
    const had = await store.hasSchema(pool)
    await store.migrate(pool)
    out(`fleet store ${store.redactUrl(config.url)}: ${had ? 'tables already present' : 'tables created'} (${store.TABLES.join(', ')})`)
    return 0
  } catch (e) {
    err(`fleet store ${store.redactUrl(config.url)}: ${e instanceof Error ? e.message : String(e)}`)
    return 2
  } finally {
    await pool.end().catch(() => {})
  }
}
