/**
 * The pass-through baseline: bare Fastify 5 + @fastify/http-proxy with no
 * extras (no logger, no request ids, no metrics, no failover), forwarding
 * `/api/*` to one upstream with the prefix removed — the same mapping the
 * passthrough scenario gives lattice-gateway. Started by the bench from
 * dist/bench/http-proxy-baseline.js on the server CPU.
 *
 *   node http-proxy-baseline.js --upstream http://127.0.0.1:PORT
 *
 * First stdout line `{"port":N,"pid":P}`; exits when stdin closes or on
 * SIGTERM/SIGINT.
 */
import Fastify from 'fastify'
import { serveUntilParentGoes } from './helper-process.js'
import httpProxy from '@fastify/http-proxy'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { upstream: { type: 'string' } } })
if (values.upstream === undefined) {
  process.stderr.write('--upstream URL is required\n')
  process.exit(1)
}

const app = Fastify({ logger: false })
await app.register(httpProxy, { upstream: values.upstream, prefix: '/api', rewritePrefix: '' })
await serveUntilParentGoes(app)
