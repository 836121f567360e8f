/**
 * The fleet with `server.workers > 1` (SPEC §10): the process and its
 * workers are one replica with one store connection.
 *
 * - The cluster's primary runs the `FleetControlPlane` (connection, LISTEN,
 *   heartbeats). Its target applies a change in every worker (over the
 *   cluster's IPC, src/cluster.ts) before the replica reports it applied.
 * - Each worker runs a `WorkerFleetPlane`: it validates a change and runs
 *   the guard itself, then hands it to the primary and answers with the
 *   primary's result; it takes every applied change with its version
 *   (`adopt`), and the primary's connection state for `/readyz` and the
 *   fleet gauges.
 */
import { EventEmitter } from 'node:events'
import type { GatewayConfig } from '../config/schema.js'
import { GatewayError, ErrorCodes, type ErrorCode } from '../errors.js'
import type { Registry } from '../upstream/registry.js'
import type { AdminChange } from '../upstream/registry.js'
import { serviceOf } from './local.js'
import type { ChangeResult, ControlPlane, FleetApply, FleetHandle, FleetView, HistoryEntry, ReplicaView, TrafficChange } from './control.js'
import type { FleetControlPlane, FleetEvents, FleetTarget } from './fleet.js'

/** Worker -> primary: one control-plane call. */
export type ControlRequest =
  | { op: 'traffic', change: TrafficChange }
  | { op: 'failback', service: string, deployment: string, by: string }
  | { op: 'history', service: string }
  | { op: 'view' }

export type ControlReply =
  | { ok: true, value: unknown }
  | { ok: false, code: ErrorCode, statusCode: number, message: string }

/** Primary -> workers: the replica's fleet state. */
export interface FleetStatus {
  replicaId: string
  connected: boolean
  loaded: boolean
  replicas: number
}

/** Primary: runs a worker's call on the fleet plane; errors travel as their code. */
export async function serveControl (fleet: FleetControlPlane, req: ControlRequest): Promise<ControlReply> {
  try {
    let value: unknown
    switch (req.op) {
      case 'traffic': value = await fleet.changeTraffic(req.change); break
      case 'failback': value = await fleet.failback(req.service, req.deployment, req.by); break
      case 'history': value = await fleet.history(req.service); break
      case 'view': value = await fleet.view(); break
    }
    return { ok: true, value }
  } catch (err) {
    if (err instanceof GatewayError) return { ok: false, code: err.code, statusCode: err.statusCode, message: err.message }
    return { ok: false, code: 'GW_INTERNAL', statusCode: 500, message: 'the fleet control plane failed' }
  }
}

/** Primary: the replica's services from the config, changed in every worker. */
export function clusterTarget (config: GatewayConfig, applyEverywhere: (change: AdminChange) => Promise<void>): FleetTarget {
  const services = new Map<string, { deployments: readonly string[], traffic: Readonly<Record<string, number>> }>()
  for (const [name, s] of Object.entries(config.services)) services.set(name, { deployments: Object.keys(s.deployments), traffic: s.traffic })
  return {
    services,
    apply: (service, weights, version, by) => applyEverywhere({ kind: 'traffic', service, weights: { ...weights }, by, version }),
    // The admin worker checks its own origins before the call reaches the primary.
    checkFailback () {},
    async failback (service, deployment) {
      await applyEverywhere({ kind: 'failback', service, deployment })
      return false
    }
  }
}

/** A worker's control plane: the primary holds the store. */
export class WorkerFleetPlane extends EventEmitter<FleetEvents> implements ControlPlane, FleetHandle {
  readonly name: string
  readonly pool = null
  readonly #registry: Registry
  readonly #ask: (req: ControlRequest) => Promise<ControlReply>
  readonly #versions = new Map<string, number>()
  #status: FleetStatus = { replicaId: 'unknown', connected: false, loaded: false, replicas: 0 }
  #guard: ((change: TrafficChange) => void) | null = null

  constructor (registry: Registry, name: string, ask: (req: ControlRequest) => Promise<ControlReply>) {
    super()
    this.#registry = registry
    this.name = name
    this.#ask = ask
    for (const s of registry.services.keys()) this.#versions.set(s, 1)
  }

  get fleet (): FleetHandle { return this }
  get replicaId (): string { return this.#status.replicaId }
  get connected (): boolean { return this.#status.connected }
  get loaded (): boolean { return this.#status.loaded }

  /** The primary's fleet state changed. */
  status (s: FleetStatus): void {
    const was = this.#status
    this.#status = s
    if (was.connected !== s.connected) this.emit('connection', { connected: s.connected })
    if (was.replicas !== s.replicas) this.emit('replicas', s.replicas)
  }

  version (service: string): number { return this.#versions.get(service) ?? 0 }

  adopt (service: string, weights: Readonly<Record<string, number>>, version: number, by: string): void {
    const s = this.#registry.get(service)
    if (s === undefined) return
    s.setTraffic(weights, by, version)
    this.#versions.set(service, version)
    this.emit('version', { service, version })
  }

  async changeTraffic (change: TrafficChange): Promise<ChangeResult> {
    const weights = serviceOf(this.#registry, change.service).parseTraffic(change.weights)
    this.#guard?.(change)
    return await this.#call({ op: 'traffic', change: { ...change, weights } }) as ChangeResult
  }

  async failback (service: string, deployment: string, by: string): Promise<{ failedBack: boolean, fleet?: FleetApply }> {
    const group = serviceOf(this.#registry, service).groups.get(deployment)
    if (group === undefined) throw new GatewayError('GW_NOT_FOUND', `service ${service} has no deployment "${deployment}"`)
    const moves = group.active !== group.primary
    if (moves && !group.primary.healthy) throw new GatewayError('GW_CONFLICT', `the primary of ${service}/${deployment} is not healthy; failback refused`)
    const r = await this.#call({ op: 'failback', service, deployment, by }) as { fleet: FleetApply }
    return { failedBack: moves, fleet: r.fleet }
  }

  async history (service: string): Promise<HistoryEntry[]> {
    serviceOf(this.#registry, service)
    return await this.#call({ op: 'history', service }) as HistoryEntry[]
  }

  async view (): Promise<FleetView> {
    return await this.#call({ op: 'view' }) as FleetView
  }

  async liveReplicas (): Promise<ReplicaView[]> {
    return (await this.view()).replicas.filter((r) => r.live)
  }

  /** Heartbeats are written by the primary: per-worker stats are not published in a cluster. */
  setHeartbeatStats (_fn: (() => unknown) | null): void {}

  setGuard (guard: ((change: TrafficChange) => void) | null): void { this.#guard = guard }

  start (): void {
    for (const [service, version] of this.#versions) this.emit('version', { service, version })
    this.emit('connection', { connected: this.#status.connected })
    this.emit('replicas', this.#status.replicas)
  }

  async close (): Promise<void> {}

  async #call (req: ControlRequest): Promise<unknown> {
    const r = await this.#ask(req)
    if (r.ok) return r.value
    throw new GatewayError(r.code in ErrorCodes ? r.code : 'GW_INTERNAL', r.message, { statusCode: r.statusCode })
  }
}
