/**
 * The end of every bench helper server: listen on an ephemeral loopback
 * port, announce `{"port","pid"}` as the first stdout line (what
 * lib.ts startHelper waits for), and exit on SIGTERM/SIGINT or when the
 * runner's pipe closes (so a SIGKILLed runner leaves nothing behind).
 */
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'

export async function serveUntilParentGoes (app: FastifyInstance): Promise<void> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  process.stdout.write(`${JSON.stringify({ port, pid: process.pid })}\n`)
  const stop = (): void => {
    void app.close().finally(() => process.exit(0))
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  process.stdin.once('end', stop)
  process.stdin.once('error', stop)
  process.stdin.resume()
}

/** The same for a bare node:http server (listening is started here; the exit closes every connection at once). */
export function serveHttpUntilParentGoes (server: Server): void {
  server.listen(0, '127.0.0.1', () => {
    const { port } = server.address() as AddressInfo
    process.stdout.write(`${JSON.stringify({ port, pid: process.pid })}\n`)
  })
  const stop = (): void => {
    server.close()
    server.closeAllConnections()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  process.stdin.on('end', stop)
  process.stdin.on('error', stop)
  process.stdin.resume()
}
