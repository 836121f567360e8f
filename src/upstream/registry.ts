/**
 * The owner of all upstream state: service name -> Service -> deployments
 * -> origins. It starts and stops the health checkers and re-emits every
 * state transition (origin health, breaker, failover, traffic) as one
 * stream of events that logging and metrics listen to.
 */
import { EventEmitter } from 'node:events'
import type { GatewayConfig, OriginSpec, ServiceConfig } from '../config/schema.js'
import { Origin, type DispatcherDecorator, type OriginHealthEvent, type OriginRole } from './origin.js'
import { OriginGroup, type FailoverEvent } from './origin-group.js'
import { Service, type TrafficEvent } from './service.js'
import type { BreakerState } from './outlier.js'

export interface BreakerEvent {
  origin: Origin
  /** The new state. */
  state: BreakerState
  from: BreakerState
  reason: string
}

/**
 * A state change made through the admin API. With `server.workers` > 1 it
 * is applied in every worker (src/cluster.ts).
 */
export type AdminChange =
  | { kind: 'traffic', service: string, weights: Record<string, number>, by: string, version?: number }
  | { kind: 'failback', service: string, deployment: string }

/** Which cluster workers (node:cluster ids) made an admin change, and which will once their primary is healthy. */
export interface WorkersReport {
  applied: number[]
  pending: number[]
}

export interface RegistryOptions {
  /** Wraps every origin's pools (e.g. SigV4 signing for `auth: iam`). */
  decorate?: (spec: OriginSpec) => DispatcherDecorator | undefined
}

/** One service's entry in `GET /admin/services`. */
export interface ServiceSnapshot {
  traffic: Record<string, number>
  deployments: Record<string, {
    active: OriginRole
    origins: Partial<Record<OriginRole, { url: string | null, healthy: boolean, breaker: BreakerState }>>
  }>
}

export class Registry extends EventEmitter<{ health: [OriginHealthEvent], breaker: [BreakerEvent], failover: [FailoverEvent], traffic: [TrafficEvent] }> {
  readonly services: ReadonlyMap<string, Service>
  /** Every origin with the spec it was built from (Lattice origins are resolved by their owner). */
  readonly origins: ReadonlyArray<{ origin: Origin, spec: OriginSpec }>

  constructor (config: GatewayConfig, opts: RegistryOptions = {}) {
    super()
    const services = new Map<string, Service>()
    const origins: Array<{ origin: Origin, spec: OriginSpec }> = []
    for (const [name, svc] of Object.entries(config.services)) {
      const groups = new Map<string, OriginGroup>()
      for (const [dep, d] of Object.entries(svc.deployments)) {
        const make = (role: OriginRole, spec: OriginSpec): Origin => {
          const decorate = opts.decorate?.(spec)
          const origin = new Origin({ service: name, deployment: dep, role, config: svc, ...(decorate === undefined ? {} : { decorate }) })
          if (typeof spec === 'string') origin.setUrl(spec)
          else origin.setUrl(null, `Lattice service ${spec.lattice.service} not resolved yet`)
          origin.on('health', (e) => this.emit('health', e))
          origin.on('breaker', (t) => this.emit('breaker', { origin, state: t.to, from: t.from, reason: t.reason }))
          origins.push({ origin, spec })
          return origin
        }
        const group = new OriginGroup(name, dep, make('primary', d.primary), d.secondary === undefined ? null : make('secondary', d.secondary), svc.failback)
        group.on('failover', (e) => this.emit('failover', e))
        groups.set(dep, group)
      }
      const service = new Service(name, svc as ServiceConfig, groups)
      service.on('traffic', (e) => this.emit('traffic', e))
      services.set(name, service)
    }
    this.services = services
    this.origins = origins
  }

  get (name: string): Service | undefined { return this.services.get(name) }

  /** Starts active health checks on every origin (weight-0 deployments included). */
  start (): void {
    for (const { origin } of this.origins) origin.start()
  }

  async close (): Promise<void> {
    await Promise.all(this.origins.map(({ origin }) => origin.close()))
  }

  snapshot (name: string): ServiceSnapshot | undefined {
    const s = this.services.get(name)
    if (s === undefined) return undefined
    const deployments: ServiceSnapshot['deployments'] = {}
    for (const [dep, g] of s.groups) {
      const origins: ServiceSnapshot['deployments'][string]['origins'] = {}
      for (const o of g.secondary === null ? [g.primary] : [g.primary, g.secondary]) {
        origins[o.role] = { url: o.url, healthy: o.healthy, breaker: o.breakerState }
      }
      deployments[dep] = { active: g.active.role, origins }
    }
    return { traffic: { ...s.traffic }, deployments }
  }

  snapshotAll (): Record<string, ServiceSnapshot> {
    const out: Record<string, ServiceSnapshot> = {}
    for (const name of this.services.keys()) out[name] = this.snapshot(name)!
    return out
  }

  /** Services without a healthy origin in any deployment that has traffic (SPEC §7 `/readyz`). */
  unready (): string[] {
    const failing: string[] = []
    for (const [name, s] of this.services) {
      const ok = [...s.groups].some(([dep, g]) => (s.traffic[dep] ?? 0) > 0 && g.healthy)
      if (!ok) failing.push(name)
    }
    return failing
  }
}
