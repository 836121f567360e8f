/**
 * Compiling an aggregate route (src/aggregate/plan.ts) and the checks a
 * section answer goes through (src/aggregate/execute.ts): path templates,
 * URL-encoding, forwarded header sets, the splice prefixes, JSON media
 * types and JSON validation (property-tested against JSON.parse). No
 * sockets: these are the pure parts.
 */
import t from 'tap'
import fc from 'fast-check'
import { validateConfig } from '../src/config/load.js'
import { Registry } from '../src/upstream/registry.js'
import { Metrics } from '../src/metrics.js'
import { compileAggregate, compileTemplate, fillTemplate, SECTION_OUTCOMES } from '../src/aggregate/plan.js'
import { isJson, isJsonType } from '../src/aggregate/execute.js'
import { isJsonText } from '../src/aggregate/json-check.js'
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

/** What JSON.parse says about a text: the reference the validator must agree with. */
function parses (s: string): boolean {
  try {
    JSON.parse(s)
    return true
  } catch {
    return false
  }
}

t.test('the JSON validator agrees with JSON.parse on hand-picked edge cases', async (t) => {
  const cases = [
    '0', '-0', '-', '01', '1.', '.5', '1.5e', '1e+', '1E-7', '-12.5e+3', '1e5.5', '+1', 'Infinity', 'NaN', '0x10',
    '""', '"\\"', '"\\\\"', '"\\u00e9"', '"\\u00g9"', '"\\u00"', '"\\x41"', '"a\tb"', '"\\/"', '"unterminated', '"é"',
    'true', 'tru', 'truee', 'false', 'fals', 'null', 'nul', 'nulL',
    '[]', '[,]', '[1,]', '[1 2]', '[[[]]]', '[[]', '[]]', '{}', '{,}', '{"a"}', '{"a":}', '{"a":1,}', '{"a":1 "b":2}', '{a:1}',
    '{"a":[1,{"b":null}],"c":"d"}', ' \t\n\r{} \n', '\f{}', '{}\u00a0', '\ufeff{}', '[1]x', '1 2', '', '   ',
    '{"a":1}{"b":2}', '["\u0001"]', '["\u001f"]', '["\u007f"]', '[-]', '[--1]', '[1e01]', '[0e0]', '[1.0E+00]'
  ]
  for (const c of cases) t.equal(isJsonText(Buffer.from(c)), parses(c), JSON.stringify(c))
  const deep = '['.repeat(100000) + ']'.repeat(100000)
  t.equal(isJsonText(Buffer.from(deep)), true, 'deep nesting does not overflow the stack')
  t.equal(isJsonText(Buffer.from(deep.slice(0, -1))), false)
})

t.test('property: every JSON.stringify output is valid, whatever the whitespace', async () => {
  fc.assert(fc.property(fc.jsonValue(), fc.constantFrom(undefined, 0, 2, '\t', ' \r\n '), (v, space) => {
    const s = JSON.stringify(v, null, space as string | number | undefined)
    return isJsonText(Buffer.from(s)) === parses(s)
  }), { numRuns: 500 })
})

t.test('property: mutated JSON is valid exactly when JSON.parse accepts it', async () => {
  const significant = fc.constantFrom(...'{}[]",:\\ -+.eE0123456789tfnrulasx\u00e9\n\t\u0001'.split(''))
  const edit = fc.record({ at: fc.nat(), kind: fc.constantFrom('insert', 'delete', 'replace'), ch: significant })
  fc.assert(fc.property(fc.jsonValue(), fc.array(edit, { minLength: 1, maxLength: 3 }), (v, edits) => {
    let s = JSON.stringify(v)
    for (const e of edits) {
      const at = s.length === 0 ? 0 : e.at % (s.length + (e.kind === 'insert' ? 1 : 0))
      if (e.kind === 'insert') s = s.slice(0, at) + e.ch + s.slice(at)
      else if (e.kind === 'delete') s = s.slice(0, at) + s.slice(at + 1)
      else s = s.slice(0, at) + e.ch + s.slice(at + 1)
    }
    return isJsonText(Buffer.from(s)) === parses(s)
  }), { numRuns: 3000 })
})
