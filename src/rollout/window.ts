/**
 * Per-deployment outcomes of one service while a rollout is active: how
 * many requests, how many failed (a 5xx answer or a transport failure,
 * after the deployment's own origin failover), and a latency histogram.
 *
 * The histogram has fixed log-linear buckets over microseconds (values
 * below 16 µs exact, then 8 linear sub-buckets per power of two: at most
 * 12.5 % relative error, 240 buckets, up to ~35 minutes), so memory is
 * bounded whatever the traffic and two histograms add up bucket by bucket.
 * That makes counts mergeable: a cluster's workers or a fleet's replicas
 * publish theirs and the rollout's driver sums them.
 *
 * Counts are cumulative since the window started; an analysis takes the
 * difference between two snapshots (the step's start and its end).
 */

const SUB_BITS = 3
const SUB = 1 << SUB_BITS
const LINEAR = 2 * SUB // values below this many µs get a bucket each
const MAX_EXP = 31
export const BUCKETS = LINEAR + (MAX_EXP - SUB_BITS) * SUB

/** The bucket of a latency in microseconds. */
export function bucketIndex (us: number): number {
  if (!(us > 0)) return 0
  const v = us >= 2 ** MAX_EXP ? 2 ** MAX_EXP - 1 : Math.floor(us)
  if (v < LINEAR) return v
  const exp = 31 - Math.clz32(v) // floor(log2 v), >= SUB_BITS + 1
  const sub = (v >>> (exp - SUB_BITS)) & (SUB - 1)
  return LINEAR + (exp - SUB_BITS - 1) * SUB + sub
}

/** The upper bound (µs, exclusive) of a bucket. */
export function bucketUpper (i: number): number {
  if (i < LINEAR) return i + 1
  const exp = Math.floor((i - LINEAR) / SUB) + SUB_BITS + 1
  const sub = (i - LINEAR) % SUB
  return (SUB + sub + 1) * 2 ** (exp - SUB_BITS)
}

/** One deployment's counts, in a form that crosses processes (JSON) and adds up. */
export interface Counts {
  requests: number
  failures: number
  /** Sparse histogram: bucket index -> count. */
  buckets: Record<string, number>
}

export const emptyCounts = (): Counts => ({ requests: 0, failures: 0, buckets: {} })

/** a + b, as a new value. */
export function addCounts (a: Counts, b: Counts): Counts {
  const buckets = { ...a.buckets }
  for (const [k, n] of Object.entries(b.buckets)) buckets[k] = (buckets[k] ?? 0) + n
  return { requests: a.requests + b.requests, failures: a.failures + b.failures, buckets }
}

/** later - earlier (never negative: a process that restarted counts from 0 again). */
export function subCounts (later: Counts, earlier: Counts): Counts {
  if (later.requests < earlier.requests) return later
  const buckets: Record<string, number> = {}
  for (const [k, n] of Object.entries(later.buckets)) {
    const d = n - (earlier.buckets[k] ?? 0)
    if (d > 0) buckets[k] = d
  }
  return { requests: later.requests - earlier.requests, failures: Math.max(0, later.failures - earlier.failures), buckets }
}

/** The q-quantile (0-1) in milliseconds, from the buckets; null without data. */
export function quantileMs (c: Counts, q: number): number | null {
  const entries = Object.entries(c.buckets).map(([k, n]) => [Number(k), n] as const).sort((x, y) => x[0] - y[0])
  let total = 0
  for (const [, n] of entries) total += n
  if (total === 0) return null
  const rank = Math.ceil(q * total)
  let seen = 0
  for (const [i, n] of entries) {
    seen += n
    // The bucket's upper bound: never under-reports a slow tail.
    if (seen >= rank) return bucketUpper(i) / 1000
  }
  return bucketUpper(entries[entries.length - 1]![0]) / 1000
}

/** Counts of one deployment as the request path records them: plain numbers, no allocation. */
export class DeploymentWindow {
  requests = 0
  failures = 0
  readonly #buckets = new Uint32Array(BUCKETS)

  /** Records one request's outcome; `ms` from the attempt's start to its answer's headers (or its failure). */
  record (ms: number, failed: boolean): void {
    this.requests++
    if (failed) this.failures++
    this.#buckets[bucketIndex(ms * 1000)]!++
  }

  counts (): Counts {
    const buckets: Record<string, number> = {}
    const b = this.#buckets
    for (let i = 0; i < b.length; i++) if (b[i] !== 0) buckets[i] = b[i]!
    return { requests: this.requests, failures: this.failures, buckets }
  }
}

/** Every deployment's window of one service. */
export class ServiceWindow {
  readonly deployments: ReadonlyMap<string, DeploymentWindow>

  constructor (deployments: Iterable<string>) {
    this.deployments = new Map([...deployments].map((d) => [d, new DeploymentWindow()]))
  }

  counts (): Record<string, Counts> {
    const out: Record<string, Counts> = {}
    for (const [d, w] of this.deployments) out[d] = w.counts()
    return out
  }
}
