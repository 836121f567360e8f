/**
 * `auth: iam` Lattice origins: every attempt (traffic and health probes)
 * carries a SigV4 signature for `vpc-lattice-svcs` that the test upstream
 * recomputes with the same credentials; a retry to the secondary is signed
 * for the secondary's host; rotated credentials are used at once; https
 * origins verify certificates.
 */
import t from 'tap'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { startUpstream, json, type RecordedRequest, type TestUpstream } from './helpers/upstream.js'
import { startGateway, type TestGateway } from './helpers/gateway.js'
import { startFakeLattice, verifySigV4, type FakeLattice, type Credentials } from './helpers/fake-lattice.js'
import { until } from './helpers/until.js'

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'
const REGION = 'us-east-1'
const CREDS: Credentials = { accessKeyId: 'AKIDSIGV4TEST', secretAccessKey: 'sigv4/test/secret' }
// Probes go to /ping so the test upstream records them (it answers /health itself).
const PING = '/ping'

/** An upstream that answers /ping 200 and everything else with `handler` (echo by default). */
async function upstream (name: string, status = 200): Promise<TestUpstream> {
  return startUpstream(name, (req, res, body) => {
    if (req.url === PING || status === 200) json(res, 200, { name, url: req.url, body: body.toString('utf8') })
    else json(res, status, { name, error: 'unavailable' })
  })
}

function service (origins: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    timeoutMs: 1000,
    healthCheck: { path: PING, intervalMs: 50, timeoutMs: 40, unhealthyThreshold: 2, healthyThreshold: 2 },
    circuitBreaker: { volumeThreshold: 20, resetTimeoutMs: 60000 },
    origins,
    ...extra
  }
}

function iam (service: string, port: number, auth: 'iam' | 'none' = 'iam'): Record<string, unknown> {
  return { lattice: { service, port, protocol: 'http', auth } }
}


async function ready (g: TestGateway): Promise<void> {
  await until(async () => (await request(`${g.adminUrl}/readyz`).then(async (r) => { await r.body.dump(); return r.statusCode })) === 200, { what: '/readyz 200' })
}

function traffic (up: TestUpstream): RecordedRequest[] {
  return up.requests.filter((r) => r.url !== PING)
}

async function start (fake: FakeLattice, svc: Record<string, unknown>, creds: unknown = CREDS): Promise<TestGateway> {
  return startGateway({
    lattice: { region: REGION, endpoint: fake.url, refreshIntervalMs: 200 },
    services: { api: svc },
    routes: [{ type: 'proxy', prefix: '/api', service: 'api', rewritePrefix: '' }]
  }, { lattice: { credentials: creds as Credentials } })
}

t.test('requests and health probes to an auth: iam origin carry a verifiable SigV4 signature for their host', async (t) => {
  const fake = await startFakeLattice()
  const up = await upstream('api')
  const svc = fake.add({ name: 'api', domainName: '127.0.0.1', authType: 'AWS_IAM' })
  const g = await start(fake, service({ primary: iam(svc.id, up.port) }))
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })
  await ready(g)

  const res = await request(`${g.url}/api/items/a%20b?z=1&a=2&a=1&empty=`, { headers: { authorization: 'Bearer from-the-client', 'x-amz-date': '19700101T000000Z' } })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  const post = await request(`${g.url}/api/orders`, { method: 'POST', body: '{"sku":"42"}', headers: { 'content-type': 'application/json' } })
  t.equal(post.statusCode, 200)
  await post.body.dump()

  const [get, posted] = traffic(up)
  for (const [what, r] of [['GET', get], ['POST', posted]] as const) {
    t.ok(r, `${what} reached the upstream`)
    if (r === undefined) continue
    t.equal(r.headers['x-amz-content-sha256'], 'UNSIGNED-PAYLOAD', `${what}: unsigned payload`)
    t.match(r.headers['x-amz-date'], /^\d{8}T\d{6}Z$/, `${what}: x-amz-date`)
    t.not(r.headers['x-amz-date'], '19700101T000000Z', `${what}: the client's x-amz-date is replaced`)
    t.equal(r.headers.host, `127.0.0.1:${up.port}`)
    const check = await verifySigV4(r, CREDS, REGION)
    t.equal(check.problem, null, `${what}: signature verifies`)
    t.ok(check.valid)
    t.match(check.scope, /^\d{8}\/us-east-1\/vpc-lattice-svcs\/aws4_request$/)
    t.equal(check.accessKeyId, CREDS.accessKeyId)
    t.ok(check.signedHeaders.includes('host') && check.signedHeaders.includes('x-amz-date') && check.signedHeaders.includes('x-amz-content-sha256'), `${what}: host and x-amz-* headers are signed`)
  }
  t.equal(posted?.body.toString('utf8'), '{"sku":"42"}', 'the body is sent as is')
  t.equal(get?.url, '/items/a%20b?z=1&a=2&a=1&empty=')

  // A wrong secret must not verify: the check above can fail.
  t.equal((await verifySigV4(get!, { ...CREDS, secretAccessKey: 'wrong' }, REGION)).valid, false)

  const probe = up.requests.find((r) => r.url === PING)
  t.ok(probe, 'health probes reached the upstream')
  t.equal((await verifySigV4(probe!, CREDS, REGION)).valid, true, 'health probes are signed too')
})

