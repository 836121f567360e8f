import t from 'tap'
import { createRequire } from 'node:module'
import { sep } from 'node:path'
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
  // Without Lattice origins the AWS SDK is never loaded (start-up time and memory).
  const loaded = Object.keys(createRequire(import.meta.url).cache)
  t.ok(loaded.some((f) => f.includes(`${sep}fastify${sep}`)), 'the check sees CommonJS packages loaded through import')
  t.strictSame(loaded.filter((f) => f.includes(`${sep}@aws-sdk${sep}`) || f.includes(`${sep}@smithy${sep}`)), [], 'no AWS SDK module is loaded')
  // Without tracing.otlpEndpoint the OpenTelemetry SDK is never loaded either
  // (prom-client loads the small @opentelemetry/api for its exemplars).
  t.strictSame(loaded.filter((f) => f.includes(`${sep}@opentelemetry${sep}`) && !f.includes(`${sep}@opentelemetry${sep}api${sep}`)), [], 'no OpenTelemetry SDK module is loaded')
})
