/**
 * Rollouts across a fleet (SPEC §10, §11): the rollout state lives in the
 * fleet's PostgreSQL, exactly one replica drives, and the analysis sums
 * every live replica's window counts.
 *
 * - State: `lattice_gateway_rollouts`, one row per fleet and service (the
 *   current or last rollout, as JSON), written with compare-and-set on its
 *   revision, so an admin call on any replica and the driver's timers never
 *   overwrite each other (the loser gets GW_CONFLICT and re-reads).
 * - The driver holds a session-level advisory lock on a connection of its
 *   own. A driver that dies (SIGKILL, a lost connection) loses the lock
 *   with its session; another replica takes it at its next heartbeat and
 *   continues every running rollout from its stored step start.
 * - Counts: each replica publishes its windows with its heartbeat
 *   (`stats.rollouts[service] = {id, counts}`); the driver reads the live
 *   replicas' rows and adds its own current counts.
 * - Every replica re-reads the table at each heartbeat: a rollout started
 *   on another replica opens this one's window (and its guard against
 *   operator weight changes) within a heartbeat.
 *
 * Nothing here is on the request path.
 */
import pg, { type Pool } from 'pg'
import type { Logger } from 'pino'
import { GatewayError } from '../errors.js'
import type { FleetHandle } from '../fleet/control.js'
import { runDdl } from '../fleet/store.js'
import type { Registry } from '../upstream/registry.js'
import type { Counts } from './window.js'
import { ownCounts, type RolloutBackend, type RolloutManager, type RolloutState } from './rollout.js'

export const ROLLOUT_TABLE = 'lattice_gateway_rollouts'
/** pg_advisory_xact_lock key for this table's DDL ("LGWROL" in ASCII). */
const DDL_LOCK = 0x4c4757524f4c
const DDL = `CREATE TABLE IF NOT EXISTS ${ROLLOUT_TABLE} (
  fleet      text        NOT NULL,
  service    text        NOT NULL,
  rev        bigint      NOT NULL,
  state      jsonb       NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (fleet, service)
)`

/** Creates the rollout table when missing; safe when several replicas run it at once. */
export async function migrateRollouts (pool: Pool): Promise<void> {
  const exists = await pool.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [ROLLOUT_TABLE])
  if (exists.rows[0]?.t !== null && exists.rows[0]?.t !== undefined) return
  await runDdl(pool, DDL_LOCK, DDL)
}

/** `lattice-gateway migrate`: creates the rollout table when missing; resolves with the exit code. */
export async function migrateRolloutStore (url: string, out: (line: string) => void, err: (line: string) => void): Promise<number> {
  const pool = new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 10000 })
  pool.on('error', () => {})
  try {
    await migrateRollouts(pool)
    out(`rollout store: table ${ROLLOUT_TABLE} present`)
    return 0
  } catch (e) {
    err(`rollout store: ${e instanceof Error ? e.message : String(e)}`)
    return 2
  } finally {
    await pool.end().catch(() => {})
  }
}

interface Published { id: string, counts: Record<string, Counts> }

export interface FleetRolloutOptions {
  fleet: FleetHandle
  /** The fleet's connection pool. */
  pool: Pool
  registry: Registry
  self: string
  /** The store's URL: the driver's lock lives on a connection of its own. */
  url: string
  heartbeatMs: number
  logger: Logger
}

export class FleetRolloutBackend implements RolloutBackend {
  readonly self: string
  readonly #fleet: FleetHandle
  readonly #pool: Pool
  readonly #registry: Registry
  readonly #url: string
  readonly #heartbeatMs: number
  readonly #log: Logger
  #lock: pg.Client | null = null
  #driving = false
  #schema = false
  #timer: NodeJS.Timeout | null = null
  #busy = false
  #closed = false
  #manager: RolloutManager | null = null

  constructor (opts: FleetRolloutOptions) {
    this.#fleet = opts.fleet
    this.#pool = opts.pool
    this.#registry = opts.registry
    this.self = opts.self
    this.#url = opts.url
    this.#heartbeatMs = opts.heartbeatMs
    this.#log = opts.logger.child({ component: 'rollout-driver' })
  }

