/**
 * The fleet's PostgreSQL store (SPEC §10): the schema, and every query the
 * control plane runs. Nothing here is on the request path.
 *
 * Tables are shared by every fleet in the database; each row names its
 * fleet (`fleet.name`), so one database can hold several fleets:
 *
 * - `lattice_gateway_versions`  the current weights and version per service;
 * - `lattice_gateway_history`   every change (the last 100 per service kept);
 * - `lattice_gateway_replicas`  the replica registry: heartbeat, applied versions;
 * - `lattice_gateway_failbacks` operator failbacks, applied by every replica.
 *
 * A change is one transaction: compare-and-set of the service's version to
 * the next one, its history row, and a `NOTIFY` on `lattice_gateway` that
 * every replica LISTENs to (PostgreSQL delivers notifications only once the
 * transaction commits). The DDL runs under a transaction-level advisory
 * lock with `IF NOT EXISTS`, so replicas starting at once on an empty
 * database create the tables once; at start it runs only when a table is
 * missing, so a runtime user with DML rights alone works after `migrate`.
 */
import type { Pool, PoolClient } from 'pg'
import { GatewayError } from '../errors.js'
import type { ChangeSource, HistoryEntry } from './control.js'

/** The LISTEN/NOTIFY channel every replica listens on. */
export const CHANNEL = 'lattice_gateway'
/** pg_advisory_xact_lock key for the DDL ("LGWDDL" in ASCII). */
const DDL_LOCK = 0x4c4757444441
const HISTORY_KEPT = 100

export const TABLES = ['lattice_gateway_versions', 'lattice_gateway_history', 'lattice_gateway_replicas', 'lattice_gateway_failbacks'] as const

const DDL = `
CREATE TABLE IF NOT EXISTS lattice_gateway_versions (
  fleet      text        NOT NULL,
  service    text        NOT NULL,
  version    bigint      NOT NULL,
  weights    jsonb       NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (fleet, service)
);
CREATE TABLE IF NOT EXISTS lattice_gateway_history (
  fleet     text        NOT NULL,
  service   text        NOT NULL,
  version   bigint      NOT NULL,
  at        timestamptz NOT NULL DEFAULT now(),
  source    text        NOT NULL,
  from_w    jsonb       NOT NULL,
  to_w      jsonb       NOT NULL,
  replica   text        NOT NULL,
  by_whom   text        NOT NULL,
  reason    text,
  PRIMARY KEY (fleet, service, version)
);
CREATE TABLE IF NOT EXISTS lattice_gateway_replicas (
  fleet        text        NOT NULL,
  id           text        NOT NULL,
  host         text        NOT NULL,
  pid          integer     NOT NULL,
  started_at   timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  versions     jsonb       NOT NULL DEFAULT '{}',
  failback     bigint      NOT NULL DEFAULT 0,
  stats        jsonb,
  PRIMARY KEY (fleet, id)
);
CREATE TABLE IF NOT EXISTS lattice_gateway_failbacks (
  id         bigserial   PRIMARY KEY,
  fleet      text        NOT NULL,
  service    text        NOT NULL,
  deployment text        NOT NULL,
  at         timestamptz NOT NULL DEFAULT now(),
  replica    text        NOT NULL,
  by_whom    text        NOT NULL
);
CREATE INDEX IF NOT EXISTS lattice_gateway_failbacks_fleet ON lattice_gateway_failbacks (fleet, id);
`

