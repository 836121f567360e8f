/**
 * Starts a real gateway for a test: the config is validated by the real
 * loader, both listeners bind 127.0.0.1:0, health checks start. Logs are
 * captured as parsed JSON lines so tests can assert on them.
 */
import { Writable } from 'node:stream'
import type { AddressInfo } from 'node:net'
import pino from 'pino'
import { validateConfig } from '../../src/config/load.js'
import { buildGateway, type Gateway, type BuildOptions } from '../../src/app.js'
import { loggerOptions } from '../../src/log.js'
import { duplicateKeys } from './json-keys.js'

export interface TestGateway {
  gw: Gateway
  /** http://127.0.0.1:port of the public listener. */
  url: string
  /** http://127.0.0.1:port of the admin listener. */
  adminUrl: string
  /** Every log line written so far, parsed. */
  logs: Array<Record<string, unknown>>
  /** Resolves with the first log line (already written or future) matching `pred`. */
  waitForLog(pred: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>
  close(): Promise<void>
}

/** `raw` is a config as a user would write it; server/admin ports are forced to 0. */
export async function startGateway (raw: Record<string, unknown>, opts: Omit<BuildOptions, 'logger'> & { start?: boolean } = {}): Promise<TestGateway> {
  const server = { ...(raw.server as object | undefined), host: '127.0.0.1', port: 0 }
  const admin = { ...(raw.admin as object | undefined), host: '127.0.0.1', port: 0 }
  const config = validateConfig({ ...raw, server, admin }, 'test config')
  const logs: Array<Record<string, unknown>> = []
  const duplicated: string[] = []
  const waiters: Array<{ pred: (l: Record<string, unknown>) => boolean, resolve: (l: Record<string, unknown>) => void }> = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line === '') continue
        // SPEC §16: no key twice in a line, at any level; reported by close().
        const dups = duplicateKeys(line)
        if (dups.length > 0) duplicated.push(`${dups.join(', ')} in ${line}`)
        const parsed = JSON.parse(line) as Record<string, unknown>
        logs.push(parsed)
        for (let i = waiters.length - 1; i >= 0; i--) {
          if (waiters[i]!.pred(parsed)) waiters.splice(i, 1)[0]!.resolve(parsed)
        }
      }
      cb()
    }
  })
  // The real process's logger options, on a capturing stream.
  const logger = pino(loggerOptions('debug'), sink)
  const gw = await buildGateway(config, { ...opts, logger })
  await gw.admin.listen({ host: '127.0.0.1', port: 0 })
  await gw.app.listen({ host: '127.0.0.1', port: 0 })
  gw.markListening()
  if (opts.start !== false) gw.start()
  const port = (gw.app.server.address() as AddressInfo).port
  const adminPort = (gw.admin.server.address() as AddressInfo).port
  return {
    gw,
    url: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    logs,
    waitForLog (pred, timeoutMs = 5000) {
      const found = logs.find(pred)
      if (found !== undefined) return Promise.resolve(found)
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('timed out waiting for a log line')), timeoutMs)
        waiters.push({ pred, resolve: (l) => { clearTimeout(t); resolve(l) } })
      })
    },
    async close () {
      await gw.close()
      if (duplicated.length > 0) throw new Error(`log lines with a key twice: ${duplicated.join('\n')}`)
    }
  }
}

/** A service block with fast health checks, for tests; origins are URLs or `lattice:` references. */
export function fastService (origins: { primary: unknown, secondary?: unknown }, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    timeoutMs: 1000,
    healthCheck: { intervalMs: 50, timeoutMs: 40, unhealthyThreshold: 2, healthyThreshold: 2 },
    circuitBreaker: { volumeThreshold: 5, resetTimeoutMs: 60000 },
    origins,
    ...extra
  }
}
