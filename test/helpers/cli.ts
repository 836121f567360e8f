/**
 * The real `lattice-gateway` command as a child process, for tests that
 * watch it from outside (exit codes, signals, clusters): its stdout is
 * parsed as pino JSON lines as they arrive.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { until } from './until.js'

/** The repository root (the child runs from there). */
export const root = fileURLToPath(new URL('../..', import.meta.url))

/** The test's environment without tap's process-info hook (NODE_OPTIONS): the child is observed from outside. */
export const childEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS' && !k.startsWith('_TAPJS_')))

/** Resolves once `${admin}/healthz` answers 200 (connection errors are retried). */
export async function untilHealthy (admin: string, timeoutMs = 60000): Promise<void> {
  await until(async () => {
    try {
      const res = await request(`${admin}/healthz`)
      await res.body.dump()
      return res.statusCode === 200
    } catch {
      return false
    }
  }, { what: '/healthz to answer 200', timeoutMs })
}

export interface GatewayChild {
  child: ChildProcess
  exited: Promise<[number | null, NodeJS.Signals | null]>
  /** Every log line so far, parsed. */
  lines: Array<Record<string, unknown>>
  /** Every stdout line so far, as written. */
  raw: string[]
  stderr(): string
  /** The first capture group (or the whole match) of the first log message matching `re`. */
  logged(re: RegExp): string | undefined
}

/** Runs `src/main.ts --config file` (through tsx) and collects its log. */
export function spawnGateway (configFile: string, env: NodeJS.ProcessEnv = childEnv): GatewayChild {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', '--config', configFile], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  const lines: Array<Record<string, unknown>> = []
  const raw: string[] = []
  let stderr = ''
  let partial = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    const parts = (partial + d).split('\n')
    partial = parts.pop()!
    for (const p of parts) {
      if (p.trim() === '') continue
      raw.push(p)
      lines.push(JSON.parse(p) as Record<string, unknown>)
    }
  })
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
  return {
    child,
    exited,
    lines,
    raw,
    stderr: () => stderr,
    logged (re) {
      for (const l of lines) {
        const m = re.exec(String(l.msg))
        if (m !== null) return m[1] ?? m[0]
      }
      return undefined
    }
  }
}

/** Writes `text` to a config file in a fresh temporary folder, removed at the test's teardown. */
export function writeConfig (t: { teardown(fn: () => void): void }, text: string, name = 'gateway.yaml'): string {
  const dir = mkdtempSync(join(tmpdir(), 'lattice-gateway-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

/** SIGKILLs the child, and every cluster worker it logged, at the test's teardown (unless it has exited). */
export function killAtTeardown (t: { teardown(fn: () => unknown): void }, g: GatewayChild): void {
  t.teardown(() => {
    for (const l of g.lines) if (typeof l.workerPid === 'number') { try { process.kill(l.workerPid, 'SIGKILL') } catch {} }
    if (g.child.exitCode === null && g.child.signalCode === null) g.child.kill('SIGKILL')
  })
}

export interface Replica { g: GatewayChild, url: string, admin: string, pid: number }

/**
 * Spawns a gateway on `file`, killed at teardown; resolves once `workers`
 * listeners (1 without a cluster) and the admin listener are up and
 * /healthz answers 200.
 */
export async function startReplica (t: { teardown(fn: () => unknown): void }, file: string, opts: { workers?: number, timeoutMs?: number } = {}): Promise<Replica> {
  const workers = opts.workers ?? 1
  const g = spawnGateway(file)
  killAtTeardown(t, g)
  await until(() => {
    if (g.child.exitCode !== null) throw new Error(`the replica exited (${g.child.exitCode}): ${g.stderr()}`)
    const listening = g.lines.filter((l) => /^gateway listening on/.test(String(l.msg))).length
    return listening >= workers && g.logged(/^admin listening on/) !== undefined ? true : undefined
  }, { what: 'the replica to listen', timeoutMs: opts.timeoutMs ?? 60000 })
  const admin = g.logged(/^admin listening on (http:\/\/\S+)/)!
  await untilHealthy(admin)
  return { g, url: g.logged(/^gateway listening on (http:\/\/\S+)/)!, admin, pid: g.child.pid! }
}
