/**
 * VPC Lattice origins resolved through a fake control plane (a real
 * loopback server the real AWS SDK client talks to): by ARN, id and name,
 * custom domain preferred, refresh moves traffic, unresolved origins are
 * unhealthy until they resolve, and control-plane failures never stop the
 * gateway.
 */
import t from 'tap'
import { createServer, type Server } from 'node:http'
import { request } from 'undici'
import { startUpstream, json } from './helpers/upstream.js'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startFakeLattice, type FakeLattice } from './helpers/fake-lattice.js'
import { latticeUrl } from '../src/lattice/resolver.js'
import { until } from './helpers/until.js'

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'
const CREDS = { accessKeyId: 'AKIDRESOLVERTEST', secretAccessKey: 'resolver/test/secret' }

const unhandled: unknown[] = []
process.on('unhandledRejection', (err) => { unhandled.push(err) })

function lattice (fake: FakeLattice, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { region: 'us-east-1', endpoint: fake.url, refreshIntervalMs: 200, ...extra }
}

function origin (service: string, port: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { lattice: { service, port, protocol: 'http', ...extra } }
}



async function readyz (g: TestGateway): Promise<{ status: number, body: { failing?: string[] } }> {
  const res = await request(`${g.adminUrl}/readyz`)
  return { status: res.statusCode, body: await res.body.json() as { failing?: string[] } }
}

async function get (url: string): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await request(url)
  return { status: res.statusCode, body: await res.body.json() as Record<string, unknown> }
}

t.test('latticeUrl leaves out the default port of the protocol', async (t) => {
  t.equal(latticeUrl('svc.example.com', { service: 's', protocol: 'https', auth: 'none' }), 'https://svc.example.com')
  t.equal(latticeUrl('svc.example.com', { service: 's', port: 443, protocol: 'https', auth: 'none' }), 'https://svc.example.com')
  t.equal(latticeUrl('svc.example.com', { service: 's', port: 80, protocol: 'http', auth: 'none' }), 'http://svc.example.com')
  t.equal(latticeUrl('svc.example.com', { service: 's', port: 443, protocol: 'http', auth: 'none' }), 'http://svc.example.com:443')
  t.equal(latticeUrl('svc.example.com', { service: 's', port: 8443, protocol: 'https', auth: 'none' }), 'https://svc.example.com:8443')
})

t.test('resolves services by ARN, by id and by name (ListServices, every page) and proxies to them', async (t) => {
  const fake = await startFakeLattice()
  const review = await startUpstream('review')
  const inventory = await startUpstream('inventory')
  const product = await startUpstream('product')
  const byArn = fake.add({ name: 'review', domainName: '127.0.0.1' })
  fake.add({ name: 'filler-a' })
  const byId = fake.add({ name: 'product', domainName: '127.0.0.1' })
  fake.add({ name: 'filler-b' })
  fake.add({ name: 'inventory', domainName: '127.0.0.1' })
  fake.pageSize = 2 // the name is on the third page
  const g = await startGateway({
    lattice: lattice(fake),
    services: {
      review: fastService({ primary: origin(byArn.arn, review.port) }),
      product: fastService({ primary: origin(byId.id, product.port) }),
      inventory: fastService({ primary: origin('inventory', inventory.port) })
    },
    routes: [
      { type: 'proxy', prefix: '/r', service: 'review' },
      { type: 'proxy', prefix: '/p', service: 'product' },
      { type: 'proxy', prefix: '/i', service: 'inventory' }
    ]
  }, { lattice: { credentials: CREDS } })
  t.teardown(async () => { await g.close(); await fake.close(); await review.close(); await inventory.close(); await product.close() })

  await until(async () => (await readyz(g)).status === 200, { what: '/readyz 200' })
  t.equal((await get(`${g.url}/r/one`)).body.name, 'review')
  t.equal((await get(`${g.url}/p/two`)).body.name, 'product')
  t.equal((await get(`${g.url}/i/three`)).body.name, 'inventory')
  t.equal(g.gw.registry.snapshot('inventory')?.deployments.default?.origins.primary?.url, `http://127.0.0.1:${inventory.port}`)

  const paths = fake.calls.map((c) => c.url)
  t.ok(paths.includes(`/services/${encodeURIComponent(byArn.arn)}`), 'GetService by ARN')
  t.ok(paths.includes(`/services/${byId.id}`), 'GetService by id')
  t.ok(paths.some((p) => p.startsWith('/services?') && p.includes('nextToken=4')), 'ListServices followed every page')
  t.notOk(paths.includes('/services/inventory'), 'a name is never sent to GetService (the API takes ids and ARNs)')
  t.ok(fake.calls.every((c) => String(c.headers.authorization).includes(`Credential=${CREDS.accessKeyId}/`)), 'control-plane calls signed with the configured credentials')
  const line = await g.waitForLog((l) => l.event === 'lattice' && l.service === 'inventory' && l.state === 'resolved')
  t.match(line.msg, /resolved to 127\.0\.0\.1/)
})

