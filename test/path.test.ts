// The path normaliser (src/path.ts): examples, then properties over
// generated hostile paths (fast-check).
import t from 'tap'
import fc from 'fast-check'
import { compilePathPolicy, normaliseTarget, type CompiledPathPolicy } from '../src/path.js'

const PREFIXES = ['/api/products', '/api/reviews', '/api', '/static/v1/files']
const reject = compilePathPolicy({ prefixes: PREFIXES, encodedSlashes: 'reject' })
const keep = compilePathPolicy({ prefixes: PREFIXES, encodedSlashes: 'keep' })

const ok = (target: string, policy: CompiledPathPolicy = reject): string => {
  const r = normaliseTarget(target, policy)
  if (!r.ok) throw new Error(`${target} refused: ${r.problem}`)
  return r.path
}
const problem = (target: string, policy: CompiledPathPolicy = reject): string | null => {
  const r = normaliseTarget(target, policy)
  return r.ok ? null : r.problem
}

t.test('examples', async (t) => {
  t.equal(ok('/api/products/42?x=1'), '/api/products/42?x=1', 'a normal path is untouched')
  t.equal(ok('/'), '/')
  t.equal(ok('/api/products/a/../b'), '/api/products/b', '.. inside the route resolves')
  t.equal(ok('/api/products/./42/.'), '/api/products/42/', '. segments go; a trailing one leaves a slash')
  t.equal(ok('/api//products///42'), '/api/products/42', 'duplicate slashes collapse')
  t.equal(ok('//evil.example/x'), '/evil.example/x', 'a leading // is not an authority')
  t.equal(ok('/api/products/%41%7e%2D'), '/api/products/A~-', 'unreserved escapes are decoded')
  t.equal(ok('/api/products/%c3%a9'), '/api/products/%C3%A9', 'other escapes keep their encoding, upper-case hex')
  t.equal(ok('/api/products/a/../b?q=../../%2f&r='), '/api/products/b?q=../../%2f&r=', 'the query is never touched')
  t.equal(ok('/api/x/../products/1'), '/api/products/1', 'resolving into a route is fine: it is routed as what it is')
  t.equal(ok('/api/products/a%2fb', keep), '/api/products/a%2Fb', 'keep: %2F forwarded, still encoded')

  t.equal(problem('/api/products/..%2f..%2fadmin'), 'encoded-slash')
  t.equal(problem('/api/products/..%2f..%2fadmin', keep), 'dot-segment-parameter', 'keep: a segment hiding dots is refused')
  t.equal(problem('/api/products/a%2f..%2f..%2fadmin', keep), 'dot-segment-parameter')
  t.equal(problem('/api/products/../../admin'), 'escapes-prefix')
  t.equal(problem('/api/products/%2e%2e/reviews/1'), 'escapes-prefix', 'encoded dots are dots')
  t.equal(problem('/api/products/%2E./x'), 'escapes-prefix')
  t.equal(problem('/api/products/..'), 'escapes-prefix')
  t.equal(problem('/api/../..'), 'escapes-prefix')
  t.equal(problem('/x/../..'), 'escapes-prefix', 'nothing climbs above /')
  t.equal(problem('/api/products/..;jsessionid=1/admin'), 'dot-segment-parameter')
  t.equal(problem('/api/products/.;/x'), 'dot-segment-parameter')
  t.equal(problem('/api/products/a\\..\\admin'), 'backslash')
  t.equal(problem('/api/products/%5c'), 'backslash')
  t.equal(problem('/api/products/%252e%252e/admin'), 'double-encoded')
  t.equal(problem('/api/products/%252F'), 'double-encoded')
  t.equal(problem('/api/products/%253z'), null, '%25 then a non-escape is just a percent sign')
  t.equal(problem('/api/products/%zz'), 'bad-escape')
  t.equal(problem('/api/products/%4'), 'bad-escape')
  t.equal(problem('/api/products/%'), 'bad-escape')
  t.equal(problem('/api/products/%00'), 'nul')
  t.equal(problem('/api/products/x#y'), 'fragment')
  t.equal(problem('/api/products/x?y#z'), 'fragment')
  t.equal(problem('*'), 'not-origin-form')
  t.equal(problem('http://evil/api/products'), 'not-origin-form')
  t.equal(problem(''), 'not-origin-form')
})

// --- properties ---

