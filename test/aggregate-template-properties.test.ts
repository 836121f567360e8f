/**
 * Aggregate section path templates (src/aggregate/plan.ts), property-tested
 * with fast-check: `/reviews?productId={id}` is split once at start-up
 * (compileTemplate) and filled per request with the route's parameters
 * (fillTemplate). Whatever a client puts in a parameter stays inside its
 * slot: no `/`, `?`, `#` or `%` of its own reaches the section call, the
 * fixed text of the template is kept as written, decoding a slot gives the
 * value back, and a value that would turn a whole path segment into `.` or
 * `..` (which an upstream would resolve, leaving the section's path) makes
 * the fill refuse (null) instead. Ends with the same case end to end: the
 * aggregate answers 400 and the upstream is never called.
 */
import t from 'tap'
import fc from 'fast-check'
import assert from 'node:assert/strict'
import { request } from 'undici'
import { compileTemplate, fillTemplate, type PathTemplate } from '../src/aggregate/plan.js'
import { startUpstream, json } from './helpers/upstream.js'
import { startGateway, fastService } from './helpers/gateway.js'

const RUNS = { numRuns: 300 }

/**
 * fc.assert, with the report made printable: counterexamples hold control
 * characters and odd Unicode that would otherwise garble the TAP stream.
 */