/** True when every table exists (visible on the search path). */
export async function hasSchema (pool: Pool): Promise<boolean> {
  const r = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM unnest($1::text[]) AS t(name) WHERE to_regclass(t.name) IS NOT NULL`, [[...TABLES]])
  return r.rows[0]!.n === TABLES.length
}

/** Creates what is missing; safe when several replicas run it at once. */
export async function migrate (pool: Pool): Promise<void> {
  await runDdl(pool, DDL_LOCK, DDL)
}

/** Runs `ddl` in one transaction holding the advisory lock `lock`, so replicas that run it at once take turns. */
export async function runDdl (pool: Pool, lock: number, ddl: string): Promise<void> {
  await transaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [lock])
    await c.query(ddl)
  })
}

/** A service's stored state. */
export interface StoredWeights {
  service: string
  version: number
  weights: Record<string, number>
}

/** What a notification on CHANNEL carries (JSON). */
export type Notice =
  | { fleet: string, kind: 'traffic', service: string, version: number, weights: Record<string, number>, replica: string }
  | { fleet: string, kind: 'failback', id: number, service: string, deployment: string, replica: string }
  | { fleet: string, kind: 'applied', replica: string }

export async function readWeights (pool: Pool, fleet: string): Promise<StoredWeights[]> {
  const r = await pool.query<{ service: string, version: string, weights: Record<string, number> }>('SELECT service, version, weights FROM lattice_gateway_versions WHERE fleet = $1', [fleet])
  return r.rows.map((row) => ({ service: row.service, version: Number(row.version), weights: row.weights }))
}

export async function lastFailback (pool: Pool, fleet: string): Promise<number> {
  const r = await pool.query<{ id: string | null }>('SELECT max(id) AS id FROM lattice_gateway_failbacks WHERE fleet = $1', [fleet])
  return Number(r.rows[0]?.id ?? 0)
}

export async function failbacksAfter (pool: Pool, fleet: string, id: number): Promise<Array<{ id: number, service: string, deployment: string }>> {
  const r = await pool.query<{ id: string, service: string, deployment: string }>('SELECT id, service, deployment FROM lattice_gateway_failbacks WHERE fleet = $1 AND id > $2 ORDER BY id', [fleet, id])
  return r.rows.map((row) => ({ id: Number(row.id), service: row.service, deployment: row.deployment }))
}

export interface Commit {
  fleet: string
  service: string
  /** The replica's config weights: the service's version 1 when the store has no row yet. */
  initial: Record<string, number>
  /** A function of the stored weights: the new weights, or a thrown GatewayError. */
  next: Record<string, number>
  ifMatch: number | undefined
  source: ChangeSource
  by: string
  reason: string | null
  replica: string
}

/**
 * Compare-and-set: commits `next` as the service's next version with its
 * history row and notification. Resolves with the stored state after it
 * (unchanged, with `changed: false`, when the weights were already those);
 * throws GW_VERSION_CONFLICT (nothing written) when `ifMatch` is not the version.
 */
export async function commitTraffic (pool: Pool, c: Commit, same: (a: Record<string, number>, b: Record<string, number>) => boolean): Promise<StoredWeights & { from: Record<string, number>, changed: boolean }> {
  return transaction(pool, async (q) => {
    // One round trip: the row (version 1 = these config weights when there is none yet), locked until COMMIT.
    const cur = await q.query<{ version: string, weights: Record<string, number> }>(
      `INSERT INTO lattice_gateway_versions AS v (fleet, service, version, weights) VALUES ($1, $2, 1, $3)
       ON CONFLICT (fleet, service) DO UPDATE SET fleet = v.fleet RETURNING v.version, v.weights`, [c.fleet, c.service, JSON.stringify(c.initial)])
    const version = Number(cur.rows[0]!.version)
    const from = cur.rows[0]!.weights
    if (c.ifMatch !== undefined && c.ifMatch !== version) {
      throw new GatewayError('GW_VERSION_CONFLICT', `${c.service} is at version ${version}, not ${c.ifMatch}: read it again (GET /admin/services/${c.service}) and retry`)
    }
    if (same(from, c.next)) return { service: c.service, version, weights: from, from, changed: false }
    const next = version + 1
    const notice: Notice = { fleet: c.fleet, kind: 'traffic', service: c.service, version: next, weights: c.next, replica: c.replica }
    // One round trip: the new version, its history row, the history beyond 100 trimmed, the notification (sent at COMMIT).
    await q.query(
      `WITH u AS (UPDATE lattice_gateway_versions SET version = $3, weights = $4, updated_at = now() WHERE fleet = $1 AND service = $2),
            h AS (INSERT INTO lattice_gateway_history (fleet, service, version, source, from_w, to_w, replica, by_whom, reason) VALUES ($1, $2, $3, $5, $6, $4, $7, $8, $9)),
            d AS (DELETE FROM lattice_gateway_history WHERE fleet = $1 AND service = $2 AND version <= $3 - ${HISTORY_KEPT})
       SELECT pg_notify($10, $11)`,
      [c.fleet, c.service, next, JSON.stringify(c.next), c.source, JSON.stringify(from), c.replica, c.by, c.reason, CHANNEL, JSON.stringify(notice)])
    return { service: c.service, version: next, weights: c.next, from, changed: true }
  })
}

/** Records an operator failback for every replica; resolves with its id. */
export async function commitFailback (pool: Pool, fleet: string, service: string, deployment: string, replica: string, by: string): Promise<number> {
  return transaction(pool, async (q) => {
    const r = await q.query<{ id: string }>('INSERT INTO lattice_gateway_failbacks (fleet, service, deployment, replica, by_whom) VALUES ($1, $2, $3, $4, $5) RETURNING id', [fleet, service, deployment, replica, by])
    const id = Number(r.rows[0]!.id)
    // Old requests are never replayed (a replica starts from the newest id): keep a few for the record.
    await q.query('DELETE FROM lattice_gateway_failbacks WHERE fleet = $1 AND id <= $2', [fleet, id - HISTORY_KEPT])
    const notice: Notice = { fleet, kind: 'failback', id, service, deployment, replica }
    await q.query('SELECT pg_notify($1, $2)', [CHANNEL, JSON.stringify(notice)])
    return id
  })
}

export async function readHistory (pool: Pool, fleet: string, service: string): Promise<HistoryEntry[]> {
  const r = await pool.query<{ version: string, at: Date, source: ChangeSource, from_w: Record<string, number>, to_w: Record<string, number>, replica: string, reason: string | null }>(
    'SELECT version, at, source, from_w, to_w, replica, reason FROM lattice_gateway_history WHERE fleet = $1 AND service = $2 ORDER BY version DESC LIMIT $3', [fleet, service, HISTORY_KEPT])
  return r.rows.map((row) => ({ version: Number(row.version), at: row.at.toISOString(), source: row.source, from: row.from_w, to: row.to_w, replica: row.replica, reason: row.reason }))
}

/** One row of the replica registry, `live` judged by the store's clock. */
export interface ReplicaRow {
  id: string
  host: string
  pid: number
  startedAt: string
  lastSeenAt: string
  live: boolean
  versions: Record<string, number>
  failback: number
  stats: unknown
}

export interface Heartbeat {
  fleet: string
  id: string
  host: string
  pid: number
  startedAt: Date
  versions: Record<string, number>
  failback: number
  stats: unknown
}

/** Upserts this replica's row (a heartbeat, or a report of what it applied). */
export async function beat (pool: Pool, h: Heartbeat, notify: boolean): Promise<void> {
  const upsert = `INSERT INTO lattice_gateway_replicas (fleet, id, host, pid, started_at, last_seen_at, versions, failback, stats)
    VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8)
    ON CONFLICT (fleet, id) DO UPDATE SET last_seen_at = now(), versions = EXCLUDED.versions, failback = EXCLUDED.failback, stats = EXCLUDED.stats`
  const params = [h.fleet, h.id, h.host, h.pid, h.startedAt, JSON.stringify(h.versions), h.failback, h.stats === undefined ? null : JSON.stringify(h.stats)]
  if (!notify) {
    await pool.query(upsert, params)
    return
  }
  // One statement (its own transaction): the row, then the notification waiting admin calls wake on.
  const notice: Notice = { fleet: h.fleet, kind: 'applied', replica: h.id }
  await pool.query(`WITH b AS (${upsert}) SELECT pg_notify($9, $10)`, [...params, CHANNEL, JSON.stringify(notice)])
}

/** Removes the rows of replicas silent for more than `ms`. */
export async function forget (pool: Pool, fleet: string, ms: number): Promise<void> {
  await pool.query(`DELETE FROM lattice_gateway_replicas WHERE fleet = $1 AND last_seen_at < now() - $2::double precision * interval '1 millisecond'`, [fleet, ms])
}

/** The replica registry, `live` while the last heartbeat is younger than `liveMs`. */
export async function replicas (pool: Pool, fleet: string, liveMs: number): Promise<ReplicaRow[]> {
  const r = await pool.query<{ id: string, host: string, pid: number, started_at: Date, last_seen_at: Date, live: boolean, versions: Record<string, number>, failback: string, stats: unknown }>(
    `SELECT id, host, pid, started_at, last_seen_at, last_seen_at > now() - $2::double precision * interval '1 millisecond' AS live, versions, failback, stats
       FROM lattice_gateway_replicas WHERE fleet = $1 ORDER BY started_at, id`, [fleet, liveMs])
  return r.rows.map((row) => ({ id: row.id, host: row.host, pid: row.pid, startedAt: row.started_at.toISOString(), lastSeenAt: row.last_seen_at.toISOString(), live: row.live, versions: row.versions, failback: Number(row.failback), stats: row.stats }))
}

export async function leave (pool: Pool, fleet: string, id: string): Promise<void> {
  await pool.query('DELETE FROM lattice_gateway_replicas WHERE fleet = $1 AND id = $2', [fleet, id])
}

async function transaction<T> (pool: Pool, fn: (q: PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect()
  let out: T
  try {
    await c.query('BEGIN')
    out = await fn(c)
    await c.query('COMMIT')
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {})
    // A refusal leaves the connection sound; anything else may have broken it.
    release(c, err instanceof GatewayError ? undefined : err)
    throw err
  }
  c.release()
  return out
}

function release (c: PoolClient, err: unknown): void {
  c.release(err instanceof Error ? err : err === undefined ? undefined : true)
}

/** The URL with its password replaced, for log lines and messages. */
export function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password !== '') u.password = '***'
    for (const k of [...u.searchParams.keys()]) if (/pass|secret|token|key/i.test(k)) u.searchParams.set(k, '***')
    return u.toString()
  } catch {
    return '(unparsable url)'
  }
}

/** A pg or socket error's code, for log lines (never its connection string). */
export function errCode (err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined
}
