/**
 * A service: its deployments (blue, green, …, each an origin group), the
 * traffic weights between them, and the per-request choice of deployment.
 *
 * Weights are swapped atomically (one compiled table replaced by another);
 * a request picks its deployment once, at its start, so in-flight requests
 * finish where they began, and the next request sees the new table.
 *
 * With `sticky`, a stable hash of the user's key (FNV-1a, 32 bit, over the
 * header or cookie value) places them in a bucket 0–99, and the buckets
 * fill the deployments in config order: bucket b goes to the deployment
 * whose cumulative share of the total weight covers (b + 0.5) / 100. With
 * weights summing to 100 that is simply "the first deployment whose
 * cumulative weight exceeds b". For blue/green (two deployments) this
 * makes movement monotonic: raising green's weight only moves users
 * blue → green, lowering it only moves them back, and unchanged weights
 * move nobody. With three or more deployments a user only moves between
 * deployments whose ranges border in config order. Requests without the
 * key are spread by weight at random.
 */
import { EventEmitter } from 'node:events'
import type { IncomingHttpHeaders } from 'node:http'
import { GatewayError } from '../errors.js'
import type { ServiceConfig } from '../config/schema.js'
import type { OriginGroup, SendPolicy, UpstreamRequest, UpstreamResponse } from './origin-group.js'

/** A change of a service's weights (emitted only when some weight changed). */
export interface TrafficEvent {
  service: string
  /** Every deployment's weight before the change. */
  from: Readonly<Record<string, number>>
  /** Every deployment's weight after the change. */
  to: Readonly<Record<string, number>>
  /** Deployments whose weight changed, in config order. */
  changed: string[]
  /** Who asked for it (the admin client's address). */
  by: string
  /** The version the control plane gave the change (src/fleet/), when it went through one. */
  version?: number
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
   * Replaces the weights and returns every deployment's new weight; the
   * next request sees them. `input` is the complete new weighting, as in the
   * config's `traffic`: a deployment left out gets weight 0 (so
   * `{"green":100}` sends everything to green). Throws GW_BAD_REQUEST —
   * and changes nothing — for a non-object, an unknown deployment, a
   * negative or non-integer weight, or all weights 0. Emits `traffic` only
   * when some weight actually changed.
   */
  setTraffic (input: unknown, by: string, version?: number): Readonly<Record<string, number>> {
    const next = this.parseTraffic(input)
    const from = this.#table.weights
    const changed = [...this.groups.keys()].filter((dep) => (from[dep] ?? 0) !== next[dep])
    if (changed.length === 0) return from
    this.#table = this.#compile(next)
    this.emit('traffic', version === undefined ? { service: this.name, from, to: this.#table.weights, changed, by } : { service: this.name, from, to: this.#table.weights, changed, by, version })
    return this.#table.weights
  }

  /**
   * Checks a weighting with the rules of `setTraffic` without applying it:
   * every deployment's weight (those left out 0), or GW_BAD_REQUEST.
   */
  parseTraffic (input: unknown): Record<string, number> {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      throw new GatewayError('GW_BAD_REQUEST', `body must be a JSON object of deployment: weight, e.g. ${this.#example()}`)
    }
    const next: Record<string, number> = {}
    for (const dep of this.groups.keys()) next[dep] = 0
    const problems: string[] = []
    for (const [dep, w] of Object.entries(input)) {
      if (!this.groups.has(dep)) problems.push(`unknown deployment "${dep}" (${this.name} has: ${[...this.groups.keys()].join(', ')})`)
      else if (typeof w !== 'number' || !Number.isSafeInteger(w) || w < 0) problems.push(`weight of "${dep}" must be a non-negative integer (got ${JSON.stringify(w)})`)
      else next[dep] = w
    }
    if (problems.length === 0 && Object.values(next).every((w) => w === 0)) {
      problems.push(`all weights would be 0; at least one deployment needs traffic (deployments left out get 0), e.g. ${this.#example()}`)
    }
    if (problems.length > 0) throw new GatewayError('GW_BAD_REQUEST', problems.join('; '))
    return next
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

  /** An example body for error messages: everything on the last deployment. */
  #example (): string {
    const names = [...this.groups.keys()]
    return JSON.stringify(Object.fromEntries(names.map((n, i) => [n, i === names.length - 1 ? 100 : 0])))
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

  #compile (input: Readonly<Record<string, number>>): Table {
    // Every deployment, in config order, so snapshots and logs show them all.
    const weights: Record<string, number> = {}
    const bounds: number[] = []
    const groups: OriginGroup[] = []
    let total = 0
    for (const [name, group] of this.groups) {
      const w = input[name] ?? 0
      weights[name] = w
      // Zero-weight deployments are left out of the table but keep running
      // (health checks go on, so a cutover to them is safe).
      if (w === 0) continue
      total += w
      bounds.push(total)
      groups.push(group)
    }
    return { weights: Object.freeze(weights), bounds, groups, total }
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
      let v = part.slice(eq + 1).trim()
      // RFC 6265 allows a quoted value; the quotes are not part of it.
      if (v.length >= 2 && v.charCodeAt(0) === 34 && v.charCodeAt(v.length - 1) === 34) v = v.slice(1, -1)
      return v === '' ? null : v
    }
  }
  return null
}
