import t from 'tap'
import { request } from 'undici'
import { startUpstream } from './helpers/upstream.js'
import { startGateway, fastService } from './helpers/gateway.js'

t.test('a proxy route answers through a real upstream', async (t) => {
  const up = await startUpstream('product')
  const g = await startGateway({
    services: { product: fastService({ primary: up.url }) },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  })
  t.teardown(async () => { await g.close(); await up.close() })
  const res = await request(`${g.url}/api/products/42?x=1`)
  const body = await res.body.json() as { url: string }
  t.equal(res.statusCode, 200)
  t.equal(body.url, '/products/42?x=1')
})
