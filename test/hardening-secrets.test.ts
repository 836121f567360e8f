// Secrets never reach logs or error bodies: client Authorization, Cookie
// and Proxy-Authorization, the admin token (right or wrong), and AWS
// credentials used to sign Lattice requests. Every path that logs is
// exercised at debug level — success, 4xx refusals, parser errors, 5xx
// with their causes, a broken upstream echoing the request back, a failing
// Lattice API — then every captured log line and error body is scanned.
import t from 'tap'
import { request } from 'undici'
import { startGateway, fastService } from './helpers/gateway.js'
import { startUpstream, deadPort } from './helpers/upstream.js'
import { rawRequest, startRawUpstream } from './helpers/raw-http.js'
import { startFakeLattice } from './helpers/fake-lattice.js'
import { until } from './helpers/until.js'

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true'

const S = {
  auth: 'client-secret-auth-9f8e7d',
  cookie: 'cookie-secret-1a2b3c',
  proxyAuth: 'proxy-secret-4d5e6f',
  admin: 'admin-token-secret-5e6f7a',
  wrongAdmin: 'wrong-token-secret-0000',
  awsKeyId: 'AKIDSECRETTEST0001',
  awsSecret: 'aws/secret/key/shhh',
  awsSession: 'aws-session-token-zzz'
}
const CLIENT = [
  `Authorization: Bearer ${S.auth}`,
  `Cookie: session=${S.cookie}; theme=dark`,
  `Proxy-Authorization: Basic ${S.proxyAuth}`
]
const clientHeaders = { authorization: `Bearer ${S.auth}`, cookie: `session=${S.cookie}`, 'proxy-authorization': `Basic ${S.proxyAuth}` }

t.test('no secret in any log line or error body', async (t) => {
  const good = await startUpstream('good')
  const silent = await startRawUpstream(() => {})
  // Answers with broken HTTP that quotes the request it got (headers included).
  const echoBroken = await startRawUpstream((sock, head) => sock.end(`HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n${head}\r\n\r\n`))
  const fake = await startFakeLattice()
  const svc = fake.add({ name: 'signed', domainName: '127.0.0.1', authType: 'AWS_IAM' })
  const g = await startGateway({
    server: { bodyLimitBytes: 100 },
    admin: { token: S.admin },
    lattice: { region: fake.region, endpoint: fake.url, refreshIntervalMs: 100 },
    services: {
      good: fastService({ primary: good.url }),
      dead: fastService({ primary: `http://127.0.0.1:${await deadPort()}` }),
      silent: fastService({ primary: silent.url }, { timeoutMs: 200 }),
      broken: fastService({ primary: echoBroken.url }),
      signed: { ...fastService({ primary: '' }), origins: { primary: { lattice: { service: svc.id, port: good.port, protocol: 'http', auth: 'iam' } } } }
    },
    routes: ['good', 'dead', 'silent', 'broken', 'signed'].map((s) => ({ type: 'proxy', prefix: `/${s}`, service: s }))
  }, { lattice: { credentials: { accessKeyId: S.awsKeyId, secretAccessKey: S.awsSecret, sessionToken: S.awsSession } } })
  t.teardown(async () => { await g.close(); await good.close(); await silent.close(); await echoBroken.close(); await fake.close() })

  const bodies: string[] = []
  const call = async (path: string, opts: { method?: 'GET' | 'POST' | 'PUT', body?: string, headers?: Record<string, string>, admin?: boolean } = {}): Promise<number> => {
    const res = await request(`${opts.admin === true ? g.adminUrl : g.url}${path}`, { method: opts.method ?? 'GET', headers: { ...clientHeaders, ...opts.headers }, body: opts.body })
    const text = await res.body.text()
    if (res.statusCode >= 400) bodies.push(text)
    return res.statusCode
  }

  t.equal(await call('/good/1'), 200, 'proxied with the secrets')
  t.match(good.requests[0]?.headers.authorization, S.auth, 'the upstream did get Authorization (the test is not vacuous)')
  t.equal(await call('/dead/1'), 502)
  t.equal(await call('/silent/1'), 504)
  t.equal(await call('/broken/1'), 502, 'a broken answer quoting the secrets')
  t.equal(await call('/good/..%2fadmin'), 400)
  t.equal(await call('/good/1', { method: 'POST', body: 'x'.repeat(500) }), 413)
  t.equal(await call('/nowhere'), 404)
  const smuggle = await rawRequest(g.url, ['POST /good/1 HTTP/1.1', 'Host: x', ...CLIENT, 'Content-Length: 4', 'Transfer-Encoding: chunked', '', '0', '', ''].join('\r\n'))
  t.equal(smuggle.status, 400, 'a parser error on a request carrying the secrets')
  bodies.push(smuggle.body)
  const oversized = await rawRequest(g.url, ['GET /good/1 HTTP/1.1', 'Host: x', ...CLIENT, `X-Big: ${'a'.repeat(20000)}`, '', ''].join('\r\n'))
  t.equal(oversized.status, 431)
  bodies.push(oversized.body)

  t.equal(await call('/admin/services', { admin: true, headers: { authorization: `Bearer ${S.wrongAdmin}` } }), 401, 'admin: wrong token')
  t.equal(await call('/admin/services', { admin: true, headers: { authorization: `Bearer ${S.admin}` } }), 200, 'admin: right token')
  t.equal(await call('/admin/services/good/traffic', { admin: true, method: 'PUT', body: '{"nope":1}', headers: { authorization: `Bearer ${S.admin}`, 'content-type': 'application/json' } }), 400, 'admin: bad traffic body')

  // Signed Lattice traffic, then a Lattice API that fails.
  // Once the Lattice name resolved (no event reaches the test from here).
  t.equal(await until(async () => (await call('/signed/1')) === 200 ? 200 : false, { what: 'a signed request to pass', intervalMs: 50 }), 200, 'a SigV4-signed request went through')
  t.ok(good.requests.some((r) => String(r.headers.authorization).startsWith('AWS4-HMAC-SHA256')), 'it was signed with the test credentials')
  fake.failWith = { status: 403, type: 'AccessDeniedException', message: 'denied' }
  const calls = fake.calls.length
  await g.waitForLog((l) => typeof l.msg === 'string' && /lookup failed|not resolved/.test(l.msg), 5000).catch(() => null)
  t.ok(fake.calls.length > calls, 'the failing Lattice API was called again (signed with the test credentials)')

  const logText = JSON.stringify(g.logs)
  t.ok(g.logs.length > 10, `${g.logs.length} log lines captured`)
  t.ok(g.logs.some((l) => l.level === 50), 'error-level lines (with causes) are among them')
  t.ok(logText.includes('"data":"[redacted]"'), 'the parser error quoting the request was logged, its bytes redacted')
  for (const [name, secret] of Object.entries(S)) {
    t.notOk(logText.includes(secret), `${name} is in no log line`)
    t.notOk(bodies.some((b) => b.includes(secret)), `${name} is in no error body`)
  }
  t.ok(bodies.length >= 8, 'error bodies collected')
})

