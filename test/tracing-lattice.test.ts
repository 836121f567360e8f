/**
 * Tracing with `auth: iam` Lattice origins: the traceparent is set on the
 * attempt's headers before dispatch, and the SigV4 interceptor signs at
 * dispatch time, so every attempt — the first and the retry to the
 * secondary — reaches its upstream with a signature that verifies and the
 * parent id of its own CLIENT span.
 */
import t from 'tap'
import { request } from 'undici'
import { startUpstream, json, type TestUpstream } from './helpers/upstream.js'
import { startGateway } from './helpers/gateway.js'
import { startFakeLattice, verifySigV4, type Credentials } from './helpers/fake-lattice.js'
import { startOtlpReceiver } from './helpers/otlp-receiver.js'

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'
const REGION = 'us-east-1'
const CREDS: Credentials = { accessKeyId: 'AKIDTRACETEST', secretAccessKey: 'trace/test/secret' }
const PING = '/ping'

async function upstream (name: string, status: number): Promise<TestUpstream> {
  return startUpstream(name, (req, res) => json(res, req.url === PING ? 200 : status, { name }))
}

t.test('a signed Lattice attempt carries its CLIENT span as parent and its signature still verifies, on the retry too', async (t) => {
  const rx = await startOtlpReceiver()
  const fake = await startFakeLattice()
  const primary = await upstream('primary', 503)
  const secondary = await upstream('secondary', 200)
  const svcA = fake.add({ name: 'api-a', domainName: '127.0.0.1', authType: 'AWS_IAM' })
  const svcB = fake.add({ name: 'api-b', domainName: '127.0.0.1', authType: 'AWS_IAM' })
  const lattice = (id: string, port: number): Record<string, unknown> => ({ lattice: { service: id, port, protocol: 'http', auth: 'iam' } })
  const g = await startGateway({
    tracing: { otlpEndpoint: rx.url, batchDelayMs: 20 },
    lattice: { region: REGION, endpoint: fake.url, refreshIntervalMs: 200 },
    services: {
      api: {
        timeoutMs: 1000,
        healthCheck: { path: PING, intervalMs: 50, timeoutMs: 40, unhealthyThreshold: 2, healthyThreshold: 2 },
        circuitBreaker: { volumeThreshold: 20, resetTimeoutMs: 60000 },
        origins: { primary: lattice(svcA.id, primary.port), secondary: lattice(svcB.id, secondary.port) }
      }
    },
    routes: [{ type: 'proxy', prefix: '/api', service: 'api', rewritePrefix: '' }]
  }, { lattice: { credentials: CREDS } })
  t.teardown(async () => { await g.close(); await fake.close(); await primary.close(); await secondary.close(); await rx.close() })
  // Both resolved and healthy.
  const deadline = Date.now() + 10000
  for (;;) {
    const res = await request(`${g.adminUrl}/readyz`)
    await res.body.dump()
    const both = g.gw.registry.origins.every(({ origin }) => origin.healthy && origin.url !== null)
    if (res.statusCode === 200 && both) break
    if (Date.now() > deadline) throw new Error('the Lattice origins never became ready')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }

  const res = await request(`${g.url}/api/items/7?x=1`)
  await res.body.dump()
  t.equal(res.statusCode, 200, 'the primary answered 503, the secondary 200')
  const first = primary.requests.filter((r) => r.url !== PING).at(-1)!
  const retry = secondary.requests.filter((r) => r.url !== PING).at(-1)!
  t.ok(first && retry, 'both origins were called')
  const tp = (r: typeof first): string[] => String(r.headers.traceparent).split('-')
  const [, traceId, firstParent] = tp(first)
  const [, retryTrace, retryParent] = tp(retry)
  t.equal(retryTrace, traceId, 'one trace')
  for (const [what, r] of [['first attempt', first], ['retry', retry]] as const) {
    const check = await verifySigV4(r, CREDS, REGION)
    t.equal(check.problem, null, `${what}: the signature verifies`)
    t.ok(check.valid)
  }
  const spans = await rx.waitFor((s) => s.filter((x) => x.traceId === traceId && x.kind === 'CLIENT').length === 2)
  const clients = spans.filter((s) => s.traceId === traceId && s.kind === 'CLIENT')
  const firstSpan = clients.find((s) => s.attributes['gateway.attempt'] === 'first')
  const retrySpan = clients.find((s) => s.attributes['gateway.attempt'] === 'retry')
  t.equal(firstParent, firstSpan?.spanId, 'the primary received the first attempt\'s CLIENT span id')
  t.equal(retryParent, retrySpan?.spanId, 'the secondary received the retry\'s CLIENT span id')
  t.equal(firstSpan?.attributes['http.response.status_code'], 503)
  t.equal(firstSpan?.attributes['server.address'], '127.0.0.1', 'the resolved Lattice address')
  t.equal(retrySpan?.attributes['gateway.origin'], 'secondary')
})
