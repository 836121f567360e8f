/**
 * How the console's assets are served (routes/ui.ts), over plain HTTP, no
 * browser: admin listener only, a strict Content-Security-Policy on every
 * answer, no inline script, build-keyed immutable assets, revalidated
 * index, br/gzip, the libraries served from the package with no bare
 * import left for the browser to resolve.
 */
import t from 'tap'
import { brotliDecompressSync, gunzipSync } from 'node:zlib'
import { request } from 'undici'
import { startGateway, fastService } from './helpers/gateway.js'
import { startUpstream } from './helpers/upstream.js'
import { CONTENT_SECURITY_POLICY } from '../routes/ui.js'

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: Buffer }

async function get (url: string, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await request(url, { headers })
  return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) }
}

t.test('the console is served on the admin listener with a strict CSP', async (t) => {
  const up = await startUpstream('product')
  const g = await startGateway({ admin: { token: 'ui-token' }, services: { product: fastService({ primary: up.url }) }, routes: [{ type: 'proxy', prefix: '/p', service: 'product' }] })
  t.teardown(async () => { await g.close(); await up.close() })

  t.match(CONTENT_SECURITY_POLICY, /default-src 'self'/)
  t.notMatch(CONTENT_SECURITY_POLICY, /unsafe-inline|unsafe-eval|\*/, 'no inline script, no eval, no wildcard')

  const index = await get(`${g.adminUrl}/ui/`)
  t.equal(index.status, 200, 'no token needed for the page itself')
  t.match(index.headers['content-type'], /^text\/html/)
  t.equal(index.headers['content-security-policy'], CONTENT_SECURITY_POLICY)
  t.equal(index.headers['x-content-type-options'], 'nosniff')
  t.equal(index.headers['x-frame-options'], 'DENY')
  t.equal(index.headers['cache-control'], 'no-cache', 'the page is revalidated on every load')
  const html = index.body.toString('utf8')
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)]
  t.ok(scripts.length > 0)
  for (const s of scripts) {
    t.match(s[1], /\ssrc="\/ui\/[0-9a-f]{12}\/app\.js"/, 'every script is a file of this origin')
    t.equal(s[2]!.trim(), '', 'no inline script')
  }
  t.notMatch(html, /%BUILD%/, 'the build id is filled in')
  t.notMatch(html, /https?:\/\//, 'nothing from another origin')
  t.notMatch(html, /\sstyle=/, 'no inline style')
  const build = /\/ui\/([0-9a-f]{12})\/app\.js/.exec(html)![1]!

  const again = await get(`${g.adminUrl}/ui/`, { 'if-none-match': index.headers.etag as string })
  t.equal(again.status, 304, 'an unchanged page is not sent again')

  t.equal((await get(`${g.adminUrl}/ui`)).status, 308)
  t.equal((await get(`${g.adminUrl}/ui`)).headers.location, '/ui/')

  // Every asset the page names is served, compressed when asked, cached for good.
  const named = [...html.matchAll(/(?:href|src)="(\/ui\/[^"]+)"/g)].map((m) => m[1]!)
  t.same(named.map((r) => r.split('/').slice(3).join('/')).sort(),
    ['app.js', 'style.css', 'vendor/hooks.mjs', 'vendor/htm.mjs', 'vendor/preact.mjs', 'vendor/uplot.css'])
  // uPlot is imported by app.js once signed in.
  const refs = [...named, `/ui/${build}/vendor/uplot.mjs`]
  for (const ref of refs) {
    const plain = await get(`${g.adminUrl}${ref}`)
    t.equal(plain.status, 200, ref)
    t.equal(plain.headers['cache-control'], 'public, max-age=31536000, immutable', `${ref} is immutable`)
    t.equal(plain.headers['content-security-policy'], CONTENT_SECURITY_POLICY)
    t.equal(plain.headers['content-encoding'], undefined, 'no encoding unless asked')
    const br = await get(`${g.adminUrl}${ref}`, { 'accept-encoding': 'gzip, deflate, br' })
    t.equal(br.headers['content-encoding'], 'br')
    t.ok(brotliDecompressSync(br.body).equals(plain.body), `${ref}: br decodes to the asset`)
    t.ok(br.body.length < plain.body.length, `${ref}: smaller compressed`)
    const gz = await get(`${g.adminUrl}${ref}`, { 'accept-encoding': 'gzip, br;q=0' })
    t.equal(gz.headers['content-encoding'], 'gzip')
    t.ok(gunzipSync(gz.body).equals(plain.body), `${ref}: gzip decodes to the asset`)
    t.match(plain.headers['content-type'], ref.endsWith('.css') ? /^text\/css/ : /^text\/javascript/)
  }

  const js = async (name: string): Promise<string> => (await get(`${g.adminUrl}/ui/${build}/${name}`)).body.toString('utf8')
  const app = await js('app.js')
  for (const m of app.matchAll(/^import .* from '([^']+)'/gm)) t.match(m[1], /^\.\/vendor\/[a-z]+\.mjs$/, `app.js imports ${m[1]} by path`)
  t.notMatch(app, /https?:\/\/|\beval\(|new Function/, 'app.js: no remote URL, no eval')
  t.same([...app.matchAll(/import\('([^']+)'\)/g)].map((m) => m[1]), ['./vendor/uplot.mjs'], 'the one dynamic import is by path')
  t.notMatch(await js('vendor/hooks.mjs'), /from\s*"preact"/, 'no bare specifier left for the browser')
  t.match(await js('vendor/hooks.mjs'), /from"\.\/preact\.mjs"/)
  t.match(await js('vendor/uplot.mjs'), /export default uPlot;\n$/, 'uPlot as an ES module')
  t.notMatch(await js('vendor/preact.mjs'), /sourceMappingURL/, 'no source-map reference to a file not served')

  const stale = await get(`${g.adminUrl}/ui/000000000000/app.js`)
  t.equal(stale.status, 404)
  t.equal(JSON.parse(stale.body.toString('utf8')).code, 'GW_NOT_FOUND')
  t.equal((await get(`${g.adminUrl}/ui/${build}/..%2F..%2Fui%2F${build}%2Fapp.js`)).status, 404, 'no path escapes the asset table')

  // The public listener has no console.
  const pub = await get(`${g.url}/ui/`)
  t.equal(pub.status, 404)
  t.equal(JSON.parse(pub.body.toString('utf8')).code, 'GW_NO_ROUTE')
  // The admin API still needs its token.
  t.equal((await get(`${g.adminUrl}/admin/services`)).status, 401)
})
