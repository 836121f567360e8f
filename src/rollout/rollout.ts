/**
 * Rollouts (SPEC §11): a state machine per service that moves traffic from
 * the baseline deployment (the highest weight when it starts) to a
 * candidate in steps, analyses the candidate against the baseline on live
 * traffic at the end of every step, and rolls back on its own.
 *
 *   running --pause--> paused --resume--> running
 *   running --last step passes / promote--> promoted
 *   running --failed analyses reach failureLimit--> rolled_back
 *   running|paused --abort--> aborted        paused --promote--> promoted
 *
 * Every weight change goes through the `ControlPlane` with source
 * `rollout` (versioned, in the history, on every worker or replica), and
 * the plane's guard refuses an operator's weight change (409 GW_CONFLICT)
 * while a rollout runs or is paused.
 *
 * Analysis reads the per-deployment outcomes the request path records in
 * the service's `ServiceWindow` while a rollout is active (src/rollout/
 * window.ts). Counts are cumulative per process; a step's window is the
 * difference between the counts at its start and at its end, taken per
 * process (replica) so that summing several of them stays correct when one
 * restarts. Where those counts and the rollout's state live is the
 * `RolloutBackend`'s business: this process alone by default, a fleet's
 * store and replicas with `fleet`.
 *
 * Every transition emits a `rollout` event (one log line each, with the
 * numbers); requests never wait on any of this.
 */
import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { Value } from '@sinclair/typebox/value'
import { GatewayError } from '../errors.js'
import { ROLLOUT_DEFAULTS, RolloutSchema, type RolloutConfig } from '../config/schema.js'
import { rolloutIssues } from '../config/load.js'
import type { ControlPlane, TrafficChange } from '../fleet/control.js'
import type { Registry } from '../upstream/registry.js'
import type { Service } from '../upstream/service.js'
import { ServiceWindow, emptyCounts, addCounts, subCounts, quantileMs, type Counts } from './window.js'

export const ROLLOUT_STATUSES = ['running', 'paused', 'promoted', 'rolled_back', 'aborted'] as const
export type RolloutStatus = typeof ROLLOUT_STATUSES[number]
/** How a rollout ended (`gateway_rollouts_total{result}`). */
export type RolloutResult = 'promoted' | 'rolled_back' | 'aborted'

/** One side of an analysis. */
export interface SideStats {
  requests: number
  failures: number
  errorRate: number | null
  p99Ms: number | null
}

export interface Analysis {
  step: number
  /** ISO 8601. */
  at: string
  passed: boolean
  reason: string
  candidate: SideStats
  baseline: SideStats
}

/** What `GET /admin/services/:name/rollout` answers. */
export interface RolloutView {
  id: string
  service: string
  from: string
  to: string
  status: RolloutStatus
  step: number
  weight: number
  steps: number[]
  stepIntervalMs: number
  analysis: RolloutConfig['analysis']
  failureLimit: number
  shield: boolean
  startedAt: string
  updatedAt: string
  driver: string
  reason: string | null
  /** Failed analyses so far. */
  failures: number
  analyses: Analysis[]
}

/** The whole state, as a store keeps it: the view plus what a new driver needs to continue. */
export interface RolloutState extends RolloutView {
  /** Revision per service, +1 on every stored change (compare-and-set in a fleet's store). */
  rev: number
  /** Epoch ms when the current step's window began (a resumed driver keeps it). */
  stepStartedMs: number
  /** Counts per process (replica id) and deployment at the start of the current step's window. */
  stepStart: Record<string, Record<string, Counts>>
}

/** Where rollout state and window counts live: this process (default) or a fleet. */
export interface RolloutBackend {
  /** This process's id in the counts (the control plane's replica id). */
  readonly self: string
  /** True while this process drives rollouts (runs their timers); alone: always. */
  readonly driving: boolean
  /** Cumulative window counts of every live process for this rollout, by process id then deployment. */
  counts(service: string, rollout: string): Promise<Record<string, Record<string, Counts>>>
  /**
   * Stores a rollout's state when the stored revision is `expectedRev`
   * (0: nothing stored); otherwise throws GW_CONFLICT (it changed elsewhere).
   */
  save(state: RolloutState, expectedRev: number): Promise<void>
  /** The stored state of a service's rollout, when it is kept outside this process (re-read before every decision). */
  load?(service: string): Promise<RolloutState | null>
}

