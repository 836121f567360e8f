/**
 * Config loading (SPEC §3): every class of error is reported at its own
 * path, all of them in one run; `${VAR}` substitution happens in the text
 * before parsing; YAML and JSON both load; a missing file is named.
 */
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { validateConfig, loadConfigFile, ConfigError, type ConfigIssue } from '../src/config/load.js'

const dir = mkdtempSync(join(tmpdir(), 'lattice-gateway-config-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

function file (name: string, text: string): string {
  const p = join(dir, name)
  writeFileSync(p, text)
  return p
}

/** The issues a config is rejected with (fails the test when it is accepted). */
function issuesOf (fn: () => unknown): ConfigIssue[] {
  try {
    fn()
  } catch (err) {
    if (err instanceof ConfigError) return err.issues
    throw err
  }
  throw new Error('the config was accepted')
}

const rendered = (issues: ConfigIssue[]): string[] => issues.map((i) => `${i.path}: ${i.message}`)

const product = { origins: { primary: 'http://127.0.0.1:9101' } }

t.test('an unknown key is reported at its own path', async (t) => {
  const issues = issuesOf(() => validateConfig({ services: { product: { ...product, healthChek: { intervalMs: 100 } } } }))
  t.equal(issues.length, 1)
  t.match(rendered(issues)[0], /^services\.product\.healthChek: unknown key/)
  t.match(issues[0]!.message, /healthCheck/, 'the message names the key that was probably meant')
})

t.test('an unknown key at the top level and in a route', async (t) => {
  const issues = issuesOf(() => validateConfig({
    servr: {},
    services: { product },
    routes: [{ type: 'proxy', prefix: '/p', service: 'product', rewrite: '/x' }]
  }))
  const lines = rendered(issues)
  t.ok(lines.some((l) => l.startsWith('servr: unknown key')), 'servr: unknown key')
  t.ok(lines.some((l) => l.startsWith('routes[0].rewrite: unknown key')), 'routes[0].rewrite: unknown key')
  t.equal(lines.length, 2, 'nothing else is reported')
})

t.test('an out-of-range value is reported with its path and the bound', async (t) => {
  const issues = issuesOf(() => validateConfig({ services: { product: { ...product, healthCheck: { intervalMs: 10 } } } }))
  t.strictSame(rendered(issues), ['services.product.healthCheck.intervalMs: must be >= 50'])
  const port = issuesOf(() => validateConfig({ server: { port: 70000 }, services: { product } }))
  t.strictSame(rendered(port), ['server.port: must be <= 65535'])
})

t.test('a route naming an unknown service', async (t) => {
  const issues = issuesOf(() => validateConfig({
    services: { product },
    routes: [
      { type: 'proxy', prefix: '/api/products', service: 'prodcut' },
      { type: 'aggregate', path: '/p/:id', sections: { a: { service: 'product', path: '/p/{id}' }, b: { service: 'reviews', path: '/r/{id}' } } }
    ]
  }))
  t.equal(issues.length, 2)
  t.equal(issues[0]!.path, 'routes[0].service')
  t.match(issues[0]!.message, /unknown service "prodcut"/)
  t.equal(issues[1]!.path, 'routes[1].sections.b.service')
  t.match(issues[1]!.message, /unknown service "reviews"/)
})

t.test('a service with neither origins nor deployments', async (t) => {
  const issues = issuesOf(() => validateConfig({ services: { product: { timeoutMs: 500 } } }))
  t.equal(issues.length, 1)
  t.equal(issues[0]!.path, 'services.product')
  t.match(issues[0]!.message, /origins.*deployments/)
})

t.test('duplicate proxy prefixes and duplicate aggregate paths', async (t) => {
  const agg = (path: string, param: string): Record<string, unknown> => ({ type: 'aggregate', path, sections: { p: { service: 'product', path: `/products/{${param}}` } } })
  const issues = issuesOf(() => validateConfig({
    services: { product },
    routes: [
      { type: 'proxy', prefix: '/api/products', service: 'product' },
      { type: 'proxy', prefix: '/api/products/', service: 'product' },
      agg('/products/:id/details', 'id'),
      agg('/products/:pid/details', 'pid')
    ]
  }))
  t.equal(issues.length, 2, 'two duplicates')
  t.equal(issues[0]!.path, 'routes[1].prefix')
  t.match(issues[0]!.message, /duplicate route.*routes\[0\]/)
  t.equal(issues[1]!.path, 'routes[3].path')
  t.match(issues[1]!.message, /duplicate route.*routes\[2\]/)
})

t.test('a bad origin URL', async (t) => {
  const issues = issuesOf(() => validateConfig({
    services: {
      product: { origins: { primary: 'not a url', secondary: 'ftp://127.0.0.1:21' } },
      review: { origins: { primary: 'http://127.0.0.1:9201/some/path' } }
    }
  }))
  const byPath = new Map(issues.map((i) => [i.path, i.message]))
  t.equal(issues.length, 3, 'three bad origins')
  t.match(byPath.get('services.product.origins.primary'), /not a URL/)
  t.match(byPath.get('services.product.origins.secondary'), /scheme/)
  t.match(byPath.get('services.review.origins.primary'), /scheme:\/\/host/)
})

t.test('traffic naming an unknown deployment', async (t) => {
  const issues = issuesOf(() => validateConfig({
    services: {
      review: {
        deployments: { blue: { primary: 'http://127.0.0.1:9201' }, green: { primary: 'http://127.0.0.1:9203' } },
        traffic: { blue: 100, gren: 0 }
      }
    }
  }))
  t.equal(issues.length, 1)
  t.equal(issues[0]!.path, 'services.review.traffic.gren')
  t.match(issues[0]!.message, /unknown deployment.*blue, green/)
})

t.test('every error is reported in one run, not only the first', async (t) => {
  const issues = issuesOf(() => validateConfig({
    server: { port: 99999 },
    services: {
      product: { healthChek: {}, healthCheck: { intervalMs: 10 }, origins: { primary: 'nope' } },
      review: { deployments: { blue: { primary: 'http://127.0.0.1:9201' } }, traffic: { blue: 100, green: 0 } },
      inventory: {}
    },
    routes: [
      { type: 'proxy', prefix: '/a', service: 'catalog' },
      { type: 'proxy', prefix: '/a', service: 'product' }
    ]
  }))
  const paths = issues.map((i) => i.path)
  t.strictSame(paths.sort(), [
    'routes[0].service',
    'routes[1].prefix',
    'server.port',
    'services.inventory',
    'services.product.healthCheck.intervalMs',
    'services.product.healthChek',
    'services.product.origins.primary',
    'services.review.traffic.green'
  ])
})

t.test('a valid config gets its defaults and the short origins form becomes deployment "default"', async (t) => {
  const config = validateConfig({ services: { product: { origins: { primary: 'http://127.0.0.1:9101/', secondary: 'http://127.0.0.1:9102' } } } })
  t.equal(config.server.port, 8080)
  t.equal(config.server.bodyLimitBytes, 1048576)
  t.equal(config.server.shutdownGraceMs, 10000)
  t.equal(config.admin.host, '127.0.0.1')
  t.equal(config.admin.port, 9901)
  t.equal(config.admin.token, '')
  const svc = config.services.product!
  t.strictSame(svc.deployments, { default: { primary: 'http://127.0.0.1:9101', secondary: 'http://127.0.0.1:9102' } })
  t.strictSame(svc.traffic, { default: 100 })
  t.equal(svc.timeoutMs, 2000)
  t.strictSame(svc.retry, { methods: ['GET', 'HEAD', 'OPTIONS'], onStatus: [500, 502, 503, 504] })
  t.match(svc.healthCheck, { path: '/health', intervalMs: 1000, timeoutMs: 500, unhealthyThreshold: 2, healthyThreshold: 2 })
  t.match(svc.circuitBreaker, { errorThresholdPercentage: 50, volumeThreshold: 10, resetTimeoutMs: 5000 })
  t.equal(svc.failback, 'auto')
  t.ok(Object.isFrozen(config.services.product), 'the config is frozen')
})

t.test('${VAR} and ${VAR:-default} are substituted in the text before parsing', async (t) => {
  const f = file('env.yaml', [
    'server:',
    '  port: ${PORT}',
    '  host: ${HOST:-127.0.0.1}',
    'admin:',
    '  port: ${ADMIN_PORT:-9911}',
    '  token: ${GATEWAY_ADMIN_TOKEN}',
    'services:',
    '  product:',
    '    origins:',
    '      primary: http://127.0.0.1:${PRODUCT_PORT:-9101}',
    ''
  ].join('\n'))
  const config = loadConfigFile(f, { PORT: '8181', GATEWAY_ADMIN_TOKEN: 's3cret', PRODUCT_PORT: '9999' })
  t.equal(config.server.port, 8181, 'port: ${PORT} becomes a number')
  t.equal(config.server.host, '127.0.0.1', 'the default applies when the variable is unset')
  t.equal(config.admin.port, 9911)
  t.equal(config.admin.token, 's3cret')
  t.equal(config.services.product!.deployments.default!.primary, 'http://127.0.0.1:9999', 'substitution inside a longer value')

  const unset = loadConfigFile(f, { PORT: '8181' })
  t.equal(unset.admin.token, '', 'an unset ${VAR} without a default is the empty string: no admin token')
})

t.test('an unset variable in a value that needs one is an error at that path', async (t) => {
  const f = file('env-missing.yaml', 'server:\n  port: ${PORT}\nservices:\n  product:\n    origins:\n      primary: http://127.0.0.1:9101\n')
  const issues = issuesOf(() => loadConfigFile(f, {}))
  t.equal(issues.length, 1)
  t.equal(issues[0]!.path, 'server.port')
})

t.test('a JSON file loads, with substitution', async (t) => {
  const f = file('gateway.json', JSON.stringify({
    server: { port: '${PORT_PLACEHOLDER}' },
    admin: { token: '${TOKEN}' },
    services: { product },
    routes: [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products' }]
  }).replace('"${PORT_PLACEHOLDER}"', '${PORT:-8282}'))
  const config = loadConfigFile(f, { TOKEN: 'tok' })
  t.equal(config.server.port, 8282)
  t.equal(config.admin.token, 'tok')
  t.strictSame(config.routes, [{ type: 'proxy', prefix: '/api/products', service: 'product', rewritePrefix: '/products', maxResponseBytes: 0 }])
})

t.test('a YAML file with errors reports them all, with paths', async (t) => {
  const f = file('bad.yaml', [
    'services:',
    '  product:',
    '    healthChek: {}',
    '    healthCheck:',
    '      intervalMs: 10',
    '    origins:',
    '      primary: http://127.0.0.1:9101',
    'routes:',
    '  - type: proxy',
    '    prefix: /api/reviews',
    '    service: review',
    ''
  ].join('\n'))
  let err: unknown
  try { loadConfigFile(f, {}) } catch (e) { err = e }
  t.ok(err instanceof ConfigError)
  const message = (err as ConfigError).message
  t.match(message, f, 'the message names the file')
  t.match(message, 'services.product.healthChek: unknown key')
  t.match(message, 'services.product.healthCheck.intervalMs: must be >= 50')
  t.match(message, 'routes[0].service: unknown service "review"')
})

t.test('unparseable YAML and JSON name the file and the format', async (t) => {
  const y = file('broken.yaml', 'services:\n  product: [unclosed\n')
  const yi = issuesOf(() => loadConfigFile(y, {}))
  t.match(yi[0]!.message, /not valid YAML/)
  const j = file('broken.json', '{"services": ')
  const ji = issuesOf(() => loadConfigFile(j, {}))
  t.match(ji[0]!.message, /not valid JSON/)
})

t.test('a missing file is named', async (t) => {
  const missing = join(dir, 'does-not-exist.yaml')
  let err: unknown
  try { loadConfigFile(missing, {}) } catch (e) { err = e }
  t.ok(err instanceof ConfigError)
  t.match((err as ConfigError).message, missing)
  t.match((err as ConfigError).issues[0]!.message, /cannot read config file .*does-not-exist\.yaml \(ENOENT\)/)
})

t.test('the SPEC example config is valid', async (t) => {
  const f = file('spec-example.yaml', `
server:
  host: 0.0.0.0
  port: 8080
  bodyLimitBytes: 1048576
  shutdownGraceMs: 10000
admin:
  host: 127.0.0.1
  port: 9901
  token: \${GATEWAY_ADMIN_TOKEN}
lattice:
  region: us-east-1
  endpoint: http://127.0.0.1:4566
  refreshIntervalMs: 60000
services:
  product:
    timeoutMs: 2000
    retry:
      methods: [GET, HEAD, OPTIONS]
      onStatus: [500, 502, 503, 504]
    healthCheck:
      path: /health
      intervalMs: 1000
      timeoutMs: 500
      unhealthyThreshold: 2
      healthyThreshold: 2
    circuitBreaker:
      errorThresholdPercentage: 50
      volumeThreshold: 10
      resetTimeoutMs: 5000
    failback: auto
    origins:
      primary: http://127.0.0.1:9101
      secondary: http://127.0.0.1:9102
  review:
    deployments:
      blue:
        primary: http://127.0.0.1:9201
        secondary: http://127.0.0.1:9202
      green:
        primary:
          lattice: { service: review-green, port: 80, protocol: http, auth: none }
    traffic: { blue: 100, green: 0 }
    sticky: { header: x-user-id }
  inventory:
    origins:
      primary: http://127.0.0.1:9301
      secondary: http://127.0.0.1:9302
routes:
  - type: proxy
    prefix: /api/products
    service: product
    rewritePrefix: /products
  - type: aggregate
    method: GET
    path: /products/:id/details
    timeoutMs: 1500
    sections:
      product:   { service: product,   path: "/products/{id}", required: true }
      reviews:   { service: review,    path: "/reviews?productId={id}" }
      inventory: { service: inventory, path: "/inventory/{id}" }
`)
  const config = loadConfigFile(f, {})
  t.equal(config.admin.token, '')
  t.equal(config.lattice.endpoint, 'http://127.0.0.1:4566')
  t.strictSame(config.services.review!.traffic, { blue: 100, green: 0 })
  t.strictSame(config.services.review!.deployments.green!.primary, { lattice: { service: 'review-green', port: 80, protocol: 'http', auth: 'none' } })
  t.equal(config.routes.length, 2)

  const bad = issuesOf(() => validateConfig({ lattice: { endpoint: 'not a url' }, services: { product } }))
  t.equal(bad.length, 1)
  t.equal(bad[0]!.path, 'lattice.endpoint')
})

t.test('a routes mapping with a length key is a "must be a list" error, not a crash', async (t) => {
  const err = t.throws(() => validateConfig({ services: [], routes: { length: ':' } })) as unknown
  t.ok(err instanceof ConfigError, 'a ConfigError')
  t.same((err as ConfigError).issues.map((i) => i.path).sort(), ['routes', 'services'])
})