t.test('the custom domain name wins over the generated one', async (t) => {
  const fake = await startFakeLattice()
  const up = await startUpstream('review')
  // The generated name does not resolve; only the custom one leads to the upstream.
  const svc = fake.add({ name: 'review', domainName: 'review-0abc.7d67968.vpc-lattice-svcs.us-east-1.on.aws.invalid', customDomainName: '127.0.0.1' })
  const g = await startGateway({
    lattice: lattice(fake),
    services: { review: fastService({ primary: origin(svc.id, up.port) }) },
    routes: [{ type: 'proxy', prefix: '/r', service: 'review' }]
  }, { lattice: { credentials: CREDS } })
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })
  await until(async () => (await readyz(g)).status === 200, { what: '/readyz 200' })
  t.equal(g.gw.registry.snapshot('review')?.deployments.default?.origins.primary?.url, `http://127.0.0.1:${up.port}`)
  const res = await get(`${g.url}/r/x`)
  t.equal(res.status, 200)
  t.equal(res.body.name, 'review')
  t.equal(up.requests[0]?.headers.host, `127.0.0.1:${up.port}`)
})

/** A server on 127.0.0.2:port (the same port as an upstream on 127.0.0.1), or null where that address is not available. */
async function listenOn127002 (port: number, name: string): Promise<Server | null> {
  const server = createServer((req, res) => json(res, 200, { name, url: req.url }))
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.2', () => resolve())
    })
    return server
  } catch {
    return null
  }
}

// A second loopback address with the same port stands for "the service's
// name now resolves elsewhere" (Linux routes all of 127/8 to loopback).
const probe = await listenOn127002(0, 'probe')
if (probe !== null) await new Promise<void>((resolve) => probe.close(() => resolve()))

t.test('a refresh that finds a new domain moves traffic; in-flight requests finish on the old address', { skip: probe === null ? '127.0.0.2 is not a loopback address on this machine' : false }, async (t) => {
  const fake = await startFakeLattice()
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const a = await startUpstream('old', (req, res) => {
    if (req.url === '/r/slow') void held.then(() => json(res, 200, { name: 'old', url: req.url }))
    else json(res, 200, { name: 'old', url: req.url })
  })
  const b = await listenOn127002(a.port, 'new')
  if (b === null) throw new Error(`cannot listen on 127.0.0.2:${a.port}`)
  const svc = fake.add({ name: 'review', domainName: '127.0.0.1' })
  const g = await startGateway({
    lattice: lattice(fake, { refreshIntervalMs: 100 }),
    services: { review: fastService({ primary: origin('review', a.port) }, { timeoutMs: 5000 }) },
    routes: [{ type: 'proxy', prefix: '/r', service: 'review' }]
  }, { lattice: { credentials: CREDS } })
  t.teardown(async () => {
    release()
    await g.close()
    await fake.close()
    await a.close()
    b.closeAllConnections()
    await new Promise<void>((resolve) => b.close(() => resolve()))
  })
  await until(async () => (await readyz(g)).status === 200, { what: '/readyz 200' })
  t.equal((await get(`${g.url}/r/before`)).body.name, 'old')

  const slow = get(`${g.url}/r/slow`)
  await until(() => a.requests.some((r) => r.url === '/r/slow'), { what: 'the slow request to reach the old address' })
  svc.domainName = '127.0.0.2'
  const moved = await g.waitForLog((l) => l.event === 'lattice' && l.service === 'review' && l.from === '127.0.0.1' && l.domain === '127.0.0.2')
  t.equal(moved.level, 40, 'a move is a warning')
  t.equal(g.gw.registry.snapshot('review')?.deployments.default?.origins.primary?.url, `http://127.0.0.2:${a.port}`)
  t.equal((await get(`${g.url}/r/after`)).body.name, 'new', 'new requests go to the new address')
  release()
  const done = await slow
  t.equal(done.status, 200, 'the in-flight request finished on the old pool')
  t.equal(done.body.name, 'old')
  t.equal(g.logs.filter((l) => l.event === 'lattice' && l.from === '127.0.0.1').length, 1, 'the move is logged once')
})

