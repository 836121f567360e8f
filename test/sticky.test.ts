/**
 * Sticky cohorts (SPEC §3 `sticky`): a user keeps their colour over
 * repeated calls; raising green's weight only moves users blue -> green,
 * lowering it only moves them back; a cookie works as the key too; a
 * request without the key is spread by weight at random.
 */
import t from 'tap'
import { startGateway, type TestGateway } from './helpers/gateway.js'
import { binomialRange, client, colourOf, colourUpstream, cutoverConfig, cutoverService, pool, putTraffic } from './helpers/colours.js'
import { bucketOf } from '../src/upstream/service.js'

t.teardown(() => client.close())

interface Teardown { teardown(fn: () => unknown): void }

async function blueGreen (t: Teardown, sticky: Record<string, string>, traffic: Record<string, number>): Promise<TestGateway> {
  const blue = await colourUpstream('blue')
  const green = await colourUpstream('green')
  const g = await startGateway(cutoverConfig(cutoverService({ blue: { primary: blue.url }, green: { primary: green.url } }, { traffic, sticky })))
  t.teardown(async () => { await g.close(); await blue.close(); await green.close() })
  return g
}

const USERS = Array.from({ length: 200 }, (_, i) => `user-${i}`)

/** Each user's colour, asking `times` times; throws if a user was served two colours. */
async function colours (url: string, users: string[], headersOf: (user: string) => Record<string, string>, times = 1): Promise<Map<string, string>> {
  const seen = new Map<string, Set<string>>()
  await pool(users.length * times, 16, async (i) => {
    const user = users[i % users.length]!
    const a = await colourOf(url, headersOf(user))
    if (a.colour === null) throw new Error(`request for ${user} answered ${a.status}`)
    let s = seen.get(user)
    if (s === undefined) seen.set(user, s = new Set())
    s.add(a.colour)
  })
  const out = new Map<string, string>()
  for (const [user, s] of seen) {
    if (s.size !== 1) throw new Error(`${user} was served ${[...s].join(' and ')}`)
    out.set(user, [...s][0]!)
  }
  return out
}

const sorted = (m: Map<string, string>): Array<[string, string]> => [...m].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
const greens = (m: Map<string, string>): Set<string> => new Set([...m].filter(([, c]) => c === 'green').map(([u]) => u))

t.test('header key: users keep their colour, cohorts follow the buckets, and movement is monotonic', async (t) => {
  const g = await blueGreen(t, { header: 'x-user-id' }, { blue: 70, green: 30 })
  const byHeader = (u: string): Record<string, string> => ({ 'x-user-id': u })

  const at30 = await colours(g.url, USERS, byHeader, 2)
  t.pass('every user got the same colour on both calls')
  // Buckets fill deployments in config order: blue takes buckets 0-69, green 70-99.
  t.same([...at30].filter(([u, c]) => (bucketOf(u) >= 70 ? 'green' : 'blue') !== c), [], 'green at 30 is exactly buckets 70-99')

  await putTraffic(g.adminUrl, { blue: 40, green: 60 })
  const at60 = await colours(g.url, USERS, byHeader, 2)
  const g30 = greens(at30)
  const g60 = greens(at60)
  t.same([...g30].filter((u) => !g60.has(u)), [], 'every user green at 30 is green at 60')
  t.same(USERS.filter((u) => at60.get(u) === 'blue' && at30.get(u) !== 'blue'), [], 'every user blue at 60 was blue at 30')
  t.ok(g60.size > g30.size, `raising green moved users onto it (${g30.size} -> ${g60.size} of ${USERS.length})`)
  t.same([...at60].filter(([u, c]) => (bucketOf(u) >= 40 ? 'green' : 'blue') !== c), [], 'green at 60 is exactly buckets 40-99')

  // Lowering green again moves exactly the users it took, and only back.
  await putTraffic(g.adminUrl, { blue: 70, green: 30 })
  const back = await colours(g.url, USERS, byHeader)
  t.same(sorted(back), sorted(at30), 'back at 30, every user has their colour from the first round')

  // All on green, then all back: everyone moves, and returns.
  await putTraffic(g.adminUrl, { blue: 0, green: 100 })
  t.equal(greens(await colours(g.url, USERS, byHeader)).size, USERS.length, 'at 0/100 every user is green')
})