/** A rollout event: one log line each. */
export interface RolloutEvent {
  rollout: string
  service: string
  action: 'start' | 'step' | 'analysis' | 'wait' | 'decision' | 'pause' | 'resume' | 'error'
  status: RolloutStatus
  step: number
  weight: number
  message: string
  analysis?: Analysis
  reason?: string
}

export interface RolloutManagerOptions {
  registry: Registry
  control: ControlPlane
  /** Default: this process alone. */
  backend?: RolloutBackend
  /** Counts `gateway_rollouts_total{service,result}`. */
  onEnd?: (service: string, result: RolloutResult) => void
}

/** Extra intervals a step waits for `minRequests` candidate requests before its analysis fails. */
export const MAX_WAIT_INTERVALS = 3
const ACTIVE = new Set<RolloutStatus>(['running', 'paused'])
// Latencies are compared from this floor: on loopback both sides answer in
// tens of microseconds, where a ratio says nothing about the release.
const P99_FLOOR_MS = 1
const MAX_ANALYSES = 100

/** The process's own counts: the services' windows. */
export class LocalRolloutBackend implements RolloutBackend {
  readonly self: string
  readonly driving = true
  readonly #registry: Registry
  constructor (registry: Registry, self: string) {
    this.#registry = registry
    this.self = self
  }

  async counts (service: string): Promise<Record<string, Record<string, Counts>>> {
    return ownCounts(this.#registry, service, this.self)
  }

  async save (): Promise<void> {}
}

/** This process's window counts of a service's active rollout, keyed by `self`. */
export function ownCounts (registry: Registry, service: string, self: string): Record<string, Record<string, Counts>> {
  const tap = registry.get(service)?.rolloutTap ?? null
  return tap === null ? {} : { [self]: tap.window.counts() }
}

export class RolloutManager extends EventEmitter<{ rollout: [RolloutEvent] }> {
  readonly #registry: Registry
  readonly #control: ControlPlane
  readonly #backend: RolloutBackend
  readonly #onEnd: ((service: string, result: RolloutResult) => void) | null
  /** The current or last rollout of each service. */
  readonly #states = new Map<string, RolloutState>()
  readonly #timers = new Map<string, NodeJS.Timeout>()
  /** One operation at a time per service (timers and admin calls). */
  readonly #queues = new Map<string, Promise<unknown>>()
  #closed = false