t.test('an unresolved origin is unhealthy until it resolves; /readyz follows', async (t) => {
  const fake = await startFakeLattice()
  const up = await startUpstream('late')
  const g = await startGateway({
    lattice: lattice(fake, { refreshIntervalMs: 150 }),
    services: { late: fastService({ primary: origin('late', up.port) }) },
    routes: [{ type: 'proxy', prefix: '/l', service: 'late' }]
  }, { lattice: { credentials: CREDS, retryBaseMs: 20 } })
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })

  const first = await g.waitForLog((l) => l.event === 'lattice' && l.service === 'late' && l.state === 'pending')
  t.match(first.reason, /no service named "late"/)
  let r = await readyz(g)
  t.equal(r.status, 503)
  t.same(r.body.failing, ['late'])
  const res = await request(`${g.url}/l/x`)
  const body = await res.body.json() as { code: string }
  t.equal(res.statusCode, 502, 'no address: the request fails fast')
  t.equal(body.code, 'GW_UPSTREAM_FAILED')
  t.equal(g.gw.registry.snapshot('late')?.deployments.default?.origins.primary?.healthy, false)

  // Retried with backoff; the same failure is logged once.
  const before = fake.calls.length
  await until(() => fake.calls.length >= before + 3, { what: 'three more lookups' })
  t.equal(g.logs.filter((l) => l.event === 'lattice' && l.service === 'late' && l.level === 50).length, 1, 'the failure is logged once')

  fake.add({ name: 'late', domainName: '127.0.0.1' })
  await g.waitForLog((l) => l.event === 'lattice' && l.service === 'late' && l.state === 'resolved')
  await g.waitForLog((l) => l.event === 'origin_health' && l.service === 'late' && l.healthy === true)
  await until(async () => (r = await readyz(g)).status === 200, { what: '/readyz 200' })
  t.equal(r.status, 200)
  t.equal((await get(`${g.url}/l/x`)).body.name, 'late')
})

t.test('control-plane failures never stop the gateway; a resolved origin keeps its last address', async (t) => {
  const fake = await startFakeLattice()
  const up = await startUpstream('review')
  const svc = fake.add({ name: 'review', domainName: '127.0.0.1' })
  const g = await startGateway({
    lattice: lattice(fake, { refreshIntervalMs: 100 }),
    services: { review: fastService({ primary: origin(svc.arn, up.port) }) },
    routes: [{ type: 'proxy', prefix: '/r', service: 'review' }]
  }, { lattice: { credentials: CREDS, retryBaseMs: 10 } })
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })
  await until(async () => (await readyz(g)).status === 200, { what: '/readyz 200' })

  const failures = [
    { status: 500, type: 'InternalServerException' },
    { status: 429, type: 'ThrottlingException' },
    { status: 403, type: 'AccessDeniedException' },
    { garbage: '{"id": "svc-' },
    'reset' as const,
    { status: 404, type: 'ResourceNotFoundException' }
  ]
  for (const f of failures) {
    fake.failWith = f
    const n = fake.calls.length
    await until(() => fake.calls.length >= n + 2, { what: `two lookups answered with ${JSON.stringify(f)}` })
    const res = await get(`${g.url}/r/x`)
    t.equal(res.status, 200, `traffic still flows during ${JSON.stringify(f)}`)
  }
  const stale = g.logs.filter((l) => l.event === 'lattice' && l.state === 'stale' && l.level === 40)
  t.equal(stale.length, 1, 'going stale is logged once')
  t.match(stale[0]?.reason, /InternalServerException/)
  t.equal(g.gw.registry.snapshot('review')?.deployments.default?.origins.primary?.url, `http://127.0.0.1:${up.port}`, 'the last known address is kept')
  t.equal((await readyz(g)).status, 200)

  fake.failWith = null
  const back = await g.waitForLog((l) => l.event === 'lattice' && l.state === 'resolved' && /work again/.test(String(l.msg)))
  t.equal(back.domain, '127.0.0.1')
})

t.test('failed lookups back off, but never further apart than refreshIntervalMs', async (t) => {
  const fake = await startFakeLattice()
  const up = await startUpstream('review')
  fake.failWith = { status: 500, type: 'InternalServerException' }
  const g = await startGateway({
    lattice: lattice(fake, { refreshIntervalMs: 100 }),
    services: { review: fastService({ primary: origin('review', up.port) }) },
    routes: [{ type: 'proxy', prefix: '/r', service: 'review' }]
  }, { lattice: { credentials: CREDS, retryBaseMs: 50 } })
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })
  // Uncapped doubling from 50 ms would need minutes for 12 tries; capped at 100 ms, about one second.
  await until(() => fake.calls.length >= 12, { what: '12 lookups' })
  t.equal(g.logs.filter((l) => l.event === 'lattice' && l.level === 50).length, 1, 'one error line for the repeated failure')
  t.equal((await readyz(g)).status, 503)
})

