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
 *
 * Rollouts (SPEC §11) add two decisions here, both compiled or set once:
 * a preview header naming a deployment (with its token, if configured)
 * picks that deployment whatever its weight; and while a rollout is active
 * (`setRolloutTap`, a null check otherwise) every by-weight request's
 * outcome is recorded per deployment, and with `shield` an idempotent
 * request that failed on the candidate is re-sent once to the baseline.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { IncomingHttpHeaders } from 'node:http'
import { GatewayError } from '../errors.js'
import type { ServiceConfig } from '../config/schema.js'
import type { OriginGroup, SendPolicy, UpstreamRequest, UpstreamResponse } from './origin-group.js'
import type { ServiceWindow } from '../rollout/window.js'

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

/** What the request path needs of an active rollout (set by src/rollout/rollout.ts). */
export interface RolloutTap {
  /** Outcomes per deployment, recorded after each deployment's own origin failover. */
  window: ServiceWindow
  baseline: OriginGroup
  candidate: OriginGroup
  /** Re-send a failed idempotent request on the candidate to the baseline. */
  shield: boolean
}

interface Preview {
  /** Lower-cased header name. */
  header: string
  /** SHA-256 of the configured token; undefined: no token needed; null: configured empty, never matches. */
  token: Buffer | null | undefined
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()
const ignore = (): void => {}

/** An error the gateway raised about the request itself, not about an origin. */
function isOwnError (err: unknown): boolean {
  return err instanceof GatewayError && err.code !== 'GW_DEADLINE'
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
  // --- rollouts (SPEC §11) ---
  /** Client headers that never go upstream (the preview header and its token), or null. */
  readonly previewHeaders: readonly string[] | null
  /** Set by the metrics plugin: counts requests the shield re-sent to the baseline. */
  onShield: (() => void) | null = null
  readonly #preview: Preview | null
  #tap: RolloutTap | null = null
  // --- end rollouts ---

  constructor (name: string, config: ServiceConfig, groups: Map<string, OriginGroup>) {
    super()
    this.name = name
    this.config = config
    this.groups = groups
    this.policy = { methods: new Set(config.retry.methods), onStatus: new Set(config.retry.onStatus), timeoutMs: config.timeoutMs }
    this.#stickyHeader = config.sticky?.header?.toLowerCase() ?? null
    this.#stickyCookie = config.sticky?.cookie ?? null
    this.#table = this.#compile(config.traffic)
    const p = config.preview
    // token: undefined when not configured, null when configured empty (nothing opens then).
    this.#preview = p === undefined ? null : { header: p.header.toLowerCase(), token: p.token === undefined ? undefined : p.token === '' ? null : digest(p.token) }
    this.previewHeaders = p === undefined ? null : [p.header.toLowerCase(), 'x-preview-token']
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
    return parseWeights(this.name, [...this.groups.keys()], input)
  }

  /**
   * The deployment for this request: the one its preview header names
   * (SPEC §11, when allowed), else by sticky key when present, else by weight.
   */
  pick (headers: IncomingHttpHeaders): OriginGroup {
    if (this.#preview !== null) {
      const g = this.#previewed(headers, this.#preview)
      if (g !== null) return g
    }
    return this.#byWeight(headers)
  }

  #byWeight (headers: IncomingHttpHeaders): OriginGroup {
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
    // A preview request goes where it asked; it is neither counted nor shielded.
    if (this.#preview !== null) {
      const g = this.#previewed(clientHeaders, this.#preview)
      if (g !== null) return g.send(req, this.policy)
    }
    const group = this.#byWeight(clientHeaders)
    const tap = this.#tap
    if (tap === null) return group.send(req, this.policy)
    return this.#observed(group, tap, req)
  }

  // --- rollouts (SPEC §11) ---