// Pieces attackers and sloppy clients put in paths.
const piece = fc.constantFrom(
  '/', '//', '.', '..', './', '../', '%2e', '%2E', '%2e%2e', '.%2e', '%2f', '%2F', '%5c', '%5C', '\\', ';', ';x',
  'a', 'b', 'admin', 'products', 'api', 'reviews', '%25', '%252e', '%252f', '%00', '%41', '%7e', '%c3%a9', '%', '%z', '~', '-', '_', '@', ':', '=', '+'
)
const hostilePath = fc.array(piece, { maxLength: 16 }).map((ps) => '/' + ps.join(''))
const prefix = fc.constantFrom(...PREFIXES)
const query = fc.option(fc.string({ unit: fc.constantFrom('a', '=', '&', '.', '/', '%', '2', 'f', '?', '+'), maxLength: 12 }), { nil: undefined })
const policies = fc.constantFrom(reject, keep)

const pathPart = (target: string): string => target.split('?')[0]!

function hasDotSegment (path: string): boolean {
  return pathPart(path).split('/').some((s) => s === '.' || s === '..' || s.split('%2F').some((p) => p === '.' || p === '..' || p.startsWith('.;') || p.startsWith('..;')))
}

t.test('a normalised path never holds a dot-segment, a double slash, a backslash or a bad escape', async (t) => {
  fc.assert(fc.property(hostilePath, query, policies, (p, q, policy) => {
    const r = normaliseTarget(q === undefined ? p : `${p}?${q}`, policy)
    if (!r.ok) return true
    const path = pathPart(r.path)
    return path.startsWith('/') && !hasDotSegment(path) && !path.includes('//') && !path.includes('\\') &&
      /^(?:[^%]|%[0-9A-F]{2})*$/.test(path) && !/%(2E|5C|00|41)/.test(path)
  }), { numRuns: 3000 })
  t.pass('property held')
})

t.test('a path under a proxy prefix never leaves it', async (t) => {
  fc.assert(fc.property(prefix, hostilePath, policies, (pre, rest, policy) => {
    const r = normaliseTarget(pre + rest, policy)
    if (!r.ok) return true
    const path = pathPart(r.path)
    return path === pre || path === pre + '/' || path.startsWith(pre + '/')
  }), { numRuns: 3000 })
  t.pass('property held')
})

t.test('normalising twice changes nothing', async (t) => {
  fc.assert(fc.property(fc.oneof(hostilePath, prefix.chain((pre) => hostilePath.map((r) => pre + r))), query, policies, (p, q, policy) => {
    const r = normaliseTarget(q === undefined ? p : `${p}?${q}`, policy)
    if (!r.ok) return true
    const again = normaliseTarget(r.path, policy)
    return again.ok && again.path === r.path
  }), { numRuns: 3000 })
  t.pass('property held')
})

t.test('the query string is kept byte for byte', async (t) => {
  fc.assert(fc.property(hostilePath, fc.string({ maxLength: 30 }).filter((q) => !q.includes('#')), (p, q) => {
    const r = normaliseTarget(`${p}?${q}`, reject)
    return !r.ok || r.path.slice(r.path.indexOf('?') + 1) === q
  }), { numRuns: 2000 })
  t.pass('property held')
})

// pchar minus '%' (no escapes to decode) and minus '.'-only segments.
const safeSegment = fc.string({ unit: fc.constantFrom(...'abcXYZ019-._~!$&\'()*+,;=:@'.split('')), minLength: 1, maxLength: 8 })
  .filter((s) => { const head = s.split(';')[0]; return head !== '.' && head !== '..' })
const safePath = fc.tuple(fc.array(safeSegment, { maxLength: 6 }), fc.boolean())
  .map(([segs, slash]) => '/' + segs.join('/') + (slash && segs.length > 0 ? '/' : ''))

t.test('a safe path is left unchanged', async (t) => {
  fc.assert(fc.property(safePath, query, policies, (p, q, policy) => {
    const target = q === undefined ? p : `${p}?${q}`
    const r = normaliseTarget(target, policy)
    return r.ok && r.path === target
  }), { numRuns: 3000 })
  t.pass('property held')
})

t.test('the result agrees with WHATWG URL dot-segment resolution when nothing is refused', async (t) => {
  // A reference model: for plain paths (no escapes, no empty segments) the
  // normaliser resolves dots exactly as a browser does.
  const plain = fc.array(fc.constantFrom('a', 'b', 'c', '.', '..'), { minLength: 1, maxLength: 10 }).map((s) => '/' + s.join('/'))
  const none = compilePathPolicy({ prefixes: [], encodedSlashes: 'reject' })
  fc.assert(fc.property(plain, (p) => {
    const r = normaliseTarget(p, none)
    if (!r.ok) return r.problem === 'escapes-prefix'
    return r.path === new URL(p, 'http://x').pathname
  }), { numRuns: 2000 })
  t.pass('property held')
})