  constructor (opts: RolloutManagerOptions) {
    super()
    this.#registry = opts.registry
    this.#control = opts.control
    this.#backend = opts.backend ?? new LocalRolloutBackend(opts.registry, opts.control.replicaId)
    this.#onEnd = opts.onEnd ?? null
    this.#control.setGuard((change: TrafficChange) => {
      if (change.source !== 'admin') return
      const s = this.#states.get(change.service)
      if (s !== undefined && ACTIVE.has(s.status)) {
        throw new GatewayError('GW_CONFLICT', `rollout ${s.id} of ${s.service} is ${s.status}: pause and promote or abort it (POST /admin/services/${s.service}/rollout/abort) before changing weights by hand`)
      }
    })
  }

  /** The current or last rollout of a service, or GW_NO_ROLLOUT. */
  get (service: string): RolloutView {
    this.#service(service)
    const s = this.#states.get(service)
    if (s === undefined) throw new GatewayError('GW_NO_ROLLOUT', `service ${service} has had no rollout`)
    return view(s)
  }

  /** The raw state (for a backend that stores it), or undefined. */
  state (service: string): RolloutState | undefined {
    return this.#states.get(service)
  }

  /**
   * Starts a rollout: `body` is `{"to": deployment}` plus any override of
   * the service's rollout settings (`analysis` merged key by key). Weights
   * go to the first step at once.
   */
  start (serviceName: string, body: unknown, by: string): Promise<RolloutView> {
    const service = this.#service(serviceName)
    return this.#serial(serviceName, async () => {
      const current = this.#states.get(serviceName)
      if (current !== undefined && ACTIVE.has(current.status)) throw new GatewayError('GW_CONFLICT', `rollout ${current.id} of ${serviceName} is already ${current.status}`)
      const { to, settings } = parseStart(service, body)
      const from = baselineOf(service)
      if (to === from) throw new GatewayError('GW_BAD_REQUEST', `"${to}" is the baseline of ${serviceName} (the deployment with the highest weight); name the candidate`)
      const now = Date.now()
      const state: RolloutState = {
        rev: (current?.rev ?? 0) + 1,
        id: randomUUID(),
        service: serviceName,
        from,
        to,
        status: 'running',
        step: 0,
        weight: 0,
        ...settings,
        startedAt: new Date(now).toISOString(),
        updatedAt: new Date(now).toISOString(),
        driver: this.#backend.self,
        reason: null,
        failures: 0,
        analyses: [],
        stepStartedMs: now,
        stepStart: {}
      }
      this.#activate(service, state)
      try {
        // The candidate's weight is what was stored: set it only once stored.
        state.weight = state.steps[0]!
        state.stepStart = await this.#backend.counts(serviceName, state.id)
        await this.#backend.save(state, current?.rev ?? 0)
      } catch (err) {
        service.setRolloutTap(null)
        throw err
      }
      this.#states.set(serviceName, state)
      this.#event(state, 'start', `rollout ${state.id} of ${serviceName}: ${from} -> ${to} in steps ${state.steps.join(', ')} every ${state.stepIntervalMs} ms (by ${by})`)
      try {
        await this.#applyStep(state)
      } catch (err) {
        // The weights could not move (the store went down): no rollout is left running.
        this.#clearTimer(serviceName)
        await this.#commit(state, (d) => {
          d.status = 'aborted'
          d.weight = 0
          d.reason = `the first step's weights could not be applied: ${err instanceof Error ? err.message : String(err)}`
        }).catch(() => {})
        service.setRolloutTap(null)
        throw err
      }
      return view(this.#states.get(serviceName)!)
    })
  }

  pause (serviceName: string): Promise<RolloutView> {
    return this.#action(serviceName, ['running'], async (s) => {
      this.#clearTimer(serviceName)
      const next = await this.#commit(s, (d) => { d.status = 'paused' })
      this.#event(next, 'pause', `rollout ${s.id} of ${s.service} paused at step ${s.step + 1} (${s.to} at ${s.weight})`)
    })
  }

  resume (serviceName: string): Promise<RolloutView> {
    return this.#action(serviceName, ['paused'], async (s) => {
      // A fresh window: what happened while paused is not this step's evidence.
      const stepStart = await this.#backend.counts(s.service, s.id)
      const next = await this.#commit(s, (d) => {
        d.status = 'running'
        d.stepStart = stepStart
        d.stepStartedMs = Date.now()
      })
      this.#event(next, 'resume', `rollout ${s.id} of ${s.service} resumed at step ${s.step + 1} (${s.to} at ${s.weight})`)
      this.#schedule(next, next.stepIntervalMs)
    })
  }

  promote (serviceName: string, by: string): Promise<RolloutView> {
    return this.#action(serviceName, ['running', 'paused'], async (s) => {
      await this.#end(s, 'promoted', `promoted by ${by}`)
    })
  }

  abort (serviceName: string, by: string): Promise<RolloutView> {
    return this.#action(serviceName, ['running', 'paused'], async (s) => {
      await this.#end(s, 'aborted', `aborted by ${by}`)
    })
  }

  /**
   * Takes in the stored rollouts (a fleet's backend calls this at every
   * heartbeat): a replica learns of a rollout started elsewhere (its guard
   * and its window follow), and the driver — a new one after the old died —
   * continues a running rollout's timers from its stored step start.
   */
  async sync (stored: readonly RolloutState[]): Promise<void> {
    for (const state of stored) {
      const service = this.#registry.get(state.service)
      if (service === undefined) continue
      await this.#serial(state.service, async () => {
        let s = this.#states.get(state.service)
        if (s === undefined || s.id !== state.id || s.rev < state.rev) {
          if (s?.id !== state.id || !ACTIVE.has(state.status)) this.#clearTimer(state.service)
          s = state
          this.#states.set(state.service, s)
        }
        if (!ACTIVE.has(s.status)) {
          this.#clearTimer(s.service)
          if (service.rolloutTap !== null) service.setRolloutTap(null)
          return
        }
        const tap = service.rolloutTap
        if (tap === null || tap.candidate !== service.groups.get(s.to)) this.#activate(service, s)
        if (!this.#backend.driving) {
          this.#clearTimer(s.service)
          return
        }
        if (s.driver !== this.#backend.self) {
          const prev = s.driver
          s = await this.#commit(s, () => {})
          this.#event(s, 'resume', `rollout ${s.id} of ${s.service}: driven by ${this.#backend.self} now (was ${prev}), at step ${s.step + 1} (${s.to} at ${s.weight})`)
        }
        if (s.status === 'running' && !this.#timers.has(s.service)) {
          this.#schedule(s, Math.max(0, s.stepStartedMs + s.stepIntervalMs - Date.now()))
        }
      }).catch((err: unknown) => {
        this.#event(state, 'error', `rollout ${state.id} of ${state.service}: ${err instanceof Error ? err.message : String(err)}`)
      })
    }
  }

  /** This process stopped driving (its lease was lost): its timers stop; the next driver continues. */
  halt (): void {
    for (const name of [...this.#timers.keys()]) this.#clearTimer(name)
  }

  /** Stops every timer (the rollouts stay where they are; a restarted driver continues them). */
  close (): void {
    this.#closed = true
    for (const name of [...this.#timers.keys()]) this.#clearTimer(name)
    this.#control.setGuard(null)
  }

  // --- transitions ---

  async #action (serviceName: string, allowed: RolloutStatus[], fn: (s: RolloutState) => Promise<void>): Promise<RolloutView> {
    this.#service(serviceName)
    return this.#serial(serviceName, async () => {
      const s = this.#states.get(serviceName)
      if (s === undefined) throw new GatewayError('GW_NO_ROLLOUT', `service ${serviceName} has had no rollout`)
      if (!allowed.includes(s.status)) throw new GatewayError('GW_CONFLICT', `rollout ${s.id} of ${serviceName} is ${s.status}; this needs it ${allowed.join(' or ')}`)
      await fn(s)
      return view(this.#states.get(serviceName)!)
    })
  }

  /** Stores the next step (a fresh window), then moves the weights to it. */
  async #enterStep (s: RolloutState, step: number): Promise<void> {
    const stepStart = await this.#backend.counts(s.service, s.id)
    const next = await this.#commit(s, (d) => {
      d.step = step
      d.weight = d.steps[step]!
      d.stepStart = stepStart
      d.stepStartedMs = Date.now()
    })
    await this.#applyStep(next)
  }

  /** Weights to the stored step, then its timer. */
  async #applyStep (s: RolloutState): Promise<void> {
    await this.#setWeights(s, s.weight, `rollout ${s.id} step ${s.step + 1}/${s.steps.length}: ${s.to} at ${s.weight}`)
    this.#event(s, 'step', `rollout ${s.id} of ${s.service}: step ${s.step + 1}/${s.steps.length}, ${s.to} at ${s.weight}, ${s.from} at ${100 - s.weight}`)
    this.#schedule(s, s.stepIntervalMs)
  }

  /** The end of a step's interval (or a wait for more requests): judge it. */
  async #tick (s: RolloutState): Promise<void> {
    if (s.status !== 'running' || this.#closed || !this.#backend.driving) return
    // The stored step is the truth: weights that did not follow it (a change
    // that failed, a driver that died between the two) follow it now.
    const service = this.#service(s.service)
    if ((service.traffic[s.to] ?? 0) !== s.weight) await this.#setWeights(s, s.weight, `rollout ${s.id} step ${s.step + 1}/${s.steps.length}: ${s.to} at ${s.weight}`)
    const now = await this.#backend.counts(s.service, s.id)
    const cand = windowOf(now, s.stepStart, s.to)
    const base = windowOf(now, s.stepStart, s.from)
    const a = s.analysis
    const elapsed = Date.now() - s.stepStartedMs
    if (cand.requests < a.minRequests) {
      const waited = Math.floor(elapsed / s.stepIntervalMs) - 1
      if (waited < MAX_WAIT_INTERVALS) {
        this.#event(s, 'wait', `rollout ${s.id} of ${s.service}: step ${s.step + 1} has ${cand.requests} candidate requests of ${a.minRequests} needed; waiting (at most ${MAX_WAIT_INTERVALS} more intervals)`)
        // Re-checked every quarter interval: the analysis runs as soon as there are enough.
        this.#schedule(s, Math.max(1, Math.floor(s.stepIntervalMs / 4)))
        return
      }
    }
    const analysis = judge(s, cand, base)
    const failures = s.failures + (analysis.passed ? 0 : 1)
    const push = (d: RolloutState): void => {
      d.analyses.push(analysis)
      if (d.analyses.length > MAX_ANALYSES) d.analyses.splice(0, d.analyses.length - MAX_ANALYSES)
      d.failures = failures
    }
    this.#event(s, 'analysis', `rollout ${s.id} of ${s.service}: step ${s.step + 1} analysis ${analysis.passed ? 'passed' : 'failed'}: ${analysis.reason}`, { analysis })
    if (!analysis.passed && failures >= s.failureLimit) {
      await this.#end(s, 'rolled_back', analysis.reason, push)
      return
    }
    if (!analysis.passed) {
      this.#event(s, 'decision', `rollout ${s.id} of ${s.service}: ${failures} failed analyses of ${s.failureLimit} allowed; step ${s.step + 1} is judged again`, { reason: analysis.reason })
      const next = await this.#commit(s, (d) => {
        push(d)
        d.stepStart = now
        d.stepStartedMs = Date.now()
      })
      this.#schedule(next, next.stepIntervalMs)
      return
    }
    if (s.step === s.steps.length - 1) {
      await this.#end(s, 'promoted', `every step passed; last: ${analysis.reason}`, push)
      return
    }
    this.#event(s, 'decision', `rollout ${s.id} of ${s.service}: step ${s.step + 1} passed; next ${s.to} at ${s.steps[s.step + 1]}`)
    const next = await this.#commit(s, push)
    await this.#enterStep(next, s.step + 1)
  }

  /** Weights first (the baseline back, or the candidate at 100), then the stored end. */
  async #end (s: RolloutState, status: RolloutResult, reason: string, also?: (d: RolloutState) => void): Promise<void> {
    this.#clearTimer(s.service)
    const weight = status === 'promoted' ? 100 : 0
    const label = status === 'rolled_back' ? `rolled back: ${reason}` : status === 'aborted' ? reason : `promoted: ${reason}`
    await this.#setWeights(s, weight, `rollout ${s.id} ${label}`)
    const next = await this.#commit(s, (d) => {
      also?.(d)
      d.weight = weight
      d.status = status
      d.reason = reason
    })
    this.#registry.get(s.service)?.setRolloutTap(null)
    this.#onEnd?.(s.service, status)
    this.#event(next, 'decision', `rollout ${s.id} of ${s.service} ${status === 'rolled_back' ? 'rolled back' : status}: ${reason}`, { reason })
  }

  /** Stores the next revision of a rollout (GW_CONFLICT when it changed elsewhere); the stored copy becomes current. */
  async #commit (s: RolloutState, change: (draft: RolloutState) => void): Promise<RolloutState> {
    const next = structuredClone(s)
    change(next)
    next.rev = s.rev + 1
    next.updatedAt = new Date().toISOString()
    next.driver = this.#backend.driving ? this.#backend.self : s.driver
    await this.#backend.save(next, s.rev)
    this.#states.set(next.service, next)
    return next
  }

  async #setWeights (s: RolloutState, weight: number, reason: string): Promise<void> {
    const service = this.#service(s.service)
    const weights: Record<string, number> = {}
    for (const dep of service.groups.keys()) weights[dep] = 0
    weights[s.from] = 100 - weight
    weights[s.to] = weight
    await this.#control.changeTraffic({ service: s.service, weights, source: 'rollout', by: `rollout ${s.id}`, reason })
  }

  #schedule (s: RolloutState, ms: number): void {
    this.#clearTimer(s.service)
    if (this.#closed || !this.#backend.driving) return
    const id = s.id
    const timer = setTimeout(() => {
      this.#timers.delete(s.service)
      void this.#serial(s.service, async () => {
        let current = this.#states.get(s.service)
        if (current === undefined || current.id !== id) return
        // Another replica may have changed it (paused, promoted, aborted) since this one last read it.
        const stored = await this.#backend.load?.(s.service)
        if (stored !== undefined && stored !== null && (stored.id !== current.id || stored.rev > current.rev)) {
          this.#states.set(s.service, stored)
          if (stored.id !== id || !ACTIVE.has(stored.status)) return
          current = stored
        }
        await this.#tick(current)
      }).catch((err: unknown) => {
        // The store is down, say: nothing moved; try again shortly.
        this.#event(s, 'error', `rollout ${s.id} of ${s.service}: ${err instanceof Error ? err.message : String(err)}; retrying`)
        const current = this.#states.get(s.service)
        if (current !== undefined && current.id === id && current.status === 'running') this.#schedule(current, Math.max(10, Math.floor(s.stepIntervalMs / 4)))
      })
    }, ms)
    timer.unref?.()
    this.#timers.set(s.service, timer)
  }

  #clearTimer (service: string): void {
    const t = this.#timers.get(service)
    if (t !== undefined) clearTimeout(t)
    this.#timers.delete(service)
  }

  #activate (service: Service, s: RolloutState): void {
    service.setRolloutTap({
      window: new ServiceWindow(service.groups.keys()),
      baseline: service.groups.get(s.from)!,
      candidate: service.groups.get(s.to)!,
      shield: s.shield
    })
  }

  #serial<T> (service: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#queues.get(service) ?? Promise.resolve()
    const next = prev.then(fn, fn)
    const settled = next.then(() => {}, () => {})
    this.#queues.set(service, settled)
    return next
  }

  #service (name: string): Service {
    const s = this.#registry.get(name)
    if (s === undefined) throw new GatewayError('GW_NOT_FOUND', `unknown service "${name}"`)
    return s
  }

  #event (s: RolloutState, action: RolloutEvent['action'], message: string, extra: { analysis?: Analysis, reason?: string } = {}): void {
    this.emit('rollout', { rollout: s.id, service: s.service, action, status: s.status, step: s.step, weight: s.weight, message, ...extra })
  }
}

