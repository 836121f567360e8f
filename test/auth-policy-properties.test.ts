// Compiled policies (src/auth/policy.ts) against a small, straightforward
// reference evaluator written from SPEC §14's words: random statements,
// random requests and claims, the same decision every time. Plus every
// operator positive and negative by example, and the glob matcher against
// a RegExp reference.
import t from 'tap'
import fc from 'fast-check'
import { compilePolicy, compileGlob, type PolicyInput, type Decision } from '../src/auth/policy.js'
import { POLICY_OPERATORS, type PolicyStatement, type PolicyOperator } from '../src/config/schema.js'
import { validateConfig } from '../src/config/load.js'

// ---- the reference ----

function refGlob (pattern: string, value: string): boolean {
  const re = [...pattern].map((c) => c === '*' ? '[\\s\\S]*' : c === '?' ? '[\\s\\S]' : c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')).join('')
  return new RegExp(`^${re}$`).test(value)
}

function refValues (key: string, input: PolicyInput): string[] {
  const asStrings = (v: unknown, scope: boolean): string[] => {
    if (v === undefined || v === null) return []
    if (Array.isArray(v)) return v.filter((e) => ['string', 'number', 'boolean'].includes(typeof e)).map(String)
    if (typeof v === 'string') return scope ? v.split(' ').filter((w) => w.length > 0) : [v]
    if (typeof v === 'number' || typeof v === 'boolean') return [String(v)]
    return []
  }
  if (key === 'request:method') return [input.method]
  if (key === 'request:path') return [input.path]
  if (key === 'source:ip') return [input.ip]
  if (key.startsWith('request:header/')) return asStrings(input.headers[key.split('/')[1]!.toLowerCase()], false)
  if (key.startsWith('request:query/')) return asStrings(input.query[key.slice(14)], false)
  const claim = key.slice(4)
  return asStrings(input.claims[claim], claim === 'scope')
}

function refOperator (op: PolicyOperator, values: string[], configured: string[]): boolean {
  const negated = op.includes('Not')
  const base = op.replace('Not', '')
  const one = (v: string, c: string): boolean =>
    base === 'StringEquals' ? v === c : base === 'StringEqualsIgnoreCase' ? v.toLowerCase() === c.toLowerCase() : refGlob(c, v)
  const any = values.some((v) => configured.some((c) => one(v, c)))
  return negated ? !any : any
}

function refMatches (s: PolicyStatement, input: PolicyInput): boolean {
  if (s.methods !== undefined && !s.methods.includes(input.method)) return false
  if (s.paths !== undefined && !s.paths.some((p) => refGlob(p, input.path))) return false
  for (const [op, keys] of Object.entries(s.condition)) {
    for (const [key, configured] of Object.entries(keys)) {
      if (!refOperator(op as PolicyOperator, refValues(key, input), configured)) return false
    }
  }
  return true
}

function refEvaluate (statements: PolicyStatement[], input: PolicyInput): Decision {
  if (statements.some((s) => s.effect === 'Deny' && refMatches(s, input))) return 'explicit-deny'
  if (statements.some((s) => s.effect === 'Allow' && refMatches(s, input))) return 'allow'
  return 'implicit-deny'
}

// ---- generators: small alphabets so values, cases and wildcards collide ----

const word = fc.string({ unit: fc.constantFrom('a', 'b', 'A', 'B', '-'), maxLength: 3 })
const pattern = fc.string({ unit: fc.constantFrom('a', 'b', 'A', '*', '?', '-', '.'), maxLength: 4 })
const KEYS = ['jwt:sub', 'jwt:scope', 'jwt:groups', 'jwt:n', 'jwt:absent', 'request:method', 'request:path', 'request:header/x-t', 'request:header/X-T', 'request:query/q', 'source:ip']
const METHODS = ['GET', 'POST', 'PUT', 'DELETE']
const configured = fc.array(fc.oneof(word, pattern), { minLength: 1, maxLength: 3 })
const condition = fc.dictionary(fc.constantFrom(...POLICY_OPERATORS), fc.dictionary(fc.constantFrom(...KEYS), configured, { maxKeys: 2, noNullPrototype: true }), { maxKeys: 3, noNullPrototype: true })
const statement: fc.Arbitrary<PolicyStatement> = fc.record({
  effect: fc.constantFrom('Allow', 'Deny'),
  methods: fc.option(fc.uniqueArray(fc.constantFrom(...METHODS), { minLength: 1 }), { nil: undefined }),
  paths: fc.option(fc.array(pattern.map((p) => '/' + p), { minLength: 1, maxLength: 2 }), { nil: undefined }),
  condition
}, { requiredKeys: ['effect', 'condition'] }) as fc.Arbitrary<PolicyStatement>
const claimValue = fc.oneof(word, fc.array(word, { maxLength: 3 }), fc.integer({ min: 0, max: 3 }), fc.boolean(), fc.constant({ nested: 'a' }), word.map((w) => `${w} a b-A`))
const input: fc.Arbitrary<PolicyInput> = fc.record({
  method: fc.constantFrom(...METHODS),
  path: word.map((w) => '/' + w),
  headers: fc.record({ 'x-t': fc.oneof(word, fc.array(word, { minLength: 1, maxLength: 2 })) }, { requiredKeys: [] }),
  query: fc.record({ q: fc.oneof(word, fc.array(word, { maxLength: 2 })) }, { requiredKeys: [] }),
  ip: fc.constantFrom('127.0.0.1', 'a', '::1'),
  claims: fc.record({ sub: claimValue, scope: claimValue, groups: claimValue, n: claimValue }, { requiredKeys: [] })
})

t.test('compiled policies decide as the reference does', async (t) => {
  fc.assert(fc.property(fc.array(statement, { minLength: 1, maxLength: 4 }), fc.array(input, { minLength: 1, maxLength: 5 }), (statements, inputs) => {
    const policy = compilePolicy(statements)
    for (const i of inputs) {
      const got = policy(i)
      const want = refEvaluate(statements, i)
      if (got !== want) throw new Error(`${JSON.stringify(statements)} on ${JSON.stringify(i)}: ${got}, reference ${want}`)
    }
  }), { numRuns: 3000 })
  t.pass('3000 random policies, each on up to 5 requests')
})

t.test('the loader turns the same statements, as a user writes them, into the same policy', async (t) => {
  fc.assert(fc.property(fc.array(statement, { minLength: 1, maxLength: 3 }), input, (statements, i) => {
    // As written: a single value instead of a one-element list.
    const written = statements.map((s) => ({ ...s, condition: Object.fromEntries(Object.entries(s.condition).map(([op, keys]) => [op, Object.fromEntries(Object.entries(keys).map(([k, v]) => [k, v.length === 1 ? v[0] : v]))])) }))
    const config = validateConfig({ services: { s: { origins: { primary: 'http://127.0.0.1:1' } } }, auth: { policies: { p: written } } })
    const got = compilePolicy(config.auth!.policies.p!)(i)
    if (got !== refEvaluate(statements, i)) throw new Error(`${JSON.stringify(written)} on ${JSON.stringify(i)}`)
  }), { numRuns: 500 })
  t.pass('500 policies through validateConfig')
})

t.test('globs match as the RegExp reference, and stay fast on hostile input', async (t) => {
  const text = fc.string({ unit: fc.constantFrom('a', 'b', '/', '*', '?', 'é'), maxLength: 12 })
  fc.assert(fc.property(text, text, (p, v) => compileGlob(p)(v) === refGlob(p, v)), { numRuns: 20000 })
  // A RegExp would backtrack on this for a very long time; the matcher is
  // bounded by pattern × value length.
  const hostile = compileGlob('*a*a*a*a*a*a*a*a*b')
  t.equal(hostile('a'.repeat(20000)), false, 'many stars against a long value: answered')
  t.equal(hostile('a'.repeat(20000) + 'b'), true)
})

t.test('every operator, positive and negative, by example', async (t) => {
  const claims = { sub: 'Alice', scope: 'reviews:read reviews:write', groups: ['eng', 'ops'] }
  const req: PolicyInput = { method: 'POST', path: '/api/reviews/7', headers: { 'x-tenant': 'acme-eu' }, query: { v: '2' }, ip: '10.1.2.3', claims }
  const allows = (op: string, key: string, value: string | string[]): boolean =>
    compilePolicy([{ effect: 'Allow', condition: { [op]: { [key]: Array.isArray(value) ? value : [value] } } }])(req) === 'allow'
  const cases: Array<[string, string, string | string[], boolean, string]> = [
    ['StringEquals', 'jwt:sub', 'Alice', true, 'equal'],
    ['StringEquals', 'jwt:sub', 'alice', false, 'case differs'],
    ['StringEquals', 'jwt:scope', 'reviews:write', true, 'one word of scope'],
    ['StringEquals', 'jwt:scope', 'reviews:read reviews:write', false, 'scope is compared word by word'],
    ['StringEquals', 'jwt:groups', ['x', 'ops'], true, 'a list claim and a list of values: any pair'],
    ['StringEquals', 'jwt:missing', 'x', false, 'a missing key never equals'],
    ['StringNotEquals', 'jwt:sub', 'Bob', true, 'not equal'],
    ['StringNotEquals', 'jwt:sub', ['Bob', 'Alice'], false, 'equal to one of the values'],
    ['StringNotEquals', 'jwt:groups', 'ops', false, 'an element equals'],
    ['StringNotEquals', 'jwt:missing', 'x', true, 'a missing key satisfies a negated operator'],
    ['StringEqualsIgnoreCase', 'jwt:sub', 'ALICE', true, 'case ignored'],
    ['StringEqualsIgnoreCase', 'jwt:sub', 'alicia', false, 'other value'],
    ['StringNotEqualsIgnoreCase', 'jwt:sub', 'aLiCe', false, 'equal ignoring case'],
    ['StringNotEqualsIgnoreCase', 'jwt:sub', 'bob', true, 'not equal ignoring case'],
    ['StringNotEqualsIgnoreCase', 'request:header/x-missing', 'x', true, 'missing header'],
    ['StringLike', 'request:header/X-Tenant', 'acme-*', true, 'header glob (key name case-insensitive)'],
    ['StringLike', 'request:header/x-tenant', 'acme-??', true, '? is one character'],
    ['StringLike', 'request:header/x-tenant', 'acme-?', false, '? is exactly one'],
    ['StringLike', 'request:path', '/api/*', true, '* crosses /'],
    ['StringLike', 'request:method', 'P*', true, 'method'],
    ['StringLike', 'source:ip', '10.1.*', true, 'ip'],
    ['StringLike', 'request:query/v', '[0-9]', false, 'brackets are literal'],
    ['StringNotLike', 'source:ip', '192.168.*', true, 'not like'],
    ['StringNotLike', 'jwt:scope', '*:write', false, 'a scope word is like it'],
    ['StringNotLike', 'request:query/none', '*', true, 'missing query parameter']
  ]
  for (const [op, key, value, expected, why] of cases) t.equal(allows(op, key, value), expected, `${op} ${key} ${JSON.stringify(value)}: ${why}`)
})

t.test('explicit Deny wins over Allow; nothing matching is an implicit deny', async (t) => {
  const p = compilePolicy([
    { effect: 'Allow', methods: ['GET', 'POST'], paths: ['/api/*'], condition: {} },
    { effect: 'Deny', condition: { StringEquals: { 'jwt:sub': ['banned'] } } }
  ])
  const req = (sub: string, method = 'GET', path = '/api/x'): PolicyInput => ({ method, path, headers: {}, query: {}, ip: '1.2.3.4', claims: { sub } })
  t.equal(p(req('alice')), 'allow')
  t.equal(p(req('banned')), 'explicit-deny', 'Deny beats the matching Allow')
  t.equal(p(req('alice', 'DELETE')), 'implicit-deny', 'method not allowed by any statement')
  t.equal(p(req('alice', 'GET', '/other')), 'implicit-deny', 'path not allowed')
})