  get driving (): boolean { return this.#driving }

  /** Publishes this replica's windows with every heartbeat and starts the lease and sync loop. */
  start (manager: RolloutManager): void {
    this.#manager = manager
    this.#fleet.setHeartbeatStats(() => {
      const rollouts: Record<string, Published> = {}
      for (const [name, service] of this.#registry.services) {
        const tap = service.rolloutTap
        const s = manager.state(name)
        if (tap !== null && s !== undefined) rollouts[name] = { id: s.id, counts: tap.window.counts() }
      }
      // Nothing to publish without an active rollout (the replica entry then has no stats).
      return Object.keys(rollouts).length === 0 ? null : { rollouts }
    })
    this.#timer = setInterval(() => { void this.#beat() }, this.#heartbeatMs)
    this.#timer.unref()
    void this.#beat()
  }

  async close (): Promise<void> {
    this.#closed = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#fleet.setHeartbeatStats(null)
    const c = this.#lock
    this.#lock = null
    this.#driving = false
    // Ending the session releases the lock: another replica drives at its next heartbeat.
    if (c !== null) await c.end().catch(() => {})
  }

  async counts (service: string, rollout: string): Promise<Record<string, Record<string, Counts>>> {
    const out: Record<string, Record<string, Counts>> = {}
    let live
    try {
      live = await this.#fleet.liveReplicas()
    } catch (err) {
      throw new GatewayError('GW_FLEET_UNAVAILABLE', 'the fleet store is unreachable: the rollout cannot read its replicas\' counts', { cause: err })
    }
    for (const r of live) {
      if (r.id === this.self) continue
      const p = (r.stats as { rollouts?: Record<string, Published> } | undefined)?.rollouts?.[service]
      if (p !== undefined && p.id === rollout) out[r.id] = p.counts
    }
    // Our own counts now, not as of our last heartbeat.
    const own = ownCounts(this.#registry, service, this.self)[this.self]
    if (own !== undefined) out[this.self] = own
    return out
  }

  async save (state: RolloutState, expectedRev: number): Promise<void> {
    const pool = this.#pool
    let n: number
    try {
      await this.#ensureSchema()
      const json = JSON.stringify(state)
      const r = expectedRev === 0
        ? await pool.query(`INSERT INTO ${ROLLOUT_TABLE} (fleet, service, rev, state) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (fleet, service) DO NOTHING`, [this.#fleet.name, state.service, state.rev, json])
        : await pool.query(`UPDATE ${ROLLOUT_TABLE} SET rev = $3, state = $4::jsonb, updated_at = now() WHERE fleet = $1 AND service = $2 AND rev = $5`, [this.#fleet.name, state.service, state.rev, json, expectedRev])
      n = r.rowCount ?? 0
    } catch (err) {
      throw new GatewayError('GW_FLEET_UNAVAILABLE', 'the fleet store is unreachable: the rollout was not changed', { cause: err })
    }
    if (n === 0) throw new GatewayError('GW_CONFLICT', `the rollout of ${state.service} changed on another replica meanwhile; read it again (GET /admin/services/${state.service}/rollout) and retry`)
  }

  async load (service: string): Promise<RolloutState | null> {
    try {
      await this.#ensureSchema()
      const r = await this.#pool.query<{ state: RolloutState }>(`SELECT state FROM ${ROLLOUT_TABLE} WHERE fleet = $1 AND service = $2`, [this.#fleet.name, service])
      return r.rows[0]?.state ?? null
    } catch (err) {
      throw new GatewayError('GW_FLEET_UNAVAILABLE', 'the fleet store is unreachable: the rollout waits', { cause: err })
    }
  }

  async #ensureSchema (): Promise<void> {
    if (this.#schema) return
    await migrateRollouts(this.#pool)
    this.#schema = true
  }

  /** At every heartbeat: hold or take the lease, then take in the stored rollouts. */
  async #beat (): Promise<void> {
    if (this.#busy || this.#closed || this.#manager === null) return
    this.#busy = true
    try {
      await this.#ensureSchema()
      if (this.#lock === null) await this.#tryLead()
      const r = await this.#pool.query<{ state: RolloutState }>(`SELECT state FROM ${ROLLOUT_TABLE} WHERE fleet = $1`, [this.#fleet.name])
      if (!this.#closed) await this.#manager.sync(r.rows.map((row) => row.state))
    } catch (err) {
      this.#log.debug({ err: { message: err instanceof Error ? err.message : String(err) } }, 'rollout: store unreachable at heartbeat')
    } finally {
      this.#busy = false
    }
  }

  async #tryLead (): Promise<void> {
    const c = new pg.Client({ connectionString: this.#url, keepAlive: true })
    // A dropped connection emits 'error': the lease is lost with it.
    c.on('error', () => this.#lost(c, 'connection error'))
    c.on('end', () => this.#lost(c, 'connection closed'))
    try {
      await c.connect()
      const r = await c.query<{ ok: boolean }>('SELECT pg_try_advisory_lock(hashtext($1)) AS ok', [`lattice_gateway_rollout_driver:${this.#fleet.name}`])
      if (r.rows[0]?.ok === true && !this.#closed) {
        this.#lock = c
        this.#driving = true
        this.#log.warn({ event: 'rollout_driver', replica: this.self, driving: true }, `rollout driver: ${this.self} drives the fleet's rollouts`)
        return
      }
    } catch {}
    c.removeAllListeners('end')
    await c.end().catch(() => {})
  }

  #lost (c: pg.Client, why: string): void {
    if (this.#lock !== c) return
    this.#lock = null
    this.#driving = false
    this.#manager?.halt()
    if (!this.#closed) this.#log.warn({ event: 'rollout_driver', replica: this.self, driving: false, reason: why }, `rollout driver: ${this.self} lost the lease (${why})`)
  }
}
