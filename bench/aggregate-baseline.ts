/**
 * The aggregate baseline: a hand-written Fastify 5 + undici fan-out with no
 * extras (no logger, no request ids, no metrics, no failover, no deadline,
 * no size limit). `GET /products/:id/details` makes three parallel undici
 * `request()` calls, parses each body with `body.json()`, merges them into
 * one object and sends it — what a team would write before reaching for a
 * gateway. Started by bench/aggregate.ts from dist/bench/aggregate-baseline.js
 * on the server CPU.
 *
 *   node aggregate-baseline.js --product URL --review URL --inventory URL
 *
 * First stdout line `{"port":N,"pid":P}`; exits when stdin closes or on
 * SIGTERM/SIGINT.
 */
import Fastify from 'fastify'
import { serveUntilParentGoes } from './helper-process.js'
import { request } from 'undici'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { product: { type: 'string' }, review: { type: 'string' }, inventory: { type: 'string' } } })
const { product, review, inventory } = values
if (product === undefined || review === undefined || inventory === undefined) {
  process.stderr.write('--product, --review and --inventory URLs are required\n')
  process.exit(1)
}

async function fetchJson (url: string): Promise<unknown> {
  const res = await request(url)
  if (res.statusCode !== 200) {
    await res.body.dump()
    throw new Error(`${url} answered ${res.statusCode}`)
  }
  return res.body.json()
}

const app = Fastify({ logger: false })
app.get<{ Params: { id: string } }>('/products/:id/details', async (req, reply) => {
  const id = encodeURIComponent(req.params.id)
  try {
    const [p, r, i] = await Promise.all([
      fetchJson(`${product}/products/${id}`),
      fetchJson(`${review}/reviews?productId=${id}`),
      fetchJson(`${inventory}/inventory/${id}`)
    ])
    return { product: p, reviews: r, inventory: i }
  } catch {
    return reply.code(502).send({ error: 'upstream failed' })
  }
})
await serveUntilParentGoes(app)
