/**
 * The control plane of a gateway without `fleet` (SPEC §10): this process
 * is the only replica. Versions are a counter per service, starting at 1
 * for the config's weights; the history is a ring of the last 100 changes
 * per service, newest first.
 *
 * A change is validated with the rules of `Service.setTraffic` (400
 * GW_BAD_REQUEST), checked against `ifMatch` (412 GW_VERSION_CONFLICT),
 * shown to the guard, then applied here and — with `server.workers > 1` —
 * in every other worker before the promise resolves (`broadcast`, carried
 * by src/cluster.ts). Nothing is changed anywhere when any check fails.
 */
import { hostname } from 'node:os'
import { GatewayError } from '../errors.js'
import type { Registry } from '../upstream/registry.js'
import type { Service } from '../upstream/service.js'
import type { AdminChange, WorkersReport } from '../upstream/registry.js'
import { HISTORY_LIMIT, type ChangeResult, type ControlPlane, type HistoryEntry, type TrafficChange } from './control.js'

export interface LocalControlOptions {
  /** Default `<host>:<pid>`. */
  replicaId?: string
  /** Cluster workers: applies a change in every other worker; awaited before a change resolves. */
  broadcast?: ((change: AdminChange) => Promise<WorkersReport | undefined>) | undefined
}

/** The service a change names, or GW_NOT_FOUND. */
export function serviceOf (registry: Registry, name: string): Service {
  const s = registry.get(name)
  if (s === undefined) throw new GatewayError('GW_NOT_FOUND', `unknown service "${name}"`)
  return s
}

/** True when two complete weightings are the same. */
export function sameWeights (a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>>): boolean {
  const ka = Object.keys(a)
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k])
}

export function versionConflict (service: string, expected: number, actual: number): GatewayError {
  return new GatewayError('GW_VERSION_CONFLICT', `${service} is at version ${actual}, not ${expected}: read it again (GET /admin/services/${service}) and retry`)
}

export class LocalControlPlane implements ControlPlane {
  readonly replicaId: string
  readonly #registry: Registry
  readonly #broadcast: ((change: AdminChange) => Promise<WorkersReport | undefined>) | null
  readonly #versions = new Map<string, number>()
  readonly #history = new Map<string, HistoryEntry[]>()
  #guard: ((change: TrafficChange) => void) | null = null

  constructor (registry: Registry, opts: LocalControlOptions = {}) {
    this.#registry = registry
    this.replicaId = opts.replicaId ?? `${hostname()}:${process.pid}`
    this.#broadcast = opts.broadcast ?? null
    for (const name of registry.services.keys()) this.#versions.set(name, 1)
  }

  version (service: string): number {
    return this.#versions.get(service) ?? 0
  }

  async changeTraffic (change: TrafficChange): Promise<ChangeResult> {
    const service = serviceOf(this.#registry, change.service)
    const weights = service.parseTraffic(change.weights)
    const current = this.version(service.name)
    if (change.ifMatch !== undefined && change.ifMatch !== current) throw versionConflict(service.name, change.ifMatch, current)
    this.#guard?.(change)
    const from = service.traffic
    if (sameWeights(from, weights)) return { version: current, weights: from }
    const version = current + 1
    this.#versions.set(service.name, version)
    const to = service.setTraffic(weights, change.by, version)
    this.#record(service.name, {
      version,
      at: new Date().toISOString(),
      source: change.source,
      from,
      to,
      replica: this.replicaId,
      reason: change.reason ?? null
    })
    if (this.#broadcast !== null) await this.#broadcast({ kind: 'traffic', service: service.name, weights: { ...to }, by: change.by, version })
    return { version, weights: to }
  }

  async failback (serviceName: string, deployment: string, _by: string): Promise<{ failedBack: boolean, workers?: WorkersReport }> {
    const service = serviceOf(this.#registry, serviceName)
    const group = service.groups.get(deployment)
    if (group === undefined) throw new GatewayError('GW_NOT_FOUND', `service ${service.name} has no deployment "${deployment}"`)
    const failedBack = group.failback()
    // Every worker holds its own active origin: the other workers fail back even when this one was already there.
    // A worker whose own checks still see the primary unhealthy fails back as soon as they see it healthy ("pending").
    const workers = this.#broadcast === null ? undefined : await this.#broadcast({ kind: 'failback', service: service.name, deployment: group.deployment })
    return workers === undefined ? { failedBack } : { failedBack, workers }
  }

  async history (service: string): Promise<HistoryEntry[]> {
    serviceOf(this.#registry, service)
    return [...(this.#history.get(service) ?? [])]
  }

  setGuard (guard: ((change: TrafficChange) => void) | null): void {
    this.#guard = guard
  }

  adopt (serviceName: string, weights: Readonly<Record<string, number>>, version: number, by: string): void {
    const service = this.#registry.get(serviceName)
    if (service === undefined) return
    service.setTraffic(weights, by, version)
    this.#versions.set(serviceName, version)
  }

  start (): void {}

  async close (): Promise<void> {}

  #record (service: string, entry: HistoryEntry): void {
    let ring = this.#history.get(service)
    if (ring === undefined) {
      ring = []
      this.#history.set(service, ring)
    }
    ring.unshift(entry)
    if (ring.length > HISTORY_LIMIT) ring.length = HISTORY_LIMIT
  }
}