function holds<Ts extends unknown[]> (property: fc.IProperty<Ts>, params: fc.Parameters<Ts>): void {
  const out = fc.check(property, params)
  if (out.failed) throw new Error((fc.defaultReportMessage(out) ?? 'property failed').replace(/[^\x20-\x7e\n]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`).slice(0, 6000))
}

// --- reference model ---

// encodeURIComponent leaves exactly these alone; every other UTF-8 byte is %XX.
const UNRESERVED = /^[A-Za-z0-9\-_.!~*'()]$/
const utf8 = new TextEncoder()

function encodeModel (value: string): string {
  let out = ''
  for (const ch of value) {
    if (UNRESERVED.test(ch)) out += ch
    else for (const b of utf8.encode(ch)) out += '%' + b.toString(16).toUpperCase().padStart(2, '0')
  }
  return out
}

/** The path part (before `?` or `#`) has a segment that is exactly `.` or `..`. */
function hasDotSegment (target: string): boolean {
  return target.split(/[?#]/)[0]!.split('/').some((s) => s === '.' || s === '..')
}

function fillModel (literals: readonly string[], names: readonly string[], values: Readonly<Record<string, string | undefined>>): string | null {
  let out = literals[0]!
  names.forEach((n, i) => { out += encodeModel(values[n] ?? '') + literals[i + 1]! })
  return hasDotSegment(out) ? null : out
}

/** Route parameters as the router hands them over: own properties of a null-prototype object. */
function paramsObject (entries: ReadonlyArray<readonly [string, string]>): Record<string, string> {
  const o = Object.create(null) as Record<string, string>
  for (const [k, v] of entries) o[k] = v
  return o
}

const build = (literals: readonly string[], names: readonly string[]): string =>
  literals[0]! + names.map((n, i) => `{${n}}${literals[i + 1]!}`).join('')

const count = (s: string, ch: string): number => s.split(ch).length - 1

// --- generators ---

// Pieces of the fixed text a config author writes (no `{`: that opens a placeholder).
const literalPiece = fc.constantFrom('/', 'a', 'items', 'v1', '.', '..', '.json', '?', 'q=', '&', '=', '#', '%20', '-', '_', '~', '}', ':', ';', '@', '+', ',', 'é')
const literal = fc.array(literalPiece, { maxLength: 5 }).map((ps) => ps.join(''))
// Section paths start with "/" (the loader's rule).
const firstLiteral = literal.map((l) => '/' + l)
const paramName = fc.oneof(
  fc.stringMatching(/^[A-Za-z0-9_]{1,6}$/),
  fc.constantFrom('id', 'constructor', '__proto__', 'toString', '', 'a b', '{', 'é', 'x.y')
)
// What clients put in parameters: delimiters, escapes, dots, unicode (well-formed:
// the router refuses a path whose escapes do not decode to UTF-8).
const hostilePiece = fc.constantFrom(
  '/', '//', '.', '..', '%', '%2F', '%2e', '%25', '%%', '?', '#', '&', '=', '+', ' ', ';', ':', '@', ',', '$', '{id}', '{', '}',
  '\\', '\0', '\n', '\r\n', '\t', 'é', 'e\u0301', '😀', '\uFEFF', '\u2028', 'a', 'Z', '0', '-', '_', '~', '!', '*', "'", '(', ')'
)
const paramValue = fc.oneof(
  fc.array(hostilePiece, { maxLength: 6 }).map((ps) => ps.join('')),
  fc.string({ unit: 'grapheme', maxLength: 8 }),
  fc.constantFrom('.', '..', '...', '')
)

interface Case {
  literals: string[]
  names: string[]
  values: Record<string, string>
  /** Names deliberately left out of the params object. */
  missing: Set<string>
}

const templateCase: fc.Arbitrary<Case> = fc.record({
  first: firstLiteral,
  slots: fc.array(fc.record({ name: paramName, after: literal, value: paramValue, present: fc.oneof({ arbitrary: fc.constant(true), weight: 5 }, { arbitrary: fc.constant(false), weight: 1 }) }), { maxLength: 5 })
}).map(({ first, slots }) => {
  const entries: Array<[string, string]> = []
  const missing = new Set<string>()
  for (const s of slots) {
    // The first occurrence of a name decides its value (a name can repeat in a template).
    if (entries.some(([k]) => k === s.name) || missing.has(s.name)) continue
    if (s.present) entries.push([s.name, s.value])
    else missing.add(s.name)
  }
  return { literals: [first, ...slots.map((s) => s.after)], names: slots.map((s) => s.name), values: paramsObject(entries), missing }
})

// --- properties ---

t.test('compileTemplate splits a template into its literals and placeholder names', async (t) => {
  holds(fc.property(templateCase, ({ literals, names }) => {
    const tpl = compileTemplate(build(literals, names))
    assert.deepStrictEqual(tpl.literals, literals)
    assert.deepStrictEqual(tpl.params, names)
  }), RUNS)
  t.pass(`${RUNS.numRuns} generated templates`)
})

t.test('compileTemplate loses nothing from any string: literals and placeholders rebuild it exactly', async (t) => {
  const anyText = fc.oneof(
    fc.string({ unit: 'grapheme', maxLength: 30 }),
    fc.array(fc.constantFrom('{', '}', '{id}', '{}', 'a', '/', '{{', '}}', '?x='), { maxLength: 10 }).map((ps) => ps.join(''))
  )
  holds(fc.property(anyText, (path) => {
    const { literals, params } = compileTemplate(path)
    if (literals.length !== params.length + 1) return false
    if (build(literals, params) !== path) return false
    // Only the last literal may hold a `{` (one with no `}` after it).
    return literals.slice(0, -1).every((l) => !l.includes('{')) && !/\{[^}]*\}/.test(literals.at(-1)!) && params.every((p) => !p.includes('}'))
  }), RUNS)
  t.pass('rebuilt exactly')
})

t.test('fillTemplate matches the reference model: each value percent-encoded as UTF-8 between the fixed literals', async (t) => {
  holds(fc.property(templateCase, ({ literals, names, values }) => {
    const tpl: PathTemplate = compileTemplate(build(literals, names))
    return fillTemplate(tpl, values) === fillModel(literals, names, values)
  }), RUNS)
  t.pass('model agrees')
})

t.test('one slot: the value stays inside it, encoded, and decodes back to itself', async (t) => {
  const slotChars = /^(?:[A-Za-z0-9\-_.!~*'()]|%[0-9A-F]{2})*$/
  holds(fc.property(firstLiteral, literal, paramValue, (before, after, value) => {
    const out = fillTemplate(compileTemplate(`${before}{p}${after}`), paramsObject([['p', value]]))
    if (out === null) {
      // Refused only when the filled path really has a dot-segment.
      return hasDotSegment(before + encodeModel(value) + after)
    }
    if (!out.startsWith(before) || !out.endsWith(after) || out.length < before.length + after.length) return false
    const slot = out.slice(before.length, out.length - after.length)
    return slotChars.test(slot) && !/[/?#]/.test(slot) && decodeURIComponent(slot) === value
  }), RUNS)
  t.pass('contained')
})

t.test('parameters add no delimiter of their own: every / ? # & = ; + : @ , { } and space comes from the template', async (t) => {
  const delimiters = ['/', '?', '#', '&', '=', ';', '+', ' ', ':', '@', ',', '{', '}', '\\']
  holds(fc.property(templateCase, ({ literals, names, values }) => {
    const out = fillTemplate(compileTemplate(build(literals, names)), values)
    if (out === null) return true
    const fixed = literals.join('')
    return delimiters.every((d) => count(out, d) === count(fixed, d))
  }), RUNS)
  t.pass('delimiters preserved')
})

t.test('a filled path never has a "." or ".." segment, and a refusal means the values would have made one', async (t) => {
  // Templates without dot-segments of their own, like every section path the loader accepts.
  const clean = templateCase.filter(({ literals, names }) => !hasDotSegment(build(literals, names).replace(/\{[^}]*\}/g, 'x')))
  holds(fc.property(clean, ({ literals, names, values }) => {
    const out = fillTemplate(compileTemplate(build(literals, names)), values)
    if (out !== null) return !hasDotSegment(out)
    const raw = literals[0]! + names.map((n, i) => encodeModel(values[n] ?? '') + literals[i + 1]!).join('')
    return hasDotSegment(raw)
  }), RUNS)
  t.pass('no dot-segment ever leaves')
})

t.test('a parameter missing from the params object fills an empty slot; a value is never re-expanded', async (t) => {
  holds(fc.property(templateCase, ({ literals, names, values, missing }) => {
    const tpl = compileTemplate(build(literals, names))
    const withEmpty = paramsObject([...Object.entries(values), ...[...missing].map((m) => [m, ''] as const)])
    return fillTemplate(tpl, values) === fillTemplate(tpl, withEmpty)
  }), RUNS)
  t.equal(fillTemplate(compileTemplate('/a/{id}/b'), paramsObject([['id', '{id}']])), '/a/%7Bid%7D/b', 'a value that looks like a placeholder is just text')
  t.equal(fillTemplate(compileTemplate('/a/{id}/b'), paramsObject([])), '/a//b')
})

t.test('examples: dot-only values are refused where they would form a whole segment, kept elsewhere', async (t) => {
  const f = (tpl: string, v: Record<string, string>): string | null => fillTemplate(compileTemplate(tpl), paramsObject(Object.entries(v)))
  t.equal(f('/items/{id}/meta', { id: '..' }), null)
  t.equal(f('/items/{id}/meta', { id: '.' }), null)
  t.equal(f('/items/{id}', { id: '..' }), null, 'at the end of the path too')
  t.equal(f('/items/{a}{b}/meta', { a: '.', b: '.' }), null, 'two slots making one segment')
  t.equal(f('/items/{id}/meta', { id: '...' }), '/items/.../meta', 'three dots are a name, not a dot-segment')
  t.equal(f('/items/{id}.json', { id: '..' }), '/items/...json')
  t.equal(f('/items?id={id}', { id: '..' }), '/items?id=..', 'the query is not a path')
  t.equal(f('/items/x{id}', { id: '..' }), '/items/x..')
  t.equal(f('/items/{id}', { id: '../admin' }), '/items/..%2Fadmin', 'a slash never splits the slot')
})

t.test('end to end: a route parameter that would make a ".." segment in a section call is a 400, and no upstream is called', async (t) => {
  const items = await startUpstream('items', (req, res) => json(res, 200, { url: req.url }))
  t.teardown(() => items.close())
  const g = await startGateway({
    services: { items: fastService({ primary: items.url }) },
    routes: [{ type: 'aggregate', path: '/files/:name.json', sections: { meta: { service: 'items', path: '/items/{name}/meta', required: true } } }]
  })
  t.teardown(() => g.close())
  const get = async (path: string): Promise<{ status: number, body: Record<string, unknown> }> => {
    const r = await request(g.url + path)
    return { status: r.statusCode, body: await r.body.json() as Record<string, unknown> }
  }
  const ok = await get('/files/abc.json')
  t.equal(ok.status, 200)
  t.strictSame(ok.body, { meta: { url: '/items/abc/meta' } })
  const sectionCalls = (): number => items.requests.length
  const before = sectionCalls()
  for (const path of ['/files/...json', '/files/..json', '/files/%2E%2E.json', '/files/%2e.json']) {
    const r = await get(path)
    t.equal(r.status, 400, `${path}: 400`)
    t.equal(r.body.code, 'GW_BAD_REQUEST', `${path}: GW_BAD_REQUEST`)
  }
  t.equal(sectionCalls(), before, 'the upstream saw none of them')
  const dots = await get('/files/.x.json')
  t.strictSame(dots.body, { meta: { url: '/items/.x/meta' } }, 'a value merely starting with a dot goes through')
})
