/**
 * Rollouts across a cluster's workers (`server.workers > 1`, no `fleet`):
 * the admin worker drives; every stored change of a rollout's state is
 * carried to the other workers (through the primary, like an admin weight
 * change) so their windows, shields and guards follow; and an analysis
 * asks every worker for its window counts and sums them.
 */
import type { Registry } from '../upstream/registry.js'
import type { Counts } from './window.js'
import { ownCounts, type RolloutBackend, type RolloutState } from './rollout.js'

export interface WorkerLinks {
  /** This worker drives (it serves the admin API). */
  driving: boolean
  /** Carries a rollout's state to every other worker; resolves once they took it (or left). */
  broadcast(state: RolloutState): Promise<void>
  /** The other workers' cumulative window counts of a rollout, by worker key then deployment. */
  counts(service: string, rollout: string): Promise<Record<string, Record<string, Counts>>>
}

export class WorkerRolloutBackend implements RolloutBackend {
  readonly self: string
  readonly driving: boolean
  readonly #registry: Registry
  readonly #links: WorkerLinks

  constructor (registry: Registry, self: string, links: WorkerLinks) {
    this.#registry = registry
    this.self = self
    this.driving = links.driving
    this.#links = links
  }

  async counts (service: string, rollout: string): Promise<Record<string, Record<string, Counts>>> {
    const others = await this.#links.counts(service, rollout)
    return { ...others, ...ownCounts(this.#registry, service, this.self) }
  }

  async save (state: RolloutState): Promise<void> {
    await this.#links.broadcast(state)
  }
}
