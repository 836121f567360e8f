// The error catalogue (src/errors.ts) and the README's error table must
// name the same codes with the same statuses: clients code against both.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { ErrorCodes, GatewayError } from '../src/errors.js'

const readme = readFileSync(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8')
const section = readme.slice(readme.indexOf('\n## Errors'), readme.indexOf('\n## ', readme.indexOf('\n## Errors') + 1))

t.test('every catalogue code is documented with its status, and nothing else is', async (t) => {
  const rows = [...section.matchAll(/^\| ([^|]+) \| `(GW_[A-Z_]+)` \|/gm)].map((m) => ({ status: m[1]!.trim(), code: m[2]! }))
  t.ok(rows.length >= 10, 'the README has an error table')
  t.same(rows.map((r) => r.code).sort(), Object.keys(ErrorCodes).sort(), 'same codes in README and catalogue')
  for (const { status, code } of rows) {
    const expected = ErrorCodes[code as keyof typeof ErrorCodes]
    if (expected === 0) t.match(status, /section/, `${code}: status comes from the section`)
    else t.equal(Number(status.split(' ')[0]), expected, `${code}: documented status ${expected}`)
  }
})

t.test('a GatewayError renders the SPEC §6 body', async (t) => {
  const e = new GatewayError('GW_OVERLOADED', 'busy', { headers: { 'retry-after': '1' } })
  t.same(e.toJSON(), { statusCode: 503, code: 'GW_OVERLOADED', error: 'Service Unavailable', message: 'busy' })
  const s = new GatewayError('GW_SECTION_STATUS', 'section product answered 404', { statusCode: 404, section: 'product' })
  t.same(s.toJSON(), { statusCode: 404, code: 'GW_SECTION_STATUS', error: 'Not Found', message: 'section product answered 404', section: 'product' })
})