t.test('a service without a DNS name yet stays unresolved (and says why)', async (t) => {
  const fake = await startFakeLattice()
  const up = await startUpstream('new')
  const svc = fake.add({ name: 'new', domainName: null, status: 'CREATE_IN_PROGRESS' })
  const g = await startGateway({
    lattice: lattice(fake),
    services: { new: fastService({ primary: origin(svc.id, up.port) }) },
    routes: [{ type: 'proxy', prefix: '/n', service: 'new' }]
  }, { lattice: { credentials: CREDS, retryBaseMs: 20 } })
  t.teardown(async () => { await g.close(); await fake.close(); await up.close() })
  const line = await g.waitForLog((l) => l.event === 'lattice' && l.state === 'pending')
  t.match(line.reason, /no DNS name yet \(status CREATE_IN_PROGRESS\)/)
  svc.customDomainName = 'api.example.com/admin?'
  const bad = await g.waitForLog((l) => l.event === 'lattice' && l.state === 'pending' && /not a host name/.test(String(l.reason)))
  t.equal(bad.level, 50, 'a different failure is logged (once)')
  delete svc.customDomainName
  svc.domainName = '127.0.0.1'
  svc.status = 'ACTIVE'
  await until(async () => (await readyz(g)).status === 200, { what: '/readyz 200' })
  t.equal((await get(`${g.url}/n/x`)).body.name, 'new')
})

t.test('without any AWS region the origin stays unresolved and the log names lattice.region', async (t) => {
  const saved = { ...process.env }
  delete process.env.AWS_REGION
  delete process.env.AWS_DEFAULT_REGION
  delete process.env.AWS_PROFILE
  process.env.AWS_CONFIG_FILE = '/nonexistent/aws/config'
  process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/aws/credentials'
  const fake = await startFakeLattice()
  const up = await startUpstream('review')
  fake.add({ name: 'review', domainName: '127.0.0.1' })
  const g = await startGateway({
    lattice: { endpoint: fake.url, refreshIntervalMs: 100 },
    services: { review: fastService({ primary: origin('review', up.port) }) },
    routes: [{ type: 'proxy', prefix: '/r', service: 'review' }]
  }, { lattice: { credentials: CREDS } })
  t.teardown(async () => {
    await g.close()
    await fake.close()
    await up.close()
    process.env = saved
  })
  const line = await g.waitForLog((l) => l.event === 'lattice' && l.state === 'pending')
  t.equal(line.level, 50, 'an error line')
  t.equal(line.path, 'lattice.region')
  t.match(line.reason, /set lattice\.region in the config, or AWS_REGION/)
  t.equal((await readyz(g)).status, 503)
  t.equal(fake.calls.length, 0, 'no control-plane call without a region')
  t.equal((await request(`${g.adminUrl}/healthz`)).statusCode, 200, 'the gateway itself runs on')
})

t.test('AWS_ENDPOINT_URL_VPC_LATTICE, AWS_REGION and credentials from the environment are honoured', async (t) => {
  const saved = { ...process.env }
  const fake = await startFakeLattice('eu-west-1')
  const up = await startUpstream('review')
  fake.add({ name: 'review', domainName: '127.0.0.1' })
  process.env.AWS_ENDPOINT_URL_VPC_LATTICE = fake.url
  process.env.AWS_REGION = 'eu-west-1'
  process.env.AWS_ACCESS_KEY_ID = 'AKIDFROMENVIRONMENT'
  process.env.AWS_SECRET_ACCESS_KEY = 'env/secret'
  process.env.AWS_CONFIG_FILE = '/nonexistent/aws/config'
  process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent/aws/credentials'
  const g = await startGateway({
    services: { review: fastService({ primary: origin('review', up.port) }) },
    routes: [{ type: 'proxy', prefix: '/r', service: 'review' }]
  })
  t.teardown(async () => {
    await g.close()
    await fake.close()
    await up.close()
    process.env = saved
  })
  await until(async () => (await readyz(g)).status === 200, { what: '/readyz 200' })
  t.ok(fake.calls.length > 0, 'the SDK called the endpoint from the environment')
  t.match(String(fake.calls[0]?.headers.authorization), /Credential=AKIDFROMENVIRONMENT\/\d{8}\/eu-west-1\/vpc-lattice\/aws4_request/)
  t.equal((await get(`${g.url}/r/x`)).body.name, 'review')
})

t.test('nothing above left an unhandled rejection behind', async (t) => {
  t.same(unhandled, [])
})
