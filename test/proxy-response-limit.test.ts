// A proxy route's maxResponseBytes: an answer declared larger is refused
// with a clean 502 before anything is sent; one that turns out larger
// while streaming is cut (its status had already gone out); answers within
// the limit pass untouched, and the origin is not blamed.
import t from 'tap'
import { request } from 'undici'
import { startUpstream } from './helpers/upstream.js'
import { startGateway, fastService } from './helpers/gateway.js'

t.test('maxResponseBytes on a proxy route', async (t) => {
  const up = await startUpstream('big', (req, res) => {
    const n = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('n'))
    const chunked = req.url?.includes('chunked') === true
    res.writeHead(200, chunked ? { 'content-type': 'text/plain' } : { 'content-type': 'text/plain', 'content-length': String(n) })
    // Two writes, so a chunked answer really arrives in pieces: a first
    // piece within the limit, then the rest.
    const first = Math.min(n, 800)
    res.write('x'.repeat(first))
    setTimeout(() => res.end('x'.repeat(n - first)), 20)
  })
  const g = await startGateway({
    // Generous probe timeout: only the answers under test may judge the origin.
    services: { big: fastService({ primary: up.url }, { healthCheck: { intervalMs: 50, timeoutMs: 1000, unhealthyThreshold: 2, healthyThreshold: 2 } }) },
    routes: [{ type: 'proxy', prefix: '/big', service: 'big', maxResponseBytes: 1000 }]
  })
  t.teardown(async () => { await g.close(); await up.close() })

  const ok = await request(`${g.url}/big/x?n=1000`)
  t.equal(ok.statusCode, 200)
  t.equal((await ok.body.text()).length, 1000, 'an answer at the limit passes whole')

  const declared = await request(`${g.url}/big/x?n=5000`)
  t.equal(declared.statusCode, 502, 'declared too large: 502 before anything is sent')
  const body = await declared.body.json() as { code: string, message: string }
  t.equal(body.code, 'GW_UPSTREAM_FAILED')
  t.match(body.message, /maxResponseBytes/)

  const streamed = await request(`${g.url}/big/chunked?n=5000`)
  t.equal(streamed.statusCode, 200, 'an undeclared length is found out while streaming: the status is already out')
  await t.rejects(streamed.body.text(), 'the client connection is cut, not silently short')

  const after = await request(`${g.url}/big/x?n=10`)
  t.equal(after.statusCode, 200, 'the gateway and the origin still serve')
  await after.body.text()
  const svc = g.gw.registry.snapshot('big')!
  t.equal(svc.deployments.default!.origins.primary!.breaker, 'closed', 'a too-large answer does not count against the origin')
  t.equal(svc.deployments.default!.origins.primary!.healthy, true, 'the origin stays healthy')
})
