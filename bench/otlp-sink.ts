/**
 * A bench OTLP/HTTP collector stand-in: node:http on 127.0.0.1:0 that reads
 * every POST /v1/traces body and answers 200 at once, counting exports and
 * bytes (it does not decode them: the bench measures the gateway's cost,
 * not a collector's). Started by bench/tracing.ts through startHelper.
 *
 *   node otlp-sink.js
 *
 * First stdout line `{"port":N,"pid":P}`; `GET /__bench` answers
 * `{"exports","bytes"}`; exits when stdin closes or on SIGTERM/SIGINT.
 */
import { createServer } from 'node:http'
import { serveHttpUntilParentGoes } from './helper-process.js'

let exports = 0
let bytes = 0

const server = createServer((req, res) => {
  if (req.url === '/__bench') {
    const json = JSON.stringify({ exports, bytes })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) }).end(json)
    return
  }
  req.on('data', (c: Buffer) => { bytes += c.length })
  req.on('end', () => {
    exports++
    res.writeHead(200, { 'content-type': String(req.headers['content-type'] ?? 'application/json') })
    res.end(String(req.headers['content-type']).startsWith('application/json') ? '{}' : undefined)
  })
})
server.keepAliveTimeout = 72_000

serveHttpUntilParentGoes(server)
