/**
 * The control plane's one door for shared state changes (SPEC §10, §11).
 *
 * Every weight change — an operator's `PUT .../traffic`, an operator
 * failback, a rollout step or rollback — goes through a `ControlPlane`.
 * Two implementations share this contract:
 *
 * - the local one (no `fleet` in the config): versions are a counter per
 *   service in this process, the history is a ring of the last 100 changes,
 *   and with `server.workers > 1` a change is applied in every worker
 *   before the promise resolves;
 * - the fleet one (`fleet.url`): a change is committed to PostgreSQL with
 *   the next version (compare-and-set), pushed to every replica through
 *   LISTEN/NOTIFY and applied there; the promise resolves once every live
 *   replica applied it, or after `fleet.applyTimeoutMs`.
 *
 * The request path never calls this: it reads the plain in-memory tables
 * of `Service`, which a `ControlPlane` replaces atomically.
 */
import type { Pool } from 'pg'
import { GatewayError } from '../errors.js'
import type { WorkersReport } from '../upstream/registry.js'

/** Who made a change: an operator through the admin API, or a rollout's driver. */
export type ChangeSource = 'admin' | 'rollout'

/** A complete new weighting for one service (deployments left out get 0). */
export interface TrafficChange {
  service: string
  weights: Readonly<Record<string, number>>
  source: ChangeSource
  /** The admin client's address, or `rollout <id>`; logged, never a secret. */
  by: string
  /** Why, for the history (`rollout step 2`, `rolled back: error rate 0.31 > 0.01`). */
  reason?: string
  /** Expected current version (`If-Match`): otherwise 412 GW_VERSION_CONFLICT, nothing changed. */
  ifMatch?: number
}

/** How far a committed change has reached the fleet's live replicas. */
export interface FleetApply {
  version: number
  /** Replica ids that applied it. */
  applied: string[]
  /** Live replica ids that had not confirmed it when the call answered. */
  pending: string[]
}

export interface ChangeResult {
  /** The service's version after the change (unchanged when nothing changed). */
  version: number
  /** Every deployment's weight after the change. */
  weights: Readonly<Record<string, number>>
  /** Present with `fleet`. */
  fleet?: FleetApply
}

/** One entry of `GET /admin/services/:name/history`, newest first. */
export interface HistoryEntry {
  version: number
  /** ISO 8601. */
  at: string
  source: ChangeSource
  from: Readonly<Record<string, number>>
  to: Readonly<Record<string, number>>
  /** Id of the replica that made the change (for a rollout, its driver). */
  replica: string
  reason: string | null
}

/** One replica in `GET /admin/fleet`. */
export interface ReplicaView {
  id: string
  host: string
  pid: number
  /** ISO 8601. */
  startedAt: string
  lastSeenAt: string
  /** Last heartbeat younger than 3 x heartbeatMs (judged by the store's clock when read). */
  live: boolean
  /** The version of every service's weights as applied by that replica. */
  versions: Record<string, number>
  /** What the replica published with `setHeartbeatStats` (absent when nothing). */
  stats?: unknown
}

/** `GET /admin/fleet`. */
export interface FleetView {
  name: string
  connected: boolean
  self: string
  replicas: ReplicaView[]
}

/** What the fleet control plane offers other control modules (rollouts, SPEC §11). */
export interface FleetHandle {
  readonly name: string
  /** The store is reachable (connected, listening, state loaded). */
  readonly connected: boolean
  /** The stored state was loaded at least once (`/readyz` waits for it). */
  readonly loaded: boolean
  /** The store's connection pool, for other control modules' own tables and locks; null in a cluster worker (its primary holds the connection). */
  readonly pool: Pool | null
  /** The replica registry; throws GW_FLEET_UNAVAILABLE while the store is down. */
  view(): Promise<FleetView>
  /** The live replicas; throws GW_FLEET_UNAVAILABLE while the store is down. */
  liveReplicas(): Promise<ReplicaView[]>
  /** Extra JSON this replica publishes with each heartbeat (`stats` of its replica entry); null stops. */
  setHeartbeatStats(fn: (() => unknown) | null): void
}

export interface ControlPlane {
  /** This replica's id (without `fleet`: `<host>:<pid>`; with it `<host>:<pid>:<random>`). */
  readonly replicaId: string
  /** Present with `fleet`. */
  readonly fleet?: FleetHandle
  /** The version of a service's weights as applied in this process. */
  version(service: string): number
  /**
   * Validates (GW_BAD_REQUEST), checks `ifMatch` (GW_VERSION_CONFLICT),
   * commits and applies a weight change everywhere. Throws
   * GW_FLEET_UNAVAILABLE, changing nothing, when the store is down.
   */
  changeTraffic(change: TrafficChange): Promise<ChangeResult>
  /** An operator failback of a `manual` deployment, on every replica (each applies it when its own primary is healthy). */
  failback(service: string, deployment: string, by: string): Promise<{ failedBack: boolean, fleet?: FleetApply, workers?: WorkersReport }>
  /** The last 100 changes of a service, newest first. */
  history(service: string): Promise<HistoryEntry[]>
  /**
   * A check run before any change is committed; it throws a GatewayError to
   * refuse it (the rollout manager refuses operator weight changes with
   * GW_CONFLICT while a rollout runs or is paused). One guard; null clears it.
   */
  setGuard(guard: ((change: TrafficChange) => void) | null): void
  /**
   * Cluster workers (`server.workers > 1`): takes weights another worker of
   * this replica already committed, with their version, without a new
   * change (no history entry, no guard).
   */
  adopt?(service: string, weights: Readonly<Record<string, number>>, version: number, by: string): void
  /** Starts syncing (fleet: connects, loads, heartbeats); resolves at once. */
  start(): void
  close(): Promise<void>
}

/** How many changes `history()` keeps per service. */
export const HISTORY_LIMIT = 100

/**
 * Parses an `If-Match` header value: `N` or `"N"` (N a non-negative
 * integer) gives N, an absent header undefined; anything else throws
 * GW_BAD_REQUEST.
 */
export function parseIfMatch (header: string | string[] | undefined): number | undefined {
  if (header === undefined) return undefined
  const raw = Array.isArray(header) ? (header.length === 1 ? header[0]! : '') : header
  const m = /^\s*("?)(\d{1,15})\1\s*$/.exec(raw)
  if (m === null) throw new GatewayError('GW_BAD_REQUEST', `If-Match must be a version number, N or "N" (got ${JSON.stringify(raw.slice(0, 40))})`)
  return Number(m[2])
}