t.test('weights that do not sum to 100 scale the buckets, still monotonic', async (t) => {
  const g = await blueGreen(t, { header: 'x-user-id' }, { blue: 3, green: 1 })
  const byHeader = (u: string): Record<string, string> => ({ 'x-user-id': u })
  const a = await colours(g.url, USERS, byHeader)
  t.same([...a].filter(([u, c]) => (bucketOf(u) >= 75 ? 'green' : 'blue') !== c), [], '3:1 puts buckets 75-99 on green')
  await putTraffic(g.adminUrl, { blue: 1, green: 1 })
  const b = await colours(g.url, USERS, byHeader)
  t.same([...greens(a)].filter((u) => !greens(b).has(u)), [], 'every user green at 1/4 is green at 1/2')
  t.same([...b].filter(([u, c]) => (bucketOf(u) >= 50 ? 'green' : 'blue') !== c), [], '1:1 puts buckets 50-99 on green')
})

t.test('cookie key: users keep their colour; quoted and unquoted values are the same user', async (t) => {
  const g = await blueGreen(t, { cookie: 'uid' }, { blue: 70, green: 30 })
  const users = USERS.slice(0, 120)
  const at30 = await colours(g.url, users, (u) => ({ cookie: `theme=dark; uid=${u}; lang=en` }), 2)
  t.same([...at30].filter(([u, c]) => (bucketOf(u) >= 70 ? 'green' : 'blue') !== c), [], 'cookie users follow their bucket')
  const quoted = await colours(g.url, users, (u) => ({ cookie: `uid="${u}"` }))
  t.same(sorted(quoted), sorted(at30), 'a quoted cookie value is the same key')

  await putTraffic(g.adminUrl, { blue: 40, green: 60 })
  const at60 = await colours(g.url, users, (u) => ({ cookie: `uid=${u}` }))
  t.same([...greens(at30)].filter((u) => !greens(at60).has(u)), [], 'every cookie user green at 30 is green at 60')
  t.ok(greens(at60).size > greens(at30).size, 'some cookie users moved to green')
})

t.test('without the key, requests are spread by weight at random', async (t) => {
  const g = await blueGreen(t, { header: 'x-user-id' }, { blue: 50, green: 50 })
  const n = 300
  const [lo, hi] = binomialRange(n, 0.5)
  for (const [name, headers] of [['no header', {}], ['empty header', { 'x-user-id': '' }], ['another header', { 'x-other-id': 'user-1' }]] as const) {
    const answers = await pool(n, 16, () => colourOf(g.url, headers))
    t.equal(answers.filter((a) => a.status !== 200).length, 0, `${name}: every request answered`)
    const green = answers.filter((a) => a.colour === 'green').length
    t.ok(green >= lo && green <= hi, `${name}: green served ${green}/${n}, accepted [${lo}, ${hi}]`)
  }
  // The contrast: one key, many calls, one colour.
  const one = await pool(100, 16, () => colourOf(g.url, { 'x-user-id': 'user-7' }))
  t.equal(new Set(one.map((a) => a.colour)).size, 1, 'a keyed user gets one colour on all 100 calls')
})

t.test('cookie service: a request without the cookie is spread at random', async (t) => {
  const g = await blueGreen(t, { cookie: 'uid' }, { blue: 50, green: 50 })
  const n = 400
  const [lo, hi] = binomialRange(n, 0.5)
  const answers = await pool(n, 16, () => colourOf(g.url, { cookie: 'theme=dark; uidx=user-1' }))
  const green = answers.filter((a) => a.colour === 'green').length
  t.ok(green >= lo && green <= hi, `green served ${green}/${n}, accepted [${lo}, ${hi}]`)
})
