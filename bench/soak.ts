/**
 * Soak scenario: mixed load on the compiled gateway for a bounded time,
 * with failovers and blue/green cutovers happening all along, to show the
 * gateway's memory and event-loop delay hold steady (no growth beyond
 * noise) rather than to measure throughput.
 *
 *   npm run bench -- soak [--duration S (default 60)] [--connections C] [--cycle S (default 10)] [--latency MS (default 5)]
 *
 * Traffic, all at once (closed loop, `--connections` split over three):
 * - a proxy route to `product` (primary + secondary origins);
 * - an aggregate route fanning out to `product`, `review` and `inventory`;
 * - a proxy route to `review`, a blue/green service.
 * Every `--cycle` seconds the product primary starts failing (503, health
 * checks down: stateless retries, then the stateful switch) and recovers
 * half a cycle later (failback), and review's weights flip blue <-> green
 * through the admin API.
 *
 * Every second it samples the gateway's RSS (/proc) and, from the admin
 * listener's /metrics, V8 heap in use and the event-loop delay over the
 * last second (prom-client's nodejs_eventloop_lag_* gauges, reset at each
 * scrape). The table compares the first and the last window
 * (min(10 s, duration / 4) each) and states the change.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { PRODUCT_DETAILS_ROUTE } from '../src/demo/config.js'
import {
  fmt, load, parseBenchArgs, pinning, printTable, readRss, startGateway, startUpstream,
  type ChildHandle, type LoadResult
} from './lib.js'

const TOKEN = 'bench-soak-token'

interface Sample {
  /** Seconds since the load started. */
  t: number
  rssMB: number
  heapMB: number
  lagMeanMs: number
  lagP99Ms: number
  /** gateway_requests_total, all labels. */
  requests: number
}

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, { cycle: { type: 'string' }, latency: { type: 'string' } })
  const duration = values.duration === undefined ? 60 : common.duration
  const cycleS = values.cycle === undefined ? 10 : Number(values.cycle)
  const latencyMs = values.latency === undefined ? 5 : Number(values.latency)
  if (!Number.isFinite(cycleS) || cycleS < 1) throw new Error(`--cycle must be a number of seconds >= 1 (got ${String(values.cycle)})`)
  if (!Number.isInteger(latencyMs) || latencyMs < 0) throw new Error(`--latency must be an integer >= 0 (got ${String(values.latency)})`)

  const started: ChildHandle[] = []
  try {
    const up = async (name: string): Promise<Awaited<ReturnType<typeof startUpstream>>> => {
      const u = await startUpstream({ name, latencyMs })
      started.push(u)
      return u
    }
    const productP = await up('product-primary')
    const productS = await up('product-secondary')
    const blue = await up('review-blue')
    const green = await up('review-green')
    const inventory = await up('inventory')
    const fast = { intervalMs: 500, timeoutMs: 400 }
    const gw = await startGateway({
      server: { logLevel: 'info' },
      admin: { token: TOKEN },
      services: {
        product: { healthCheck: fast, origins: { primary: productP.url, secondary: productS.url } },
        review: { healthCheck: fast, deployments: { blue: { primary: blue.url }, green: { primary: green.url } }, traffic: { blue: 100, green: 0 } },
        inventory: { healthCheck: fast, origins: { primary: inventory.url } }
      },
      routes: [
        { type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' },
        { type: 'proxy', prefix: '/api/reviews', service: 'review', rewritePrefix: '/reviews' },
        PRODUCT_DETAILS_ROUTE
      ]
    })
    started.push(gw)

    const samples: Sample[] = []
    const t0 = Date.now()
    const sampleOnce = async (): Promise<void> => {
      const text = await (await request(`${gw.adminUrl}/metrics`)).body.text()
      const gauge = (name: string): number => Number(new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text)?.[1] ?? Number.NaN)
      let requests = 0
      for (const m of text.matchAll(/^gateway_requests_total\{[^}]*\} ([0-9.e+-]+)$/gm)) requests += Number(m[1])
      samples.push({
        t: (Date.now() - t0) / 1000,
        rssMB: (readRss(gw.pid) ?? Number.NaN) / 1048576,
        heapMB: gauge('nodejs_heap_size_used_bytes') / 1048576,
        lagMeanMs: gauge('nodejs_eventloop_lag_mean_seconds') * 1000,
        lagP99Ms: gauge('nodejs_eventloop_lag_p99_seconds') * 1000,
        requests
      })
    }

    // The operator side: failover and cutover, every cycle, until the load ends.
    let running = true
    const events = { failovers: 0, failbacks: 0, cutovers: 0, failedPuts: 0 }
    const operator = (async () => {
      let colour: 'blue' | 'green' = 'blue'
      while (running) {
        await sleep(cycleS * 500)
        if (!running) break
        await productP.control({ healthy: false, status: 503 })
        events.failovers++
        colour = colour === 'blue' ? 'green' : 'blue'
        const res = await request(`${gw.adminUrl}/admin/services/review/traffic`, {
          method: 'PUT',
          headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
          body: JSON.stringify(colour === 'blue' ? { blue: 100, green: 0 } : { blue: 0, green: 100 })
        })
        await res.body.dump()
        if (res.statusCode === 200) events.cutovers++
        else events.failedPuts++
        await sleep(cycleS * 500)
        await productP.control({ healthy: true, status: 200 })
        events.failbacks++
      }
    })()
    const sampler = (async () => {
      while (running) {
        await sampleOnce().catch(() => {})
        await sleep(1000)
      }
    })()

    const per = Math.max(1, Math.floor(common.connections / 3))
    process.stderr.write(`soak: ${duration} s, ${per} connections on each of 3 routes, failover + cutover every ${cycleS} s\n`)
    const [proxy, aggregate, blueGreen] = await Promise.all([
      load({ url: `${gw.url}/api/products/1`, duration, connections: per }),
      load({ url: `${gw.url}/products/1/details`, duration, connections: per }),
      load({ url: `${gw.url}/api/reviews/1`, duration, connections: per })
    ]) as [LoadResult, LoadResult, LoadResult]
    running = false
    await Promise.all([operator, sampler])
    await sampleOnce()

    const win = Math.min(10, duration / 4)
    const first = samples.filter((s) => s.t >= 1 && s.t <= 1 + win)
    const last = samples.filter((s) => s.t >= duration - win && s.t <= duration + 0.5)
    const mean = (xs: Sample[], f: (s: Sample) => number): number => {
      const v = xs.map(f).filter((x) => !Number.isNaN(x))
      return v.length === 0 ? Number.NaN : v.reduce((a, b) => a + b, 0) / v.length
    }
    const rate = (xs: Sample[]): number => xs.length < 2 ? Number.NaN : (xs[xs.length - 1]!.requests - xs[0]!.requests) / (xs[xs.length - 1]!.t - xs[0]!.t)
    const row = (name: string, xs: Sample[]): string[] => [
      name, fmt(xs.length), fmt(mean(xs, (s) => s.rssMB), 1), fmt(Math.max(...xs.map((s) => s.rssMB)), 1), fmt(mean(xs, (s) => s.heapMB), 1),
      fmt(mean(xs, (s) => s.lagMeanMs), 2), fmt(Math.max(...xs.map((s) => s.lagP99Ms)), 2), fmt(rate(xs), 0)
    ]
    const change = (f: (s: Sample) => number, digits: number): string => {
      const a = mean(first, f)
      const b = mean(last, f)
      return Number.isNaN(a) || Number.isNaN(b) ? '-' : `${b >= a ? '+' : ''}${fmt(b - a, digits)} (${a === 0 ? '-' : `${b >= a ? '+' : ''}${fmt(((b - a) / a) * 100, 1)}%`})`
    }
    printTable({
      title: `soak — ${duration} s of mixed load on the compiled gateway; failover + failback and a blue/green flip every ${cycleS} s`,
      columns: ['window', 'samples', 'RSS MB', 'RSS max MB', 'heap MB', 'loop lag mean ms', 'loop lag p99 max ms', 'gateway req/s'],
      rows: [
        row(`first ${fmt(win, 0)} s`, first),
        row(`last ${fmt(win, 0)} s`, last),
        ['change (last - first)', '', change((s) => s.rssMB, 1), '', change((s) => s.heapMB, 1), change((s) => s.lagMeanMs, 2), '', '']
      ],
      notes: [
        'RSS: VmRSS of the gateway process sampled every second; heap: nodejs_heap_size_used_bytes; loop lag: nodejs_eventloop_lag_{mean,p99}_seconds over each 1 s scrape (admin /metrics)',
        `events: ${events.failovers} failovers (product primary answering 503, health down), ${events.failbacks} recoveries, ${events.cutovers} cutovers${events.failedPuts > 0 ? `, ${events.failedPuts} failed admin PUTs` : ''}`,
        `upstreams answer 1 KB JSON after ${latencyMs} ms; health checks every 500 ms; gateway at info logging to a file`,
        pinning.note
      ]
    })
    const lr = (name: string, r: LoadResult): string[] => [name, fmt(r.requests), fmt(r.rps, 0), fmt(r.p50, 1), fmt(r.p99, 1), fmt(r.max, 0), fmt(r.errors), fmt(r.non2xx)]
    printTable({
      title: 'soak — the load itself',
      columns: ['route', 'requests', 'req/s', 'p50 ms', 'p99 ms', 'max ms', 'errors', 'non-2xx'],
      rows: [lr('proxy /api/products/1', proxy), lr('aggregate /products/1/details', aggregate), lr('blue/green /api/reviews/1', blueGreen)],
      notes: ['non-2xx and errors should stay at 0: failovers are retried on the secondary, cutovers change weights between requests']
    })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}