t.test('auth: none adds no signature and leaves the client\'s Authorization alone', async (t) => {
  const fake = await startFakeLattice()
  const up = await upstream('api')
  const svc = fake.add({ name: 'api', domainName: '127.0.0.1' })
  const g = await start(fake, service({ primary: iam(svc.id, up.port, 'none') }))
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })
  await ready(g)
  const res = await request(`${g.url}/api/x`, { headers: { authorization: 'Bearer from-the-client' } })
  await res.body.dump()
  const r = traffic(up)[0]
  t.equal(r?.headers.authorization, 'Bearer from-the-client')
  t.equal(r?.headers['x-amz-date'], undefined)
  t.equal(r?.headers['x-amz-content-sha256'], undefined)
})

t.test('a GET retried on the secondary after a 503 carries a signature for the secondary\'s host', async (t) => {
  const fake = await startFakeLattice()
  const primary = await upstream('primary', 503)
  const secondary = await upstream('secondary')
  const a = fake.add({ name: 'api-a', domainName: '127.0.0.1' })
  const b = fake.add({ name: 'api-b', domainName: '127.0.0.1' })
  const g = await start(fake, service({ primary: iam(a.arn, primary.port), secondary: iam(b.arn, secondary.port) }))
  t.teardown(async () => { await g.close(); await fake.close(); await primary.close(); await secondary.close() })
  await ready(g)
  await until(() => g.gw.registry.get('api')!.groups.get('default')!.active.role === 'primary' && g.gw.registry.get('api')!.groups.get('default')!.primary.healthy, { what: 'primary active and healthy' })

  const res = await request(`${g.url}/api/things?page=2`)
  const body = await res.body.json() as { name: string }
  t.equal(res.statusCode, 200)
  t.equal(body.name, 'secondary', 'the client sees the secondary\'s answer')

  const first = traffic(primary)[0]
  const second = traffic(secondary)[0]
  t.ok(first !== undefined && second !== undefined, 'both origins were tried')
  t.equal(first?.headers.host, `127.0.0.1:${primary.port}`)
  t.equal(second?.headers.host, `127.0.0.1:${secondary.port}`)
  t.equal((await verifySigV4(first!, CREDS, REGION)).valid, true, 'the primary got a signature for its host')
  const check = await verifySigV4(second!, CREDS, REGION)
  t.equal(check.problem, null, 'the secondary got a signature for its own host')
  t.not(first?.headers.authorization, second?.headers.authorization, 'signed again, not replayed')
  // The primary's signature would not verify at the secondary.
  t.equal((await verifySigV4({ ...second!, headers: { ...second!.headers, authorization: first!.headers.authorization, 'x-amz-date': first!.headers['x-amz-date'] } }, CREDS, REGION)).valid, false)
})

t.test('when the primary refuses connections, GET and POST go to the secondary signed for it', async (t) => {
  const fake = await startFakeLattice()
  const primary = await upstream('primary')
  const secondary = await upstream('secondary')
  const a = fake.add({ name: 'api-a', domainName: '127.0.0.1' })
  const b = fake.add({ name: 'api-b', domainName: '127.0.0.1' })
  // Slow to call the primary unhealthy, so the requests below try it first.
  const g = await start(fake, service({ primary: iam(a.id, primary.port), secondary: iam(b.id, secondary.port) }, {
    healthCheck: { path: PING, intervalMs: 100, timeoutMs: 80, unhealthyThreshold: 100, healthyThreshold: 1 }
  }))
  t.teardown(async () => { await g.close(); await fake.close(); await primary.close(); await secondary.close() })
  const group = g.gw.registry.get('api')!.groups.get('default')!
  await until(() => group.primary.healthy && group.secondary!.healthy && group.active.role === 'primary', { what: 'both origins healthy' })
  await primary.kill()

  const res = await request(`${g.url}/api/read`)
  t.equal(res.statusCode, 200)
  t.equal((await res.body.json() as { name: string }).name, 'secondary')
  const post = await request(`${g.url}/api/write`, { method: 'POST', body: 'payload', headers: { 'content-type': 'text/plain' } })
  t.equal(post.statusCode, 200, 'a POST that never reached the primary is sent to the secondary')
  t.equal((await post.body.json() as { name: string }).name, 'secondary')
  t.equal(group.active.role, 'primary', 'the stateless retry did it, not a switch')

  const got = traffic(secondary)
  t.equal(got.length, 2)
  for (const r of got) {
    t.equal(r.headers.host, `127.0.0.1:${secondary.port}`)
    t.equal((await verifySigV4(r, CREDS, REGION)).valid, true, `${r.method} ${r.url} verifies for the secondary`)
  }
})

