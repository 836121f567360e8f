import t from 'tap'
import client from 'prom-client'
import { Metrics } from '../src/metrics.js'

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
// Bucket edges, values between them, and past the last bucket.
const VALUES = [0, 0.0005, 0.001, 0.0011, 0.003, 0.0099, 0.01, 0.02, 0.3, 0.5, 0.75, 2.5, 7, 10, 12, 99]

function lines (text: string, prefix: string): string[] {
  return text.split('\n').filter((l) => l.startsWith(prefix)).sort()
}

t.test('the duration histogram scrapes exactly what prom-client would for the same observations', async (t) => {
  const m = new Metrics()
  const ref = new client.Registry()
  const h = new client.Histogram({ name: 'gateway_request_duration_seconds', help: 'x', labelNames: ['route'], buckets: BUCKETS, registers: [ref] })
  const a = m.route('/api/a')
  const b = m.route('/api/b')
  for (const v of VALUES) { a.observe('GET', 200, v); h.labels('/api/a').observe(v) }
  for (const v of VALUES.slice(3, 9)) { b.observe('POST', 502, v); h.labels('/api/b').observe(v) }
  const got = lines(await m.registry.metrics(), 'gateway_request_duration_seconds')
  const want = lines(await ref.metrics(), 'gateway_request_duration_seconds')
  t.ok(want.length > 0, 'the reference histogram has lines')
  t.same(got, want)
  t.match(await m.registry.metrics(), /^# TYPE gateway_request_duration_seconds histogram$/m)
  const text = await m.registry.metrics()
  t.match(text, /^gateway_requests_total\{route="\/api\/a",method="GET",status="200"\} 16$/m)
  t.match(text, /^gateway_requests_total\{route="\/api\/b",method="POST",status="502"\} 6$/m)
  // Observations after a scrape add up; a route is bound once.
  a.observe('GET', 200, 0.002)
  t.equal(m.route('/api/a'), a)
  t.match(await m.registry.metrics(), /^gateway_request_duration_seconds_count\{route="\/api\/a"\} 17$/m)
  t.match(await m.registry.metrics(), /^gateway_requests_total\{route="\/api\/a",method="GET",status="200"\} 17$/m)
})

t.test('an unusual method is counted under its own label', async (t) => {
  const m = new Metrics()
  m.observeRequest('unmatched', 'PROPFIND', 405, 0.001)
  m.observeRequest('unmatched', 'PROPFIND', 405, 0.001)
  t.match(await m.registry.metrics(), /^gateway_requests_total\{route="unmatched",method="PROPFIND",status="405"\} 2$/m)
})

t.test('cluster workers: the histogram sums across workers like prom-client histograms', async (t) => {
  const w1 = new Metrics()
  const w2 = new Metrics()
  w1.route('/r').observe('GET', 200, 0.003)
  w2.route('/r').observe('GET', 200, 0.03)
  w2.route('/r').observe('GET', 200, 3)
  const merged = client.AggregatorRegistry.aggregate([await w1.registry.getMetricsAsJSON(), await w2.registry.getMetricsAsJSON()])
  const text = await merged.metrics()
  t.match(text, /^gateway_request_duration_seconds_count\{route="\/r"\} 3$/m)
  t.match(text, /^gateway_request_duration_seconds_bucket\{le="0\.005",route="\/r"\} 1$/m)
  t.match(text, /^gateway_request_duration_seconds_bucket\{le="0\.05",route="\/r"\} 2$/m)
  t.match(text, /^gateway_request_duration_seconds_bucket\{le="\+Inf",route="\/r"\} 3$/m)
})
