/**
 * Compiling an aggregate route (src/aggregate/plan.ts) and the checks a
 * section answer goes through (src/aggregate/execute.ts): path templates,
 * URL-encoding, forwarded header sets, the splice prefixes, JSON media
 * types and JSON validation. No sockets: these are the pure parts.
 */
import t from 'tap'
import { validateConfig } from '../src/config/load.js'
import { Registry } from '../src/upstream/registry.js'
import { Metrics } from '../src/metrics.js'
import { compileAggregate, compileTemplate, fillTemplate, SECTION_OUTCOMES } from '../src/aggregate/plan.js'
import { isJson, isJsonType } from '../src/aggregate/execute.js'
import type { AggregateRoute } from '../src/config/schema.js'

t.test('path templates split into literals and params, and fill URL-encoded', async (t) => {
  const tpl = compileTemplate('/reviews?productId={id}&lang={lang}')
  t.same(tpl, { literals: ['/reviews?productId=', '&lang=', ''], params: ['id', 'lang'] })
  t.equal(fillTemplate(tpl, { id: 'a/b c', lang: 'de&x=1' }), '/reviews?productId=a%2Fb%20c&lang=de%26x%3D1')
  t.equal(fillTemplate(compileTemplate('/products/{id}'), { id: 'café' }), '/products/caf%C3%A9')
  t.equal(fillTemplate(compileTemplate('/static'), {}), '/static')
  t.equal(fillTemplate(compileTemplate('/{a}{b}'), { a: '1', b: '2' }), '/12')
  t.equal(fillTemplate(compileTemplate('/x/{missing}'), {}), '/x/', 'a missing value is empty')
})

t.test('a route compiles into sections in config order with their splice prefixes and header set', async (t) => {
  const config = validateConfig({
    services: {
      product: { origins: { primary: 'http://127.0.0.1:1' } },
      review: { origins: { primary: 'http://127.0.0.1:2' } }
    },
    routes: [{
      type: 'aggregate',
      path: '/p/:id',
      timeoutMs: 900,
      forwardHeaders: ['Authorization', 'authorization', 'Connection', 'Host', 'Content-Length', 'x-request-id', 'Accept'],
      sections: {
        product: { service: 'product', path: '/products/{id}', required: true },
        'reviews-v2': { service: 'review', path: '/reviews?p={id}' }
      }
    }]
  }, 'test')
  const registry = new Registry(config)
  t.teardown(() => registry.close())
  const metrics = new Metrics()
  const plan = compileAggregate(config.routes[0] as AggregateRoute, (n) => registry.get(n), metrics)
  t.equal(plan.label, '/p/:id')
  t.equal(plan.timeoutMs, 900)
  t.equal(plan.maxSectionBytes, 1048576, 'default section limit is 1 MiB')
  t.same(plan.forwardHeaders, ['authorization', 'accept'], 'lower-cased, de-duplicated, connection-level names dropped')
  t.equal(plan.forwardsAccept, true)
  t.same(plan.sections.map((s) => [s.key, s.serviceName, s.required, s.prefix.toString()]), [
    ['product', 'product', true, '{"product":'],
    ['reviews-v2', 'review', false, ',"reviews-v2":']
  ])
  t.equal(plan.sections[1]!.service, registry.get('review'))
  t.same(Object.keys(plan.sections[0]!.counters!), [...SECTION_OUTCOMES])
  const text = await metrics.registry.metrics()
  t.match(text, 'gateway_aggregate_sections_total{route="/p/:id",section="reviews-v2",outcome="deadline"} 0')

  const bare = compileAggregate(config.routes[0] as AggregateRoute, (n) => registry.get(n))
  t.equal(bare.counters, null, 'no metrics source: nothing to count')
  t.equal(bare.sections[0]!.counters, null)
  t.throws(() => compileAggregate(config.routes[0] as AggregateRoute, () => undefined), /unknown service/)
})

t.test('JSON media types', async (t) => {
  for (const ct of ['application/json', 'application/json; charset=utf-8', 'Application/JSON', 'application/problem+json', 'application/vnd.api+json;v=2', ' application/json ']) {
    t.ok(isJsonType(ct), ct)
  }
  for (const ct of [undefined, '', 'text/plain', 'text/json-ish', 'application/jsonp', '+json', 'application/x-ndjson', 'text/html; charset=utf-8']) {
    t.notOk(isJsonType(ct), String(ct))
  }
})

t.test('JSON validation: UTF-8 JSON text only', async (t) => {
  for (const s of ['{}', '[]', '1', '"x"', 'null', ' {"a": [1, 2, {"b": "é"}]}\n', 'true']) t.ok(isJson(Buffer.from(s)), s)
  for (const s of ['', ' ', '{', '{"a":}', 'undefined', "{'a':1}", '{"a":1} x', '\uFEFF{}']) t.notOk(isJson(Buffer.from(s)), JSON.stringify(s))
  t.notOk(isJson(Buffer.from([0x22, 0xc3, 0x28, 0x22])), 'invalid UTF-8 inside a string')
})