/** The deployment with the highest weight (config order on ties). */
export function baselineOf (service: Service): string {
  let best = ''
  let w = -1
  for (const [dep, weight] of Object.entries(service.traffic)) {
    if (weight > w) {
      best = dep
      w = weight
    }
  }
  return best
}

type Settings = Pick<RolloutState, 'steps' | 'stepIntervalMs' | 'analysis' | 'failureLimit' | 'shield'>

/** Validates a start request: `to` and overrides merged over the service's settings. */
export function parseStart (service: Service, body: unknown): { to: string, settings: Settings } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new GatewayError('GW_BAD_REQUEST', 'body must be a JSON object, e.g. {"to": "green"}')
  const { to, ...overrides } = body as Record<string, unknown>
  if (typeof to !== 'string' || !service.groups.has(to)) {
    throw new GatewayError('GW_BAD_REQUEST', `"to" must name a deployment of ${service.name} (${[...service.groups.keys()].join(', ')}); got ${JSON.stringify(to) ?? 'nothing'}`)
  }
  const base = service.config.rollout ?? ROLLOUT_DEFAULTS
  const analysis = overrides.analysis
  const merged: Record<string, unknown> = {
    ...structuredClone(base),
    ...overrides,
    analysis: typeof analysis === 'object' && analysis !== null && !Array.isArray(analysis) ? { ...base.analysis, ...analysis } : analysis ?? { ...base.analysis }
  }
  const problems = [...Value.Errors(RolloutSchema, merged)].map((e) => `${e.path.slice(1).replace(/\//g, '.') || '(body)'}: ${e.message}`)
  if (problems.length === 0) problems.push(...rolloutIssues(merged as RolloutConfig, '').map((i) => `${i.path.replace(/^\./, '')}: ${i.message}`))
  if (problems.length > 0) throw new GatewayError('GW_BAD_REQUEST', problems.join('; '))
  const r = merged as RolloutConfig
  return { to, settings: { steps: [...r.steps], stepIntervalMs: r.stepIntervalMs, analysis: { ...r.analysis }, failureLimit: r.failureLimit, shield: r.shield } }
}

