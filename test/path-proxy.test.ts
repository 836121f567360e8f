// Path normalisation through a real gateway: raw requests (no client
// library resolves dots for us) to proxy routes, checking what the client
// gets and what each upstream actually received.
import t, { type Test } from 'tap'
import { startGateway, fastService, type TestGateway } from './helpers/gateway.js'
import { startUpstream, type TestUpstream } from './helpers/upstream.js'
import { rawRequest, get } from './helpers/raw-http.js'

async function setup (t: Test, server: Record<string, unknown> = {}): Promise<{ g: TestGateway, product: TestUpstream, review: TestUpstream }> {
  const product = await startUpstream('product')
  const review = await startUpstream('review')
  const g = await startGateway({
    server,
    services: { product: fastService({ primary: product.url }), review: fastService({ primary: review.url }) },
    routes: [
      { type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' },
      { type: 'proxy', prefix: '/api/reviews', service: 'review', rewritePrefix: '/reviews' }
    ]
  }, { start: false })
  t.teardown(async () => { await g.close(); await product.close(); await review.close() })
  return { g, product, review }
}

t.test('hostile paths are refused with 400 GW_BAD_REQUEST and reach no upstream', async (t) => {
  const { g, product, review } = await setup(t)
  const hostile = [
    '/api/products/..%2f..%2fadmin',
    '/api/products/..%2F..%2Fadmin',
    '/api/products/../../admin',
    '/api/products/%2e%2e/%2e%2e/admin',
    '/api/products/.%2e/admin',
    '/api/products/../reviews/1',
    '/api/products/%2e%2e/reviews/1',
    '/api/products/..;/admin',
    '/api/products/a\\..\\..\\admin',
    '/api/products/%5c..%5cadmin',
    '/api/products/%252e%252e/admin',
    '/api/products/%252f',
    '/api/products/a%zz',
    '/api/products/%00',
    '/api/products/x#frag',
    '/api/products/..',
    '*',
    'http://evil.example/api/products/1'
  ]
  for (const path of hostile) {
    const r = await rawRequest(g.url, get(path))
    t.equal(r.status, 400, `${path}: 400`)
    t.equal(JSON.parse(r.body).code, 'GW_BAD_REQUEST', `${path}: GW_BAD_REQUEST`)
    t.ok(r.headers['x-request-id'], `${path}: x-request-id even on a refusal`)
  }
  t.same(product.requests, [], 'product saw nothing')
  t.same(review.requests, [], 'review saw nothing (no route hopping)')
})

t.test('paths that normalise safely are forwarded normalised, query untouched', async (t) => {
  const { g, product } = await setup(t)
  const cases: Array<[string, string]> = [
    ['/api/products/1', '/products/1'],
    ['/api/products/a/../b?x=../..&y=%2f', '/products/b?x=../..&y=%2f'],
    ['/api/products//42', '/products/42'],
    ['/api//products/42?q=1', '/products/42?q=1'],
    ['/api/products/./42/.', '/products/42/'],
    ['/api/products/%41bc%7e', '/products/Abc~'],
    ['/api/products/caf%c3%a9', '/products/caf%C3%A9'],
    ['/api/x/../products/7', '/products/7'],
    ['/api/products?x=1', '/products?x=1']
  ]
  for (const [path, upstream] of cases) {
    const n = product.requests.length
    const r = await rawRequest(g.url, get(path))
    t.equal(r.status, 200, `${path}: 200`)
    t.equal(product.requests.length, n + 1, `${path}: one upstream request`)
    t.equal(product.requests[n]?.url, upstream, `${path} -> ${upstream}`)
  }
})

t.test('encodedSlashes: keep forwards %2F encoded but still refuses hidden dot-segments', async (t) => {
  const { g, product } = await setup(t, { encodedSlashes: 'keep' })
  const ok = await rawRequest(g.url, get('/api/products/group%2fproject'))
  t.equal(ok.status, 200)
  t.equal(product.requests[0]?.url, '/products/group%2Fproject')
  for (const path of ['/api/products/..%2f..%2fadmin', '/api/products/a%2f..%2f..%2fadmin']) {
    const r = await rawRequest(g.url, get(path))
    t.equal(r.status, 400, `${path}: 400`)
  }
  t.equal(product.requests.length, 1, 'nothing more reached the upstream')
})