t.test('query parameters named in server.redactQueryParams never reach the access log', async (t) => {
  const good = await startUpstream('good')
  const g = await startGateway({
    services: { good: fastService({ primary: good.url }) },
    routes: [{ type: 'proxy', prefix: '/good', service: 'good' }]
  }, { start: false })
  t.teardown(async () => { await g.close(); await good.close() })
  const secrets = ['q-secret-token-1', 'q-secret-access-2', 'q-secret-apikey-3', 'q-secret-key-4', 'q-secret-sig-5', 'q-secret-amz-6', 'q-secret-admin-7']
  const path = `/good/x?page=2&token=${secrets[0]}&Access_Token=${secrets[1]}&api%5Fkey=${secrets[2]}&KEY=${secrets[3]}&signature=${secrets[4]}&X-Amz-Signature=${secrets[5]}&keep=visible`
  const res = await request(`${g.url}${path}`)
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal(good.requests[0]?.url, path, 'the upstream still gets the query as sent')
  const healthz = await request(`${g.adminUrl}/healthz?token=${secrets[6]}`)
  await healthz.body.dump()

  const line = await g.waitForLog((l) => l.msg === 'request' && String(l.url).startsWith('/good/x'))
  t.equal(line.url, '/good/x?page=2&token=[redacted]&Access_Token=[redacted]&api%5Fkey=[redacted]&KEY=[redacted]&signature=[redacted]&X-Amz-Signature=[redacted]&keep=visible', 'the default names, any case, encoded names too; other parameters kept as sent')
  const admin = await g.waitForLog((l) => l.msg === 'request' && String(l.url).startsWith('/healthz'))
  t.equal(admin.url, '/healthz?token=[redacted]', 'the admin listener\'s access lines too')
  const all = g.logs.map((l) => JSON.stringify(l)).join('\n')
  for (const s of secrets) t.notOk(all.includes(s), `${s} is in no log line`)
})

t.test('server.redactQueryParams replaces the default list; [] turns redaction off', async (t) => {
  const good = await startUpstream('good')
  const custom = await startGateway({ server: { redactQueryParams: ['session'] }, services: { good: fastService({ primary: good.url }) }, routes: [{ type: 'proxy', prefix: '/good', service: 'good' }] }, { start: false })
  const none = await startGateway({ server: { redactQueryParams: [] }, services: { good: fastService({ primary: good.url }) }, routes: [{ type: 'proxy', prefix: '/good', service: 'good' }] }, { start: false })
  t.teardown(async () => { await custom.close(); await none.close(); await good.close() })
  await (await request(`${custom.url}/good/a?Session=s1&token=t1`)).body.dump()
  await (await request(`${none.url}/good/b?token=t2`)).body.dump()
  t.equal((await custom.waitForLog((l) => l.msg === 'request')).url, '/good/a?Session=[redacted]&token=t1')
  t.equal((await none.waitForLog((l) => l.msg === 'request')).url, '/good/b?token=t2')
})