t.test('rotated credentials sign the next request; a failing provider fails the attempt, not the gateway', async (t) => {
  const fake = await startFakeLattice()
  const up = await upstream('api')
  const svc = fake.add({ name: 'api', domainName: '127.0.0.1' })
  let current: Credentials = { accessKeyId: 'AKIDFIRST', secretAccessKey: 'first/secret', sessionToken: 'token-one' }
  let broken = false
  // Like role credentials: they expire soon, so the SDK asks the provider again.
  const provider = async (): Promise<Credentials & { expiration: Date }> => {
    if (broken) throw new Error('the credential source is unavailable')
    return { ...current, expiration: new Date(Date.now() + 60_000) }
  }
  const g = await start(fake, service({ primary: iam(svc.id, up.port) }), provider)
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })
  await ready(g)

  const one = await request(`${g.url}/api/one`)
  await one.body.dump()
  const r1 = traffic(up).at(-1)!
  t.equal(r1.headers['x-amz-security-token'], 'token-one', 'the session token is sent')
  t.equal((await verifySigV4(r1, current, REGION)).valid, true)
  t.ok((await verifySigV4(r1, current, REGION)).signedHeaders.includes('x-amz-security-token'), 'and signed')

  current = { accessKeyId: 'AKIDSECOND', secretAccessKey: 'second/secret', sessionToken: 'token-two' }
  const two = await request(`${g.url}/api/two`)
  await two.body.dump()
  const r2 = traffic(up).at(-1)!
  t.equal(r2.url, '/two')
  const check = await verifySigV4(r2, current, REGION)
  t.equal(check.accessKeyId, 'AKIDSECOND', 'the rotated key is used')
  t.equal(check.valid, true)
  t.equal(r2.headers['x-amz-security-token'], 'token-two')

  broken = true
  const three = await request(`${g.url}/api/three`)
  const body = await three.body.json() as { code: string }
  t.equal(three.statusCode, 502)
  t.equal(body.code, 'GW_UPSTREAM_FAILED')
  t.equal(traffic(up).filter((r) => r.url === '/three').length, 0, 'nothing unsigned is sent')
  broken = false
  await until(async () => {
    const r = await request(`${g.url}/api/four`)
    await r.body.dump()
    return r.statusCode === 200
  }, { what: 'signing to work again' })
  t.pass('signing recovered with the provider')
})

// A self-signed certificate for 127.0.0.1, for tests only (no CA trusts it).
const TEST_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFOmUCbjFAoE+PtP2
CBCaExj2ACrX0I/GEH6obWjjQH+hRANCAATaoyR3tmF+ipIeRpaT1aGqLK8bbjL9
1rzdmpGKpcYOX83afXsXBNXJ4YJxzNs4fAhYGNgyS9jgXXtNI76IZkCm
-----END PRIVATE KEY-----
`
const TEST_CERT = `-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUetSc3gj/06syLYBdiJw70X0x2EEwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNzE0NDAzNFoYDzIxMjYxMTAz
MTQ0MDM0WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATaoyR3tmF+ipIeRpaT1aGqLK8bbjL91rzdmpGKpcYOX83afXsXBNXJ
4YJxzNs4fAhYGNgyS9jgXXtNI76IZkCmo28wbTAdBgNVHQ4EFgQUYMoU7eMVElsN
V+DaSNX/f9zA4kEwHwYDVR0jBBgwFoAUYMoU7eMVElsNV+DaSNX/f9zA4kEwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSAAwRQIhAKtsRv3Al46WGz/gUAIHb/qTPOC2ETSY937DsR9qLprWAiA1
Tx+Y9Qt66NxtV0Bl6kjDFCdKIxKACGBV41WL/uRHCg==
-----END CERTIFICATE-----
`

t.test('an https origin verifies the certificate: an untrusted one is refused', async (t) => {
  const fake = await startFakeLattice()
  let handled = 0
  let handshakes = 0
  const server = createHttpsServer({ key: TEST_KEY, cert: TEST_CERT }, (_req, res) => {
    handled++
    res.end('{}')
  })
  server.on('tlsClientError', () => { handshakes++ })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  const port = (server.address() as AddressInfo).port
  const svc = fake.add({ name: 'api', domainName: '127.0.0.1' })
  const g = await start(fake, service({ primary: { lattice: { service: svc.id, port, protocol: 'https', auth: 'iam' } } }))
  t.teardown(async () => {
    await g.close()
    await fake.close()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  await g.waitForLog((l) => l.event === 'lattice' && l.state === 'resolved')
  t.equal(g.gw.registry.snapshot('api')?.deployments.default?.origins.primary?.url, `https://127.0.0.1:${port}`)
  const res = await request(`${g.url}/api/secret`)
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 502)
  t.equal(body.code, 'GW_UPSTREAM_FAILED')
  t.equal(handled, 0, 'no request was sent over the unverified connection')
  await until(() => handshakes > 0, { what: 'the server to see a refused handshake' })
  t.equal(g.gw.registry.snapshot('api')?.deployments.default?.origins.primary?.healthy, false, 'and the origin never counts as healthy')
})