/** One deployment's outcomes in the step's window, summed over every process. */
function windowOf (now: Record<string, Record<string, Counts>>, start: Record<string, Record<string, Counts>>, dep: string): Counts {
  let sum = emptyCounts()
  for (const [proc, deps] of Object.entries(now)) {
    const c = deps[dep]
    if (c === undefined) continue
    sum = addCounts(sum, subCounts(c, start[proc]?.[dep] ?? emptyCounts()))
  }
  return sum
}

function stats (c: Counts): SideStats {
  return { requests: c.requests, failures: c.failures, errorRate: c.requests === 0 ? null : round(c.failures / c.requests), p99Ms: quantileMs(c, 0.99) }
}

/** The checks, in order; the first failing one is the reason. */
function judge (s: RolloutState, cand: Counts, base: Counts): Analysis {
  const a = s.analysis
  const candidate = stats(cand)
  const baseline = stats(base)
  const out = (passed: boolean, reason: string): Analysis => ({ step: s.step, at: new Date().toISOString(), passed, reason, candidate, baseline })
  if (cand.requests < a.minRequests) return out(false, `candidate requests ${cand.requests} < ${a.minRequests} (minRequests) after ${MAX_WAIT_INTERVALS} extra intervals`)
  const rate = candidate.errorRate ?? 0
  if (rate > a.maxErrorRate) return out(false, `error rate ${fmt(rate)} > ${a.maxErrorRate}`)
  const parts = [`error rate ${fmt(rate)} <= ${a.maxErrorRate}`]
  // The ratio is judged only when the baseline answered enough requests in
  // this window for a p99 (at weight 100 it has none, or the few that were
  // in flight when the step began).
  if (base.requests >= a.minRequests && candidate.p99Ms !== null && baseline.p99Ms !== null) {
    const ratio = Math.max(candidate.p99Ms, P99_FLOOR_MS) / Math.max(baseline.p99Ms, P99_FLOOR_MS)
    const detail = `(candidate ${fmt(candidate.p99Ms)} ms, baseline ${fmt(baseline.p99Ms)} ms)`
    if (ratio > a.maxP99Ratio) return out(false, `p99 ratio ${fmt(ratio)} > ${a.maxP99Ratio} ${detail}`)
    parts.push(`p99 ratio ${fmt(ratio)} <= ${a.maxP99Ratio} ${detail}`)
  } else {
    parts.push(`p99 ratio not judged (baseline had ${base.requests} requests, fewer than minRequests)`)
  }
  return out(true, parts.join('; '))
}

const round = (x: number): number => Math.round(x * 10000) / 10000
const fmt = (x: number): string => String(Number(x.toPrecision(2)))

function view (s: RolloutState): RolloutView {
  return {
    id: s.id,
    service: s.service,
    from: s.from,
    to: s.to,
    status: s.status,
    step: s.step,
    weight: s.weight,
    steps: [...s.steps],
    stepIntervalMs: s.stepIntervalMs,
    analysis: { ...s.analysis },
    failureLimit: s.failureLimit,
    shield: s.shield,
    startedAt: s.startedAt,
    updatedAt: s.updatedAt,
    driver: s.driver,
    reason: s.reason,
    failures: s.failures,
    analyses: s.analyses.map((a) => ({ ...a }))
  }
}
