/**
 * Section shaping (src/aggregate/shape.ts, SPEC §12): pick, then select,
 * then rename. Each rule is checked on known answers, then property-tested
 * with fast-check against a straightforward reference implementation
 * written here from the SPEC's words (no compiled tree, no shared code),
 * over JSON values whose keys come from a small alphabet (so paths hit)
 * that includes `__proto__`.
 */
import t from 'tap'
import fc from 'fast-check'
import { applyShape, compileShape, compileSelect, pickPath, renameKeys, selectTree } from '../src/aggregate/shape.js'
import { parseFields } from '../src/aggregate/fields.js'
import { GatewayError } from '../src/errors.js'

const RUNS = { numRuns: 400 }

function holds<Ts extends unknown[]> (property: fc.IProperty<Ts>, params: fc.Parameters<Ts>): void {
  const out = fc.check(property, params)
  if (out.failed) throw new Error((fc.defaultReportMessage(out) ?? 'property failed').slice(0, 6000))
}

// --- reference implementation ---

type Json = null | boolean | number | string | Json[] | { [k: string]: Json }
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)
const own = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k)
const put = (o: Record<string, unknown>, k: string, v: unknown): void => { Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true }) }

function refPick (v: unknown, path: string[]): unknown {
  for (const seg of path) {
    if (typeof v !== 'object' || v === null || !own(v, seg)) return null
    v = (v as Record<string, unknown>)[seg]
  }
  return v
}

/** Select, straight from the words: arrays element-wise, scalars kept, absent paths left out, keys in select order. */
function refSelect (v: unknown, paths: string[][]): unknown {
  if (Array.isArray(v)) return v.map((x) => refSelect(x, paths))
  if (!isObject(v)) return v
  const out: Record<string, unknown> = {}
  const firsts: string[] = []
  for (const p of paths) if (!firsts.includes(p[0]!)) firsts.push(p[0]!)
  for (const k of firsts) {
    if (!own(v, k)) continue
    const subs = paths.filter((p) => p[0] === k)
    put(out, k, subs.some((p) => p.length === 1) ? v[k] : refSelect(v[k], subs.map((p) => p.slice(1))))
  }
  return out
}

/** Rename: each key mapped; when two land on one name the later one wins (and sits where it landed last). */
function refRename (v: unknown, rename: Record<string, string>, top = true): unknown {
  // An array's objects are renamed; an array inside an array is not an object: kept.
  if (Array.isArray(v)) return top ? v.map((x) => refRename(x, rename, false)) : v
  if (!isObject(v)) return v
  const pairs: Array<[string, unknown]> = []
  for (const k of Object.keys(v)) {
    const to = own(rename, k) ? rename[k]! : k
    const at = pairs.findIndex(([name]) => name === to)
    if (at !== -1) pairs.splice(at, 1)
    pairs.push([to, v[k]])
  }
  const out: Record<string, unknown> = {}
  for (const [k, x] of pairs) put(out, k, x)
  return out
}

// --- arbitraries ---

const KEYS = ['a', 'b', 'c', 'items', '__proto__'] as const
const key = fc.constantFrom(...KEYS)
const { value: json } = fc.letrec<{ value: Json }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null), fc.boolean(), fc.integer(), fc.string({ maxLength: 4 }),
    fc.array(tie('value'), { maxLength: 3 }),
    fc.array(fc.tuple(key, tie('value')), { maxLength: 4 }).map((entries) => {
      const o: Record<string, Json> = {}
      for (const [k, v] of entries) put(o, k, v)
      return o
    })
  )
}))
const path = fc.array(key, { minLength: 1, maxLength: 3 })
const paths = fc.array(path, { minLength: 1, maxLength: 4 })
const renames = fc.array(fc.tuple(key, key), { maxLength: 3 }).map((pairs) => {
  const o: Record<string, string> = {}
  for (const [from, to] of pairs) put(o, from, to)
  return o
})
const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b)

// --- known answers ---

t.test('pick takes the value at a dotted path, null when absent (not a failure)', async (t) => {
  t.same(pickPath({ data: { reviews: [1, 2] } }, ['data', 'reviews']), [1, 2])
  t.equal(pickPath({ data: {} }, ['data', 'reviews']), null)
  t.equal(pickPath('text', ['a']), null)
  t.equal(pickPath({ a: [{ b: 1 }] }, ['a', '0', 'b']), 1, 'an array index is a path step')
})

t.test('select keeps dotted paths nested as they were, on an object or each object of an array', async (t) => {
  const tree = compileSelect([['a', 'b'], ['d']])
  t.same(selectTree({ a: { b: 1, c: 2 }, d: 3, e: 4 }, tree), { a: { b: 1 }, d: 3 })
  t.same(selectTree([{ a: { b: 1, c: 2 }, e: 1 }, { d: 'x' }, 7], tree), [{ a: { b: 1 } }, { d: 'x' }, 7])
  t.same(selectTree({ items: [{ id: 1, x: 2 }, { id: 2 }] }, compileSelect([['items', 'id']])), { items: [{ id: 1 }, { id: 2 }] }, 'arrays are walked at every level')
  t.same(selectTree({ a: { b: 1, c: 2 } }, compileSelect([['a', 'b'], ['a']])), { a: { b: 1, c: 2 } }, 'a shorter path keeps all of it')
  t.same(selectTree({ a: 1 }, compileSelect([['z']])), {}, 'absent paths are left out')
})

