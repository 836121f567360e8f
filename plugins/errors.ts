/**
 * The public and admin apps' error and not-found handlers: every error a
 * client sees is a SPEC §6 JSON body with a stable code. Anything that is
 * not already a GatewayError is mapped by its `code` (fastify's FST_*,
 * undici's UND_ERR_*); the client never sees a stack trace.
 */
import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance } from 'fastify'
import { GatewayError, upstreamFailure } from '../src/errors.js'

function toGatewayError (err: FastifyError | GatewayError | Error): GatewayError {
  if (err instanceof GatewayError) return err
  const code = (err as FastifyError).code
  const status = (err as FastifyError).statusCode
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new GatewayError('GW_BODY_TOO_LARGE', 'request body is larger than the limit')
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new GatewayError('GW_BAD_REQUEST', err.message === '' ? 'bad request' : err.message, { statusCode: status === 413 ? 413 : 400 })
  }
  if (typeof code === 'string' && code.startsWith('UND_ERR')) return upstreamFailure(err, 'upstream')
  // Hardening: an upstream body that broke HTTP before the first byte went
  // to the client (undici's parser error; its `code` is often unset).
  if (err.name === 'HTTPParserError') return upstreamFailure(err, 'upstream')
  return new GatewayError('GW_INTERNAL', 'internal error', { cause: err })
}

export default fp(async function errors (fastify: FastifyInstance) {
  fastify.setErrorHandler(function (err: FastifyError | GatewayError, request, reply) {
    const e = toGatewayError(err)
    if (e.statusCode >= 500) request.log.error({ err: e.cause ?? err, code: e.code }, e.message)
    else request.log.debug({ code: e.code }, e.message)
    if (e.headers !== undefined) reply.headers(e.headers)
    return reply.code(e.statusCode).type('application/json; charset=utf-8').send(e.toJSON())
  })
  fastify.setNotFoundHandler(function (request, reply) {
    const e = new GatewayError('GW_NO_ROUTE', `no route for ${request.method} ${request.url.split('?')[0]}`)
    return reply.code(404).send(e.toJSON())
  })
}, { name: 'gateway-errors' })
