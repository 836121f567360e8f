/**
 * The operator console (SPEC §15): `GET /ui/` and its static assets, on the
 * admin listener only. Nothing is fetched from elsewhere: the page, its
 * script and stylesheet come from `ui/`, and the three libraries it uses
 * (Preact, htm, uPlot) from this package's own `node_modules`, under fixed
 * paths (`/ui/<build>/vendor/*`) so the page needs neither an import map
 * (an inline script) nor a CDN.
 *
 * The assets are read, rewritten and compressed once, on the first request
 * for the console (compression in the thread pool, off the event loop): a
 * gateway whose console nobody opens spends nothing on it. `<build>` is a digest of every asset, so everything under it is cached
 * as immutable; `index.html` is revalidated (ETag) on every load, so a new
 * version of the package is picked up at once.
 *
 * Every answer carries a strict Content-Security-Policy: scripts, styles
 * and connections from this origin only, no inline script, no eval, no
 * framing. The console calls the admin API with the bearer token it keeps
 * in `sessionStorage`; the assets themselves hold no secret and need no
 * token (the admin listener should only be reachable by operators anyway).
 */
import { createHash } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { brotliCompress, constants as zlib, gzip } from 'node:zlib'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../src/errors.js'

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join('; ')

const SECURITY_HEADERS = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin'
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml'
}

interface Asset {
  type: string
  etag: string
  identity: Buffer
  br: Buffer
  gzip: Buffer
}

interface Bundle {
  build: string
  index: Asset
  /** Path below `/ui/<build>/` -> asset. */
  files: Map<string, Asset>
}

export interface UiRouteOptions {
  /** The folder holding index.html, app.js and style.css; default: the package's `ui/`. */
  dir?: string
}

/** The package's `ui/` folder, from `routes/ui.ts` (sources) or `dist/routes/ui.js` (built). */
function findUiDir (): string {
  const here = dirname(fileURLToPath(import.meta.url))
  for (const candidate of [join(here, '..', 'ui'), join(here, '..', '..', 'ui')]) {
    if (existsSync(join(candidate, 'index.html'))) return candidate
  }
  throw new Error(`the console's assets (ui/index.html) are missing next to ${here}`)
}

/**
 * The browser modules of the console's libraries, as served: Preact's hooks
 * import `preact` by bare name, rewritten to the sibling path; uPlot ships
 * an ES module only unminified, so its minified browser build is wrapped
 * into one (`export default uPlot`). Source-map comments are dropped (the
 * maps are not served).
 */
