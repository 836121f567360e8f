/**
 * Whether a config has VPC Lattice origins. Kept apart from the resolver so
 * that a gateway without Lattice origins never loads the AWS SDK (measured:
 * about 5 MB of a running gateway's resident memory and 55-60 ms of its
 * start-up).
 */
import type { GatewayConfig } from '../config/schema.js'

/** True when some origin of the config is a Lattice reference. */
export function usesLattice (config: GatewayConfig): boolean {
  for (const svc of Object.values(config.services)) {
    for (const d of Object.values(svc.deployments)) {
      if (typeof d.primary !== 'string' || (d.secondary !== undefined && typeof d.secondary !== 'string')) return true
    }
  }
  return false
}
