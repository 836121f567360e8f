/**
 * Blue/green test kit: upstreams that answer their colour, a service block
 * with deployments and fast health checks, a client that asks the gateway
 * which colour served it, the admin traffic call, and a binomial tolerance
 * that cannot flake.
 */
import { request, Agent } from 'undici'
import { startUpstream, json, type TestUpstream } from './upstream.js'

export const TOKEN = 'cutover-test-token'

/** An upstream answering `{"colour": name}`; `name` is e.g. `blue` or `green-secondary`. */
export function colourUpstream (name: string, delayMs = 0): Promise<TestUpstream> {
  return startUpstream(name, (_req, res) => {
    if (delayMs === 0) json(res, 200, { colour: name })
    else setTimeout(json, delayMs, res, 200, { colour: name })
  })
}

/**
 * A `review` service block with the given deployments and 50 ms health
 * checks. Timeouts are the longest the config allows: on a busy machine a
 * slow probe or answer must not pass for a dead origin.
 */
export function cutoverService (deployments: Record<string, { primary: string, secondary?: string }>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    timeoutMs: 2000,
    healthCheck: { intervalMs: 50, timeoutMs: 500, unhealthyThreshold: 2, healthyThreshold: 2 },
    circuitBreaker: { volumeThreshold: 5, resetTimeoutMs: 60000 },
    deployments,
    ...extra
  }
}

/** A gateway config with `review` behind the proxy prefix `/reviews` and an admin token. */
export function cutoverConfig (review: Record<string, unknown>): Record<string, unknown> {
  return {
    admin: { token: TOKEN },
    services: { review },
    routes: [{ type: 'proxy', prefix: '/reviews', service: 'review' }]
  }
}

/** One client pool for the tests' traffic: keep-alive, enough sockets for the load loops. */
export const client = new Agent({ connections: 32, pipelining: 1 })

export interface ColourAnswer {
  status: number
  colour: string | null
}

/** GET /reviews/x through the gateway; the colour of the upstream that answered. */
export async function colourOf (gatewayUrl: string, headers: Record<string, string> = {}): Promise<ColourAnswer> {
  const res = await request(`${gatewayUrl}/reviews/1`, { headers, dispatcher: client })
  if (res.statusCode !== 200) {
    await res.body.dump()
    return { status: res.statusCode, colour: null }
  }
  const body = await res.body.json() as { colour: string }
  return { status: res.statusCode, colour: body.colour }
}

/** PUT /admin/services/:name/traffic with the test token (or the given auth header). */
export async function putTraffic (adminUrl: string, body: unknown, opts: { service?: string, authorization?: string | null, raw?: string, contentType?: string } = {}): Promise<{ status: number, body: Record<string, unknown> }> {
  const headers: Record<string, string> = { 'content-type': opts.contentType ?? 'application/json' }
  const auth = opts.authorization === undefined ? `Bearer ${TOKEN}` : opts.authorization
  if (auth !== null) headers.authorization = auth
  const res = await request(`${adminUrl}/admin/services/${opts.service ?? 'review'}/traffic`, {
    method: 'PUT',
    headers,
    body: opts.raw ?? JSON.stringify(body),
    dispatcher: client
  })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

/** GET an admin-listener path with the test token; parsed JSON. */
export async function adminGet (adminUrl: string, path: string): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await request(`${adminUrl}${path}`, { headers: { authorization: `Bearer ${TOKEN}` }, dispatcher: client })
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

/** GET /metrics; the text. */
export async function scrape (adminUrl: string): Promise<string> {
  const res = await request(`${adminUrl}/metrics`, { dispatcher: client })
  return res.body.text()
}

/** The value of one sample in Prometheus text, e.g. `gateway_traffic_weight{service="review",deployment="green"}`. */
export function sample (text: string, name: string, labels: Record<string, string>): number | null {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue
    const close = line.indexOf('}')
    const got = Object.fromEntries([...line.slice(name.length + 1, close).matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]))
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(line.slice(close + 1).trim())
  }
  return null
}

/**
 * Runs `task(i)` for i = 0..n-1 with at most `concurrency` in flight; results in order.
 */
export async function pool<T> (n: number, concurrency: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(n)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++
      out[i] = await task(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker))
  return out
}

/**
 * The exact two-sided acceptance range [lo, hi] for the count of successes in
 * `n` Bernoulli(p) trials such that a correct implementation falls outside
 * it with probability at most `delta` (default 1e-9: a false failure about
 * once in a billion runs). Computed from the binomial pmf, no approximation.
 */
export function binomialRange (n: number, p: number, delta = 1e-9): [number, number] {
  if (p <= 0) return [0, 0]
  if (p >= 1) return [n, n]
  // pmf in log space: log f(k+1) = log f(k) + log((n-k)/(k+1)) + log(p/(1-p))
  const logf = new Float64Array(n + 1)
  logf[0] = n * Math.log1p(-p)
  const r = Math.log(p / (1 - p))
  for (let k = 0; k < n; k++) logf[k + 1] = logf[k]! + Math.log((n - k) / (k + 1)) + r
  const f = (k: number): number => Math.exp(logf[k]!)
  let lo = 0
  let tail = 0
  while (lo < n && tail + f(lo) <= delta / 2) tail += f(lo++)
  let hi = n
  tail = 0
  while (hi > 0 && tail + f(hi) <= delta / 2) tail += f(hi--)
  return [lo, hi]
}