function vendorFiles (): Map<string, string> {
  const require = createRequire(import.meta.url)
  const read = (p: string): string => readFileSync(p, 'utf8').replace(/\n\/\/# sourceMappingURL=\S+\s*$/, '\n')
  const preact = read(require.resolve('preact'))
  const hooksSource = read(require.resolve('preact/hooks'))
  const hooks = hooksSource.replace(/from\s*"preact"/g, 'from"./preact.mjs"')
  if (hooks === hooksSource) throw new Error('preact/hooks no longer imports "preact": check the console vendor rewrite')
  const htm = read(join(dirname(require.resolve('htm')), 'htm.mjs'))
  const uplotDir = dirname(require.resolve('uplot'))
  const uplotIife = read(join(uplotDir, 'uPlot.iife.min.js'))
  if (!uplotIife.includes('var uPlot=')) throw new Error('uPlot\'s browser build no longer defines uPlot: check the console vendor wrap')
  return new Map([
    ['vendor/preact.mjs', preact],
    ['vendor/hooks.mjs', hooks],
    ['vendor/htm.mjs', htm],
    ['vendor/uplot.mjs', `${uplotIife}\nexport default uPlot;\n`],
    ['vendor/uplot.css', read(join(uplotDir, 'uPlot.min.css'))]
  ])
}

function extOf (path: string): string {
  const i = path.lastIndexOf('.')
  return i === -1 ? '' : path.slice(i)
}

const brotliAsync = promisify(brotliCompress)
const gzipAsync = promisify(gzip)

/**
 * Compression runs in libuv's thread pool: brotli at quality 11 takes a
 * few hundred milliseconds for these files, which must not stall the event
 * loop the proxied requests share.
 */
async function makeAsset (path: string, text: string): Promise<Asset> {
  const identity = Buffer.from(text, 'utf8')
  const [br, gz] = await Promise.all([
    brotliAsync(identity, { params: { [zlib.BROTLI_PARAM_QUALITY]: 11, [zlib.BROTLI_PARAM_SIZE_HINT]: identity.length } }),
    gzipAsync(identity, { level: 9 })
  ])
  return {
    type: TYPES[extOf(path)] ?? 'application/octet-stream',
    etag: `"${createHash('sha256').update(identity).digest('base64url').slice(0, 22)}"`,
    identity,
    br,
    gzip: gz
  }
}

/** Reads every asset, names the build by their digest, compresses each once. */
async function buildBundle (dir: string): Promise<Bundle> {
  const sources = new Map<string, string>()
  for (const name of ['app.js', 'style.css']) sources.set(name, readFileSync(join(dir, name), 'utf8'))
  for (const [name, text] of vendorFiles()) sources.set(name, text)
  const digest = createHash('sha256')
  for (const [name, text] of sources) digest.update(name).update('\0').update(text).update('\0')
  const build = digest.digest('hex').slice(0, 12)
  const html = readFileSync(join(dir, 'index.html'), 'utf8')
  if (!html.includes('%BUILD%')) throw new Error('ui/index.html must reference its assets under /ui/%BUILD%/')
  const names = [...sources.keys()]
  const assets = await Promise.all(names.map((name) => makeAsset(name, sources.get(name)!)))
  const files = new Map(names.map((name, i) => [name, assets[i]!]))
  return { build, index: await makeAsset('index.html', html.replaceAll('%BUILD%', build)), files }
}

/** br, then gzip, then none, by the client's `Accept-Encoding` (q=0 honoured). */
function pickEncoding (header: string | undefined): 'br' | 'gzip' | null {
  if (header === undefined) return null
  const accepted = new Set<string>()
  for (const part of header.split(',')) {
    const [name, ...params] = part.trim().toLowerCase().split(';')
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='))
    if (q !== undefined && Number(q.slice(2)) === 0) continue
    if (name !== undefined && name !== '') accepted.add(name)
  }
  if (accepted.has('br')) return 'br'
  if (accepted.has('gzip')) return 'gzip'
  return null
}

function send (request: FastifyRequest, reply: FastifyReply, asset: Asset, cacheControl: string): FastifyReply {
  reply.headers(SECURITY_HEADERS)
  reply.header('cache-control', cacheControl)
  reply.header('etag', asset.etag)
  reply.header('vary', 'accept-encoding')
  reply.type(asset.type)
  const ifNoneMatch = request.headers['if-none-match']
  if (ifNoneMatch !== undefined && ifNoneMatch.split(',').some((t) => t.trim().replace(/^W\//, '') === asset.etag)) {
    return reply.code(304).send()
  }
  const encoding = pickEncoding(request.headers['accept-encoding'])
  if (encoding !== null) reply.header('content-encoding', encoding)
  return reply.send(encoding === 'br' ? asset.br : encoding === 'gzip' ? asset.gzip : asset.identity)
}

export default async function uiRoutes (fastify: FastifyInstance, opts: UiRouteOptions): Promise<void> {
  // Built once, on the first request; concurrent first requests share it. A
  // failed build (assets missing) is not kept: the next request tries again.
  let bundle: Promise<Bundle> | null = null
  const load = (): Promise<Bundle> => {
    if (bundle === null) {
      bundle = buildBundle(opts.dir ?? findUiDir())
      bundle.catch(() => { bundle = null })
    }
    return bundle
  }

  fastify.get('/ui', { config: { label: '/ui/' } }, async (_request, reply) => {
    return reply.redirect('/ui/', 308)
  })
  fastify.get('/ui/', { config: { label: '/ui/' } }, async (request, reply) => {
    return send(request, reply, (await load()).index, 'no-cache')
  })
  fastify.get<{ Params: { build: string, '*': string } }>('/ui/:build/*', { config: { label: '/ui/:build/*' } }, async (request, reply) => {
    const b = await load()
    const asset = request.params.build === b.build ? b.files.get(request.params['*']) : undefined
    if (asset === undefined) throw new GatewayError('GW_NOT_FOUND', `no console asset ${request.url.split('?')[0]}`)
    return send(request, reply, asset, 'public, max-age=31536000, immutable')
  })
}
