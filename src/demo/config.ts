/**
 * The bundled demo configuration: the SPEC §3 example routes over the demo
 * upstreams (the green `review` deployment is a plain URL here, since the
 * demo runs without VPC Lattice). Health checks run every 500 ms so a
 * failover drill is quick to watch.
 */
import { validateConfig } from '../config/load.js'
import type { GatewayConfig } from '../config/schema.js'

export const DEMO_TOKEN = 'demo-token'

/** SPEC §3's aggregate route: product, reviews and inventory in one answer (the benches use it too). */
export const PRODUCT_DETAILS_ROUTE = {
  type: 'aggregate',
  method: 'GET',
  path: '/products/:id/details',
  timeoutMs: 1500,
  sections: {
    product: { service: 'product', path: '/products/{id}', required: true },
    reviews: { service: 'review', path: '/reviews?productId={id}' },
    inventory: { service: 'inventory', path: '/inventory/{id}' }
  }
} as const

export function demoConfig (env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const healthCheck = { intervalMs: 500, timeoutMs: 300 }
  return validateConfig({
    server: { port: Number(env.PORT ?? 8080), host: '127.0.0.1', shutdownGraceMs: 5000 },
    admin: { port: Number(env.ADMIN_PORT ?? 9901), token: env.GATEWAY_ADMIN_TOKEN ?? DEMO_TOKEN },
    services: {
      product: { healthCheck, origins: { primary: 'http://127.0.0.1:9101', secondary: 'http://127.0.0.1:9102' } },
      review: {
        healthCheck,
        deployments: {
          blue: { primary: 'http://127.0.0.1:9201', secondary: 'http://127.0.0.1:9202' },
          green: { primary: 'http://127.0.0.1:9203' }
        },
        traffic: { blue: 100, green: 0 },
        sticky: { header: 'x-user-id' },
        // Short steps so a rollout is quick to watch (SPEC §11 defaults are 60 s and 50 requests).
        rollout: { steps: [10, 50, 100], stepIntervalMs: 5000, analysis: { minRequests: 20 } },
        preview: { header: 'x-preview-deployment' }
      },
      inventory: { healthCheck, origins: { primary: 'http://127.0.0.1:9301', secondary: 'http://127.0.0.1:9302' } }
    },
    routes: [
      { type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' },
      { type: 'proxy', prefix: '/api/reviews', service: 'review', rewritePrefix: '/reviews' },
      { type: 'proxy', prefix: '/api/inventory', service: 'inventory', rewritePrefix: '/inventory' },
      PRODUCT_DETAILS_ROUTE
    ]
  }, 'demo config')
}

export function demoBanner (port: number, adminPort: number, token: string): string {
  const g = `http://127.0.0.1:${port}`
  const a = `http://127.0.0.1:${adminPort}`
  const auth = `-H 'authorization: Bearer ${token}'`
  return `
lattice-gateway demo is running
  gateway  ${g}      admin  ${a}

Try:
  curl -i ${g}/products/1/details                 # aggregate: product + reviews + inventory
  curl -i ${g}/api/products/2?currency=EUR        # proxy route -> product /products/2?currency=EUR
  curl -s ${a}/metrics | grep gateway_            # metrics
  curl -s ${auth} ${a}/admin/services       # state of every service

Failover drill (product primary dies; watch servedBy move to product-secondary):
  curl -X POST 127.0.0.1:9101/__demo/down?ms=20000   # primary closes its port for 20 s
  curl -s ${g}/api/products/1                     # answered by product-secondary, no error
  curl -s ${auth} ${a}/admin/services/product
  curl -X POST 127.0.0.1:9101/__demo/fail  |  curl -X POST 127.0.0.1:9101/__demo/recover

Blue/green (review): shift to green, watch "version", then roll back:
  curl -X PUT ${auth} -H 'content-type: application/json' -d '{"blue":50,"green":50}' ${a}/admin/services/review/traffic
  for u in alice bob carol dave; do curl -s -H "x-user-id: $u" ${g}/api/reviews?productId=1; echo; done
  curl -X PUT ${auth} -H 'content-type: application/json' -d '{"blue":100,"green":0}' ${a}/admin/services/review/traffic

Rollout (review blue -> green in steps 10, 50, 100 every 5 s; keep traffic flowing meanwhile):
  while true; do curl -s -o /dev/null ${g}/api/reviews?productId=1; done &     # stop it with: kill %1
  curl -s -H 'x-preview-deployment: green' ${g}/api/reviews?productId=1   # preview green before it gets traffic
  curl -s -X POST ${auth} -H 'content-type: application/json' -d '{"to":"green"}' ${a}/admin/services/review/rollouts
  curl -s ${auth} ${a}/admin/services/review/rollout          # status, step, analyses; "promoted" after ~15 s
  curl -s ${auth} ${a}/admin/services/review/history          # every step a versioned change, source "rollout"
A bad release, rolled back (first put blue back; green then fails 30 %, GETs are shielded):
  curl -s -X PUT ${auth} -H 'content-type: application/json' -d '{"blue":100,"green":0}' ${a}/admin/services/review/traffic
  curl -s -X POST 127.0.0.1:9203/__demo/fail?rate=0.3
  curl -s -X POST ${auth} -H 'content-type: application/json' -d '{"to":"green"}' ${a}/admin/services/review/rollouts
  curl -s ${auth} ${a}/admin/services/review/rollout          # "rolled_back", reason "error rate 0.3 > 0.01"
  curl -s ${a}/metrics | grep gateway_rollout                  # shielded requests, rollouts by result
  curl -s -X POST 127.0.0.1:9203/__demo/recover

Ctrl-C stops the gateway and every demo upstream.
`
}