  /** The active rollout's tap, or null. */
  get rolloutTap (): RolloutTap | null { return this.#tap }

  /** Set by the rollout manager when a rollout starts (or resumes on this replica), null when it ends. */
  setRolloutTap (tap: RolloutTap | null): void {
    this.#tap = tap
  }

  /**
   * Sends through a deployment while a rollout is active: records the
   * outcome in the window, and with `shield`, re-sends a failed idempotent
   * request on the candidate once to the baseline.
   */
  async #observed (group: OriginGroup, tap: RolloutTap, req: UpstreamRequest): Promise<UpstreamResponse> {
    const w = tap.window.deployments.get(group.deployment)
    const start = performance.now()
    let res: UpstreamResponse
    try {
      res = await group.send(req, this.policy)
    } catch (err) {
      // The request's own failures (body too large, the gateway's bulkhead, a
      // caller's deadline) say nothing about the deployment.
      if (isOwnError(err) || req.signal?.aborted === true) throw err
      w?.record(performance.now() - start, true)
      if (group === tap.candidate && tap.shield && this.#replayable(req)) return this.#shielded(tap, req)
      throw err
    }
    const failed = res.statusCode >= 500
    w?.record(performance.now() - start, failed)
    if (failed && group === tap.candidate && tap.shield && this.policy.onStatus.has(res.statusCode) && this.#replayable(req)) {
      res.body.dump().catch(ignore)
      return this.#shielded(tap, req)
    }
    return res
  }

  #replayable (req: UpstreamRequest): boolean {
    return this.policy.methods.has(req.method) && (req.body === null || req.body.replayable) && req.signal?.aborted !== true
  }

  #shielded (tap: RolloutTap, req: UpstreamRequest): Promise<UpstreamResponse> {
    if (this.onShield !== null) this.onShield()
    return tap.baseline.send(req, this.policy)
  }

  /** The deployment a preview header names, when the token (if configured) matches. */
  #previewed (headers: IncomingHttpHeaders, p: Preview): OriginGroup | null {
    const v = headers[p.header]
    if (v === undefined) return null
    const name = Array.isArray(v) ? v[0] : v
    if (p.token !== undefined) {
      const t = headers['x-preview-token']
      const given = Array.isArray(t) ? t[0] : t
      // An empty configured token (an unset variable) opens nothing.
      if (given === undefined || p.token === null || !timingSafeEqual(digest(given), p.token)) return null
    }
    return name === undefined ? null : this.groups.get(name) ?? null
  }
  // --- end rollouts ---

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

/**
 * The rules of `Service.setTraffic` over a service's deployment names (in
 * config order): every deployment's weight (those left out 0), or
 * GW_BAD_REQUEST for a non-object, an unknown deployment, a negative or
 * non-integer weight, or all weights 0.
 */
export function parseWeights (service: string, deployments: readonly string[], input: unknown): Record<string, number> {
  // An example body for error messages: everything on the last deployment.
  const example = (): string => JSON.stringify(Object.fromEntries(deployments.map((n, i) => [n, i === deployments.length - 1 ? 100 : 0])))
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new GatewayError('GW_BAD_REQUEST', `body must be a JSON object of deployment: weight, e.g. ${example()}`)
  }
  const next: Record<string, number> = {}
  for (const dep of deployments) next[dep] = 0
  const problems: string[] = []
  for (const [dep, w] of Object.entries(input)) {
    if (!deployments.includes(dep)) problems.push(`unknown deployment "${dep}" (${service} has: ${deployments.join(', ')})`)
    else if (typeof w !== 'number' || !Number.isSafeInteger(w) || w < 0) problems.push(`weight of "${dep}" must be a non-negative integer (got ${JSON.stringify(w)})`)
    else next[dep] = w
  }
  if (problems.length === 0 && Object.values(next).every((w) => w === 0)) {
    problems.push(`all weights would be 0; at least one deployment needs traffic (deployments left out get 0), e.g. ${example()}`)
  }
  if (problems.length > 0) throw new GatewayError('GW_BAD_REQUEST', problems.join('; '))
  return next
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