t.test('rename renames top-level keys (of each object of an array); the later key wins a clash', async (t) => {
  const r = new Map([['inStock', 'available']])
  t.same(renameKeys({ inStock: true, qty: 3 }, r), { available: true, qty: 3 })
  t.same(renameKeys([{ inStock: 1 }, 'x'], r), [{ available: 1 }, 'x'])
  t.same(renameKeys({ inStock: 1, available: 2 }, r), { available: 2 })
  t.same(renameKeys({ inner: { inStock: 1 } }, r), { inner: { inStock: 1 } }, 'only the top level')
})

t.test('the order is pick, then select, then rename; no shaping is null (bytes pass through)', async (t) => {
  const shape = compileShape({ pick: 'data', select: ['id', 'stock.count'], rename: { id: 'sku' } })!
  t.same(applyShape(shape, { data: { id: 'A1', name: 'n', stock: { count: 2, where: 'x' } } }), { sku: 'A1', stock: { count: 2 } })
  t.equal(compileShape({}), null)
})

t.test('__proto__ is an ordinary key: nothing reaches a prototype', async (t) => {
  const v = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}') as Record<string, unknown>
  const out = applyShape(compileShape({ select: ['__proto__', 'a'], rename: { a: '__proto__' } })!, v) as Record<string, unknown>
  t.equal(JSON.stringify(out), '{"__proto__":1}')
  t.equal(Object.getPrototypeOf(out), Object.prototype)
  t.equal(({} as Record<string, unknown>).polluted, undefined)
})

// --- properties against the reference ---

t.test('property: pick equals the reference (null for absent, never undefined)', async () => {
  holds(fc.property(json, path, (v, p) => same(pickPath(v, p), refPick(v, p) ?? null)), RUNS)
})

t.test('property: select equals the reference, is idempotent and only keeps what was there', async () => {
  holds(fc.property(json, paths, (v, ps) => {
    const tree = compileSelect(ps)
    const got = selectTree(v, tree)
    if (!same(got, refSelect(v, ps))) return false
    if (!same(selectTree(got, tree), got)) return false
    // Only keys that were there, and only selected ones.
    return !isObject(v) || Object.keys(got as object).every((k) => own(v, k) && ps.some((p) => p[0] === k))
  }), RUNS)
})

t.test('property: rename equals the reference and keeps the number of distinct values\' keys bounded', async () => {
  holds(fc.property(json, renames, (v, r) => {
    const got = renameKeys(v, new Map(Object.entries(r)))
    if (!same(got, refRename(v, r))) return false
    return !isObject(v) || Object.keys(got as object).length <= Object.keys(v).length
  }), RUNS)
})

t.test('property: applyShape is pick, then select, then rename', async () => {
  holds(fc.property(json, fc.option(path, { nil: undefined }), fc.option(paths, { nil: undefined }), fc.option(renames, { nil: undefined }), (v, p, ps, r) => {
    const shape = compileShape({ pick: p?.join('.'), select: ps?.map((x) => x.join('.')), rename: r })
    if (shape === null) return p === undefined && ps === undefined && r === undefined
    let want: unknown = v
    if (p !== undefined) want = refPick(want, p)
    if (ps !== undefined) want = refSelect(want, ps)
    if (r !== undefined) want = refRename(want, r)
    return same(applyShape(shape, v), want)
  }), RUNS)
})

// --- client fields parsing (src/aggregate/fields.ts) ---

const PLAN = { sections: [{ key: 'product', deps: [] }, { key: 'reviews', deps: [] }, { key: 'inventory', deps: [0] }] }

t.test('fields: named sections shown, what they wait for called, paths trimmed', async (t) => {
  t.equal(parseFields(PLAN, undefined), null, 'absent: everything')
  const f = parseFields(PLAN, 'inventory,product.name , product.price')!
  t.same(f.shown, [true, false, true])
  t.same(f.called, [true, false, true])
  t.same([...f.trim[0]!.keys()], ['name', 'price'])
  t.equal(f.trim[2], null, 'a bare name keeps the whole section')
  const g = parseFields(PLAN, ['inventory'])!
  t.same(g.shown, [false, false, true])
  t.same(g.called, [true, false, true], 'a dependency is called but not shown')
  t.same(parseFields(PLAN, 'product,product.name')!.trim[0], null, 'whole wins over a path')
})

t.test('fields: unknown sections, empty lists and empty names are 400 naming the valid sections', async (t) => {
  for (const bad of ['nope', 'product,nope.x', '', ' , ', 'product..name', '.x']) {
    let err: unknown
    try { parseFields(PLAN, bad) } catch (e) { err = e }
    t.ok(err instanceof GatewayError && err.code === 'GW_BAD_REQUEST', `${JSON.stringify(bad)} is refused`)
    if (bad.includes('nope') || bad.trim().replace(/,/g, '').trim() === '') t.match((err as Error).message, 'valid sections: product, reviews, inventory')
  }
})
