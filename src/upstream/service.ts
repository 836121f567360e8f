/**
 * A service: its deployments (blue, green, …, each an origin group), the
 * traffic weights between them, and the per-request choice of deployment.
 *
 * Weights are swapped atomically (one compiled table replaced by another);
 * a request picks its deployment once, at its start, so in-flight requests
 * finish where they began. With `sticky`, a stable hash of the user's key
 * places them in a bucket 0–99 and buckets fill the deployments in config
 * order: raising a deployment's weight only moves users onto it, lowering
 * it only moves them back (no user bounces between colours).
 */
import { EventEmitter } from 'node:events'
import type { IncomingHttpHeaders } from 'node:http'
import { GatewayError } from '../errors.js'
import type { ServiceConfig } from '../config/schema.js'
import type { OriginGroup, SendPolicy, UpstreamRequest, UpstreamResponse } from './origin-group.js'

export interface TrafficEvent {
  service: string
  from: Record<string, number>
  to: Record<string, number>
  by: string
}

interface Table {
  weights: Readonly<Record<string, number>>
  /** Cumulative upper bounds, in config order, over `total`. */
  bounds: number[]
  groups: OriginGroup[]
  total: number
}

export class Service extends EventEmitter<{ traffic: [TrafficEvent] }> {
  readonly name: string
  readonly config: ServiceConfig
  readonly policy: SendPolicy
  /** Deployments in config order. */
  readonly groups: ReadonlyMap<string, OriginGroup>
  readonly #stickyHeader: string | null
  readonly #stickyCookie: string | null
  #table: Table

  constructor (name: string, config: ServiceConfig, groups: Map<string, OriginGroup>) {
    super()
    this.name = name
    this.config = config
    this.groups = groups
    this.policy = { methods: new Set(config.retry.methods), onStatus: new Set(config.retry.onStatus), timeoutMs: config.timeoutMs }
    this.#stickyHeader = config.sticky?.header?.toLowerCase() ?? null
    this.#stickyCookie = config.sticky?.cookie ?? null
    this.#table = this.#compile(config.traffic)
  }

  get traffic (): Readonly<Record<string, number>> { return this.#table.weights }

  /**
   * Replaces the weights; the next request sees them. Throws GW_BAD_REQUEST
   * for an unknown deployment, a negative or non-integer weight, or all zero.
   * Deployments left out keep their weight.
   */
  setTraffic (input: unknown, by: string): Readonly<Record<string, number>> {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new GatewayError('GW_BAD_REQUEST', 'body must be a JSON object of deployment: weight, e.g. {"blue":0,"green":100}')
    const next: Record<string, number> = { ...this.#table.weights }
    const problems: string[] = []
    for (const [dep, w] of Object.entries(input)) {
      if (!this.groups.has(dep)) problems.push(`unknown deployment "${dep}" (deployments: ${[...this.groups.keys()].join(', ')})`)
      else if (typeof w !== 'number' || !Number.isInteger(w) || w < 0) problems.push(`weight of "${dep}" must be a non-negative integer (got ${JSON.stringify(w)})`)
      else next[dep] = w
    }
    if (problems.length === 0 && Object.values(next).every((w) => w === 0)) problems.push('all weights would be 0; at least one deployment needs traffic')
    if (problems.length > 0) throw new GatewayError('GW_BAD_REQUEST', problems.join('; '))
    const from = this.#table.weights
    this.#table = this.#compile(next)
    this.emit('traffic', { service: this.name, from, to: this.#table.weights, by })
    return this.#table.weights
  }

  /** The deployment for this request: by sticky key when present, else by weight. */
  pick (headers: IncomingHttpHeaders): OriginGroup {
    const t = this.#table
    if (t.groups.length === 1) return t.groups[0]!
    const key = this.#stickyKey(headers)
    // Buckets 0-99 spread over the weights' total, in config order.
    const point = key === null ? Math.random() * t.total : (bucketOf(key) + 0.5) * t.total / 100
    for (let i = 0; i < t.bounds.length; i++) {
      if (point < t.bounds[i]!) return t.groups[i]!
    }
    return t.groups[t.groups.length - 1]!
  }

  /** Picks a deployment and sends through it with failover. */
  send (req: UpstreamRequest, clientHeaders: IncomingHttpHeaders): Promise<UpstreamResponse> {
    return this.pick(clientHeaders).send(req, this.policy)
  }

  #stickyKey (headers: IncomingHttpHeaders): string | null {
    if (this.#stickyHeader !== null) {
      const v = headers[this.#stickyHeader]
      const s = Array.isArray(v) ? v[0] : v
      return s === undefined || s === '' ? null : s
    }
    if (this.#stickyCookie !== null) return cookieValue(headers.cookie, this.#stickyCookie)
    return null
  }

  #compile (weights: Record<string, number>): Table {
    const frozen = Object.freeze({ ...weights })
    const bounds: number[] = []
    const groups: OriginGroup[] = []
    let total = 0
    // Zero-weight deployments are left out of the table but keep running
    // (health checks go on, so a cutover to them is safe).
    for (const [name, group] of this.groups) {
      const w = frozen[name] ?? 0
      if (w === 0) continue
      total += w
      bounds.push(total)
      groups.push(group)
    }
    return { weights: frozen, bounds, groups, total }
  }
}

/** A stable bucket 0–99 for a sticky key (FNV-1a, 32 bit). */
export function bucketOf (key: string): number {
  let h = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return (h >>> 0) % 100
}

function cookieValue (header: string | undefined, name: string): string | null {
  if (header === undefined) return null
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq !== -1 && part.slice(0, eq).trim() === name) {
      const v = part.slice(eq + 1).trim()
      return v === '' ? null : v
    }
  }
  return null
}
