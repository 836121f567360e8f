/**
 * The bench toolkit: everything a load scenario needs to measure
 * lattice-gateway side by side with baselines, on one machine, in one run.
 *
 * Method (the performance issue's): the servers under test — upstreams,
 * the gateway, baselines — are pinned to one core with `taskset`, the load
 * generator (autocannon, in the bench runner's own process) to another;
 * 100 connections; 1 KB JSON; every figure is the median of N repetitions,
 * interleaved (rep 1 of every target, then rep 2, ...) so a slow moment of
 * a busy machine does not land on one target only. Everything listens on
 * 127.0.0.1 port 0; every load run is bounded by `--duration`; every child
 * process is killed when the runner exits, errors or gets Ctrl-C, and the
 * bench's own helper processes also exit when their stdin closes, so even
 * a SIGKILLed runner leaves nothing behind.
 *
 * A scenario is a module `bench/<name>.ts` exporting
 * `async function run(args: string[]): Promise<void>` that prints its own
 * table. `bench/run.ts` builds dist/ when stale, pins itself to the load
 * core and calls it. A typical scenario:
 *
 *   import { parseBenchArgs, startUpstream, startGateway, runMatrix, loadTable } from './lib.js'
 *
 *   export async function run (args: string[]): Promise<void> {
 *     const { common } = parseBenchArgs(args)            // --duration --reps --connections --warmup
 *     const up = await startUpstream({ latencyMs: 0 })   // 1 KB JSON on 127.0.0.1:<ephemeral>
 *     const gw = await startGateway({                    // the compiled gateway, a real child process
 *       services: { svc: { origins: { primary: up.url } } },
 *       routes: [{ type: 'proxy', prefix: '/api', service: 'svc', rewritePrefix: '' }]
 *     })
 *     const rows = await runMatrix([
 *       { name: 'direct', url: up.url + '/data', watch: [up.pid] },
 *       { name: 'gateway', url: gw.url + '/api/data', watch: [gw.pid], after: () => gw.truncateLog() }
 *     ], common)
 *     loadTable('my scenario', rows, { baseline: 'direct', notes: [pinning.note] })
 *     await stopAll()                                    // or leave it to the runner's exit
 *   }
 *
 * Pieces: `startUpstream` / `startHelper` (bench child processes that print
 * `{"port":N}` first), `startGateway` (dist/src/main.js --config <tmp>),
 * `measure` (one autocannon run with peak RSS and CPU of watched pids),
 * `runMatrix` (warm-up + interleaved reps + medians), `printTable` /
 * `loadTable` (aligned columns, ratios to a baseline row), `ensureBuilt`,
 * `pinning`, `stopAll`.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { request } from 'undici'

/** Repository root (bench/..), and where the compiled code lives. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const DIST = join(ROOT, 'dist')

// ---------------------------------------------------------------- arguments

export interface CommonArgs {
  /** Seconds of measured load per target per repetition. */
  duration: number
  /** Repetitions; every figure is the median over them. */
  reps: number
  /** Concurrent client connections (autocannon). */
  connections: number
  /** Seconds of unmeasured load per target before the first repetition. */
  warmup: number
}

export const DEFAULTS: CommonArgs = { duration: 10, reps: 3, connections: 100, warmup: 2 }
const MAX_DURATION_S = 300

export type ParsedValues = Record<string, string | boolean | undefined>

/**
 * Parses the flags every scenario shares (`--duration S --reps N
 * --connections C --warmup S`) plus the scenario's own `extra` options
 * (node:util parseArgs format). Throws on unknown flags.
 */
export function parseBenchArgs (args: string[], extra: NonNullable<ParseArgsConfig['options']> = {}): { common: CommonArgs, values: ParsedValues, positionals: string[] } {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      duration: { type: 'string' },
      reps: { type: 'string' },
      connections: { type: 'string' },
      warmup: { type: 'string' },
      ...extra
    }
  })
  const v = values as ParsedValues
  const num = (key: keyof CommonArgs, min: number, max: number, integer: boolean): number => {
    const raw = v[key]
    if (raw === undefined) return DEFAULTS[key]
    const n = Number(raw)
    if (typeof raw !== 'string' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new Error(`--${key} must be ${integer ? 'an integer' : 'a number'} between ${min} and ${max} (got ${String(raw)})`)
    }
    return n
  }
  const common: CommonArgs = {
    duration: num('duration', 1, MAX_DURATION_S, false),
    reps: num('reps', 1, 20, true),
    connections: num('connections', 1, 10_000, true),
    warmup: num('warmup', 0, 60, false)
  }
  return { common, values: v, positionals }
}

// ------------------------------------------------------------------ pinning

export interface Pinning {
  /** taskset found and at least two CPUs allowed. */
  enabled: boolean
  /** CPU list for upstreams, gateway and baselines. */
  serverCpu: string
  /** CPU list for the load generator (this process). */
  loadCpu: string
  /** Every CPU this run may use (to unpin). */
  allCpus: string
  /** One line for a table's notes. */
  note: string
}

function allowedCpus (): number[] {
  try {
    const status = readFileSync('/proc/self/status', 'utf8')
    const list = /^Cpus_allowed_list:\s*(.+)$/m.exec(status)?.[1]
    if (list === undefined) return []
    const cpus: number[] = []
    for (const part of list.trim().split(',')) {
      const [a, b] = part.split('-').map(Number)
      if (a === undefined || Number.isNaN(a)) continue
      for (let c = a; c <= (b ?? a); c++) cpus.push(c)
    }
    return cpus
  } catch {
    return []
  }
}

function detectPinning (): Pinning {
  let taskset = false
  try {
    execFileSync('which', ['taskset'], { stdio: 'ignore' })
    taskset = true
  } catch {}
  const cpus = allowedCpus()
  if (!taskset || cpus.length < 2) {
    const why = !taskset ? 'taskset not found' : `only ${cpus.length || availableParallelism()} CPU allowed`
    return { enabled: false, serverCpu: '', loadCpu: '', allCpus: '', note: `no CPU pinning (${why}): servers and load generator share every core` }
  }
  const serverCpu = String(cpus[0])
  const loadCpu = String(cpus[1])
  return { enabled: true, serverCpu, loadCpu, allCpus: cpus.join(','), note: `servers pinned to CPU ${serverCpu}, load generator (autocannon) to CPU ${loadCpu} (taskset)` }
}

/** How this run pins processes; decided once. */
export const pinning: Pinning = detectPinning()

/**
 * Moves every thread of this process (the load generator) to the load CPU,
 * or with `cpus` to those (e.g. every allowed CPU, to unpin it). No-op
 * without pinning.
 */
export function pinSelfToLoadCpu (cpus = pinning.loadCpu): void {
  if (!pinning.enabled) return
  try {
    execFileSync('taskset', ['-a', '-p', '-c', cpus, String(process.pid)], { stdio: 'ignore' })
  } catch (err) {
    process.stderr.write(`warning: could not pin the load generator: ${err instanceof Error ? err.message : String(err)}\n`)
  }
}

/** The command line for a server process: `taskset -c <serverCpu> node ...` when pinning (and `pin`). */
function serverCommand (nodeArgs: string[], pin = true): [string, string[]] {
  return pinning.enabled && pin
    ? ['taskset', ['-c', pinning.serverCpu, process.execPath, ...nodeArgs]]
    : [process.execPath, nodeArgs]
}

// -------------------------------------------------------------------- build

function newestSources (dir: string, out: string[]): void {
  if (!existsSync(dir)) return
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name)
    if (entry.isDirectory()) newestSources(p, out)
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(p)
  }
}

/**
 * Runs tsc over tsconfig.json (`npm run build` compiles the product
 * only, not bench/) when any source under src/ routes/ plugins/ bench/
 * has no compiled file in dist/ or is newer than it. The children
 * run from dist/ so they carry no TypeScript loader and measure exactly
 * what `npm start` runs.
 */
export function ensureBuilt (): void {
  const sources: string[] = []
  for (const d of ['src', 'routes', 'plugins', 'bench']) newestSources(join(ROOT, d), sources)
  const stale = sources.filter((s) => {
    const out = join(DIST, relative(ROOT, s)).replace(/\.ts$/, '.js')
    return !existsSync(out) || statSync(out).mtimeMs < statSync(s).mtimeMs
  })
  if (stale.length === 0) return
  process.stderr.write(`building dist/ (${stale.length} source file(s) newer than their build, e.g. ${relative(ROOT, stale[0]!)})\n`)
  try {
    execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    // tsc still emits on type errors; say so and go on with what it wrote.
    // Errors in test/ do not touch what the bench runs, so they get one line.
    const errors = ((err as { stdout?: Buffer }).stdout?.toString('utf8') ?? '').split('\n').filter((l) => /error TS\d+/.test(l))
    const relevant = errors.filter((l) => !l.startsWith('test/'))
    process.stderr.write(`warning: the build reported ${errors.length} type error(s), ${relevant.length} outside test/; benchmarking the emitted code anyway\n`)
    if (relevant.length > 0) process.stderr.write(`${relevant.slice(0, 20).join('\n')}\n`)
  }
  if (!existsSync(join(DIST, 'src', 'main.js'))) throw new Error('build produced no dist/src/main.js')
}

// ----------------------------------------------------------------- children

export interface ChildHandle {
  /** A short label for messages. */
  name: string
  pid: number
  proc: ChildProcess
  /** Resolves with the exit code (or the signal name) once the process has exited. */
  exited: Promise<number | string>
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>
}

const children = new Set<ChildHandle>()
let scratchDir: string | null = null

/** A private temp directory for configs and logs, removed when the runner exits. */
export function scratch (): string {
  scratchDir ??= mkdtempSync(join(tmpdir(), 'lattice-bench-'))
  return scratchDir
}

function track (name: string, proc: ChildProcess): ChildHandle {
  if (proc.pid === undefined) throw new Error(`${name}: could not spawn`)
  const exited = new Promise<number | string>((resolve) => {
    proc.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'))
  })
  const handle: ChildHandle = {
    name,
    pid: proc.pid,
    proc,
    exited,
    async stop (graceMs = 3000) {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM')
        const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs)
        await exited
        clearTimeout(timer)
      }
      children.delete(handle)
    }
  }
  children.add(handle)
  void exited.then(() => children.delete(handle))
  return handle
}

/**
 * Starts a program that is not a bench helper (e.g. nginx as a baseline)
 * on the server CPU, stopped with every other child when the runner ends.
 */
export function startProgram (name: string, cmd: string, args: string[], opts: { cwd?: string } = {}): ChildHandle & { stderrTail: () => string } {
  const [c, argv] = pinning.enabled ? ['taskset', ['-c', pinning.serverCpu, cmd, ...args]] : [cmd, args]
  const proc = spawn(c, argv, { cwd: opts.cwd ?? ROOT, stdio: ['ignore', 'ignore', 'pipe'] })
  const h = track(name, proc)
  return Object.assign(h, { stderrTail: keepTail(proc) })
}

/** Stops every child this process started (gracefully, then by force). */
export async function stopAll (): Promise<void> {
  await Promise.all([...children].map((c) => c.stop()))
}

function killAllNow (): void {
  for (const c of children) {
    try { c.proc.kill('SIGKILL') } catch {}
  }
  children.clear()
  if (scratchDir !== null) {
    try { rmSync(scratchDir, { recursive: true, force: true }) } catch {}
    scratchDir = null
  }
}

process.once('exit', killAllNow)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    process.stderr.write(`\n${sig}: stopping every bench process\n`)
    killAllNow()
    process.exit(sig === 'SIGINT' ? 130 : 143)
  })
}

/** Reads lines from a child's stdout until `pick` returns a value, the child exits, or `timeoutMs` passes. */
function firstMatchingLine<T> (h: ChildHandle, stderrTail: () => string, pick: (line: string) => T | undefined, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const stdout = h.proc.stdout
    if (stdout === null) { reject(new Error(`${h.name}: no stdout`)); return }
    let buf = ''
    const done = (err: Error | null, value?: T): void => {
      clearTimeout(timer)
      stdout.off('data', onData)
      if (err !== null) reject(err)
      else resolve(value as T)
    }
    const onData = (chunk: Buffer): void => {
      buf += chunk.toString('utf8')
      let nl: number
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        const v = pick(line)
        if (v !== undefined) { done(null, v); return }
      }
    }
    const timer = setTimeout(() => done(new Error(`${h.name}: not ready after ${timeoutMs} ms\n${stderrTail()}`)), timeoutMs)
    stdout.on('data', onData)
    void h.exited.then((code) => done(new Error(`${h.name} exited (${code}) before it was ready\n${stderrTail()}`)))
  })
}

function keepTail (proc: ChildProcess): () => string {
  let tail = ''
  proc.stderr?.on('data', (c: Buffer) => { tail = (tail + c.toString('utf8')).slice(-4000) })
  return () => tail
}

export interface Helper extends ChildHandle {
  port: number
  /** http://127.0.0.1:port */
  url: string
}

/**
 * Starts `dist/bench/<script>.js` (compiled from bench/<script>.ts) on the
 * server CPU. The script must listen on 127.0.0.1:0, print
 * `{"port":N}` as its first stdout line, and exit when stdin closes.
 */
export async function startHelper (script: string, args: string[] = [], opts: { name?: string, nodeArgs?: string[], env?: NodeJS.ProcessEnv, timeoutMs?: number, pin?: boolean } = {}): Promise<Helper> {
  const file = join(DIST, 'bench', `${script}.js`)
  if (!existsSync(file)) throw new Error(`${file} is missing: run \`npx tsc -p tsconfig.json\` (bench/run.ts does it when needed)`)
  const [cmd, argv] = serverCommand([...(opts.nodeArgs ?? []), file, ...args], opts.pin)
  const proc = spawn(cmd, argv, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } })
  const h = track(opts.name ?? script, proc)
  const tail = keepTail(proc)
  const port = await firstMatchingLine(h, tail, (line) => {
    try {
      const msg = JSON.parse(line) as { port?: unknown }
      return typeof msg.port === 'number' ? msg.port : undefined
    } catch {
      return undefined
    }
  }, opts.timeoutMs ?? 10_000)
  proc.stdout?.resume() // nothing more is expected; never let the pipe fill
  return Object.assign(h, { port, url: `http://127.0.0.1:${port}` })
}

export interface UpstreamOptions {
  /** Shown in the `x-origin` header and the document's `origin` field. */
  name?: string
  /** Delay before each answer, ms (0: answer at once). */
  latencyMs?: number
  /** Size of the JSON document, bytes (default 1024). */
  bytes?: number
  /** Status of every answer (default 200). */
  status?: number
  /** Pin to the server CPU (default true). */
  pin?: boolean
  /** Answer a request with a body only once the whole body is in (default false: at once). */
  readBody?: boolean
}

export interface UpstreamState { name: string, requests: number, latencyMs: number, status: number, healthy: boolean, failRate?: number }

export interface Upstream extends Helper {
  /** Changes latency/status/health for the next requests (PUT /__bench). */
  control(patch: Partial<Omit<UpstreamState, 'name' | 'requests'>>): Promise<UpstreamState>
  /** Requests answered so far (health and control calls excluded) and the current state. */
  stats(): Promise<UpstreamState>
}

/** Starts a bench upstream (bench/upstream-server.ts): every path answers 1 KB JSON; `/health` answers 200. */
export async function startUpstream (opts: UpstreamOptions = {}): Promise<Upstream> {
  const name = opts.name ?? 'upstream'
  const args = ['--name', name, '--latency', String(opts.latencyMs ?? 0), '--bytes', String(opts.bytes ?? 1024), '--status', String(opts.status ?? 200)]
  if (opts.readBody === true) args.push('--read-body')
  const h = await startHelper('upstream-server', args, { name, pin: opts.pin })
  const call = async (method: 'GET' | 'PUT', body?: string): Promise<UpstreamState> => {
    const res = await request(`${h.url}/__bench`, { method, body, headers: { 'content-type': 'application/json' } })
    return await res.body.json() as UpstreamState
  }
  return Object.assign(h, {
    control: (patch: Partial<Omit<UpstreamState, 'name' | 'requests'>>) => call('PUT', JSON.stringify(patch)),
    stats: () => call('GET')
  })
}

export interface GatewayProcess extends ChildHandle {
  /** http://127.0.0.1:port of the public listener. */
  url: string
  /** http://127.0.0.1:port of the admin listener. */
  adminUrl: string
  /** The config file written for it. */
  configFile: string
  /** Where its stdout (pino JSON lines) goes. */
  logFile: string
  /** Bytes logged since the last truncateLog(). */
  logBytes(): number
  /** Empties the log file (it is opened for append, so the gateway keeps writing from 0). */
  truncateLog(): void
}

export interface GatewayOptions {
  /** Extra node flags, e.g. ['--cpu-prof', '--cpu-prof-dir=/tmp/prof']. */
  nodeArgs?: string[]
  env?: NodeJS.ProcessEnv
  /** Pin to the server CPU like every other server (default true); false lets it use every core. */
  pin?: boolean
  /** Wait for /readyz 200 (every service has a healthy origin). Default true. */
  waitReady?: boolean
  timeoutMs?: number
}

/**
 * Starts the compiled gateway, `node dist/src/main.js --config <tmp>.json`,
 * on the server CPU. `config` is written as a user would; `server` and
 * `admin` are forced to 127.0.0.1:0 (and `server.shutdownGraceMs` defaults
 * to 2000). Its stdout — the pino log at the configured level, `info` by
 * default as in production — goes to a file in the scratch directory, so
 * logging costs the gateway what it costs in production (a write per
 * line) without the terminal or this process reading it. Resolves once
 * `/healthz` (and, unless `waitReady: false`, `/readyz`) answer 200.
 */
export async function startGateway (config: Record<string, unknown>, opts: GatewayOptions = {}): Promise<GatewayProcess> {
  const dir = scratch()
  const id = `gateway-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
  const configFile = join(dir, `${id}.json`)
  const logFile = join(dir, `${id}.log`)
  const server = { shutdownGraceMs: 2000, ...(config.server as object | undefined), host: '127.0.0.1', port: 0 }
  const admin = { ...(config.admin as object | undefined), host: '127.0.0.1', port: 0 }
  writeFileSync(configFile, JSON.stringify({ ...config, server, admin }, null, 2))

  const main = join(DIST, 'src', 'main.js')
  if (!existsSync(main)) throw new Error(`${main} is missing: run \`npm run build\``)
  const watchdog = join(DIST, 'bench', 'parent-watch.js')
  const preload = existsSync(watchdog) ? ['--import', watchdog] : []
  const logFd = openSync(logFile, 'a')
  const [cmd, argv] = serverCommand([...preload, ...(opts.nodeArgs ?? []), main, '--config', configFile], opts.pin)
  const proc = spawn(cmd, argv, { cwd: ROOT, stdio: ['pipe', logFd, 'pipe'], env: { ...process.env, ...opts.env } })
  closeSync(logFd)
  const h = track('gateway', proc)
  const tail = keepTail(proc)

  const deadline = Date.now() + (opts.timeoutMs ?? 20_000)
  const fail = (why: string): Error => new Error(`gateway: ${why}\nstderr: ${tail()}\nlog: ${safeRead(logFile).slice(-2000)}`)
  let url: string | undefined
  let adminUrl: string | undefined
  let exitCode: number | string | undefined
  void h.exited.then((c) => { exitCode = c })
  while (url === undefined || adminUrl === undefined) {
    if (exitCode !== undefined) throw fail(`exited (${exitCode}) while starting`)
    if (Date.now() > deadline) throw fail('no "listening on" lines in its log')
    for (const line of safeRead(logFile).split('\n')) {
      const m = /"msg":"(gateway|admin) listening on (http:\/\/[^"]+)"/.exec(line)
      if (m?.[1] === 'gateway') url = m[2]
      if (m?.[1] === 'admin') adminUrl = m[2]
    }
    if (url === undefined || adminUrl === undefined) await sleep(50)
  }
  const paths = opts.waitReady === false ? ['/healthz'] : ['/healthz', '/readyz']
  for (const path of paths) {
    let last = ''
    for (;;) {
      if (exitCode !== undefined) throw fail(`exited (${exitCode}) while starting`)
      if (Date.now() > deadline) throw fail(`${path} never answered 200 (last: ${last})`)
      try {
        const res = await request(`${adminUrl}${path}`, { headersTimeout: 2000, bodyTimeout: 2000 })
        last = `${res.statusCode} ${await res.body.text()}`
        if (res.statusCode === 200) break
      } catch (err) {
        last = err instanceof Error ? err.message : String(err)
      }
      await sleep(50)
    }
  }
  return Object.assign(h, {
    url,
    adminUrl,
    configFile,
    logFile,
    logBytes: () => { try { return statSync(logFile).size } catch { return 0 } },
    truncateLog: () => { try { truncateSync(logFile, 0) } catch {} }
  })
}

function safeRead (file: string): string {
  try { return readFileSync(file, 'utf8') } catch { return '' }
}

// ------------------------------------------------------- process monitoring

const CLK_TCK = ((): number => {
  try { return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100 } catch { return 100 }
})()

/** Resident set size of `pid` in bytes (VmRSS from /proc/<pid>/status), or null if unreadable. */
export function readRss (pid: number): number | null {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m === null ? null : Number(m[1]) * 1024
  } catch {
    return null
  }
}

/** User + system CPU time of `pid` in milliseconds (/proc/<pid>/stat), or null if unreadable. */
export function readCpuMs (pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK
  } catch {
    return null
  }
}

export interface ProcessUsage {
  /** Highest VmRSS seen while monitoring, bytes. */
  peakRss: number
  /** CPU time used while monitoring, ms. */
  cpuMs: number
}

/** Samples RSS of `pids` every `intervalMs` until stop(); CPU is measured from start to stop. */
export function monitor (pids: number[], intervalMs = 100): { stop(): Map<number, ProcessUsage> } {
  const usage = new Map<number, ProcessUsage & { cpu0: number }>()
  for (const pid of pids) usage.set(pid, { peakRss: readRss(pid) ?? 0, cpuMs: 0, cpu0: readCpuMs(pid) ?? 0 })
  const sample = (): void => {
    for (const [pid, u] of usage) u.peakRss = Math.max(u.peakRss, readRss(pid) ?? 0)
  }
  const timer = setInterval(sample, intervalMs)
  return {
    stop () {
      clearInterval(timer)
      sample()
      const out = new Map<number, ProcessUsage>()
      for (const [pid, u] of usage) out.set(pid, { peakRss: u.peakRss, cpuMs: (readCpuMs(pid) ?? u.cpu0) - u.cpu0 })
      return out
    }
  }
}

// --------------------------------------------------------------------- load

export interface LoadOptions {
  /** Full URL of the target, e.g. http://127.0.0.1:1234/api/data */
  url: string
  method?: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH' | 'HEAD'
  headers?: Record<string, string>
  body?: string | Buffer
  /** Seconds. */
  duration: number
  connections: number
  pipelining?: number
  /** Per-request timeout, seconds (autocannon's; default 10). */
  timeout?: number
}

export interface LoadResult {
  /** Completed responses per second over the run. */
  rps: number
  /** Latency percentiles and mean, milliseconds. */
  p50: number
  p99: number
  mean: number
  max: number
  /** Completed responses. */
  requests: number
  /** Connection errors, timeouts included. */
  errors: number
  timeouts: number
  non2xx: number
  /** Seconds the run actually took. */
  durationS: number
}

/** One autocannon run from this process against `opts.url`. */
export async function load (opts: LoadOptions): Promise<LoadResult> {
  const r = await autocannon({
    url: opts.url,
    method: opts.method ?? 'GET',
    headers: opts.headers,
    body: opts.body,
    duration: Math.min(opts.duration, MAX_DURATION_S),
    connections: opts.connections,
    pipelining: opts.pipelining ?? 1,
    timeout: opts.timeout ?? 10
  })
  const completed = r['1xx'] + r['2xx'] + r['3xx'] + r['4xx'] + r['5xx']
  return {
    rps: r.duration > 0 ? completed / r.duration : 0,
    p50: r.latency.p50,
    p99: r.latency.p99,
    mean: r.latency.average,
    max: r.latency.max,
    requests: completed,
    errors: r.errors,
    timeouts: r.timeouts,
    non2xx: r.non2xx,
    durationS: r.duration
  }
}

export interface Sample extends LoadResult {
  /** Peak RSS (bytes) and CPU (ms) of every watched pid during the run. */
  procs: Map<number, ProcessUsage>
  /** Peak RSS of the first watched pid, MB (NaN when nothing was watched). */
  rssMB: number
  /** CPU of all watched pids per completed request, microseconds (NaN when nothing was watched). */
  cpuUsPerReq: number
}

/** One measured load run with the watched processes' peak RSS and CPU. */
export async function measure (opts: LoadOptions & { watch?: number[] }): Promise<Sample> {
  const watch = opts.watch ?? []
  const mon = monitor(watch)
  let result: LoadResult
  let procs: Map<number, ProcessUsage>
  try {
    result = await load(opts)
  } finally {
    procs = mon.stop()
  }
  const first = watch[0] === undefined ? undefined : procs.get(watch[0])
  let cpuMs = 0
  for (const u of procs.values()) cpuMs += u.cpuMs
  return {
    ...result,
    procs,
    rssMB: first === undefined ? Number.NaN : first.peakRss / 1048576,
    cpuUsPerReq: watch.length === 0 || result.requests === 0 ? Number.NaN : (cpuMs * 1000) / result.requests
  }
}

/** The median of a list of numbers (NaN for an empty list; NaNs ignored). */
export function median (xs: number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b)
  if (s.length === 0) return Number.NaN
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

/**
 * Combines repetitions: every rate, latency, RSS and CPU figure is the
 * median over the reps (each independently); errors, timeouts, non-2xx and
 * requests are totals over all reps, so a single bad rep stays visible.
 */
export function medianOf (samples: Sample[]): Sample {
  const m = (f: (s: Sample) => number): number => median(samples.map(f))
  const sum = (f: (s: Sample) => number): number => samples.reduce((a, s) => a + f(s), 0)
  return {
    rps: m((s) => s.rps),
    p50: m((s) => s.p50),
    p99: m((s) => s.p99),
    mean: m((s) => s.mean),
    max: Math.max(...samples.map((s) => s.max)),
    requests: sum((s) => s.requests),
    errors: sum((s) => s.errors),
    timeouts: sum((s) => s.timeouts),
    non2xx: sum((s) => s.non2xx),
    durationS: sum((s) => s.durationS),
    procs: samples[samples.length - 1]?.procs ?? new Map(),
    rssMB: m((s) => s.rssMB),
    cpuUsPerReq: m((s) => s.cpuUsPerReq)
  }
}

export interface Target extends Omit<LoadOptions, 'url' | 'duration' | 'connections'> {
  /** Row label in the table. */
  name: string
  url: string
  /** Pids whose RSS and CPU are reported (the first one's RSS is the table's RSS column). */
  watch?: number[]
  /** Runs before each measured run of this target (not timed). */
  before?: () => Promise<void> | void
  /** Runs after each measured run with its sample (not timed), e.g. to read or truncate a log. */
  after?: (sample: Sample) => Promise<void> | void
}

export interface MeasuredRow {
  name: string
  /** Medians (and totals) over the reps. */
  result: Sample
  samples: Sample[]
}

/**
 * Measures every target: `warmup` seconds of unmeasured load each, then
 * `reps` rounds that each run every target once for `duration` seconds,
 * in order. Returns one row per target with the median over the rounds.
 * Progress goes to stderr.
 */
export async function runMatrix (targets: Target[], common: CommonArgs, opts: { label?: string } = {}): Promise<MeasuredRow[]> {
  const label = opts.label === undefined ? '' : `${opts.label}: `
  const rows: MeasuredRow[] = targets.map((t) => ({ name: t.name, result: emptySample(), samples: [] }))
  if (common.warmup > 0) {
    for (const t of targets) {
      process.stderr.write(`${label}warm-up ${t.name} (${common.warmup}s)\n`)
      await t.before?.()
      const s = await measure({ ...t, duration: common.warmup, connections: common.connections })
      await t.after?.(s)
    }
  }
  for (let rep = 1; rep <= common.reps; rep++) {
    for (const [i, t] of targets.entries()) {
      await t.before?.()
      const s = await measure({ ...t, duration: common.duration, connections: common.connections })
      await t.after?.(s)
      rows[i]!.samples.push(s)
      process.stderr.write(`${label}rep ${rep}/${common.reps} ${t.name}: ${fmt(s.rps, 0)} req/s, p99 ${fmt(s.p99, 1)} ms, errors ${s.errors}, non-2xx ${s.non2xx}\n`)
    }
  }
  for (const row of rows) row.result = medianOf(row.samples)
  return rows
}

function emptySample (): Sample {
  return { rps: 0, p50: 0, p99: 0, mean: 0, max: 0, requests: 0, errors: 0, timeouts: 0, non2xx: 0, durationS: 0, procs: new Map(), rssMB: Number.NaN, cpuUsPerReq: Number.NaN }
}

// ------------------------------------------------------------------- tables

export type Cell = string | number

/** A number with `digits` decimals and thousands separators; '-' for NaN/undefined. */
export function fmt (n: number | undefined, digits = 0): string {
  if (n === undefined || Number.isNaN(n)) return '-'
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

/** A ratio such as `1.32×`; '-' when either side is missing. */
export function ratio (n: number, base: number | undefined): string {
  if (base === undefined || Number.isNaN(n) || Number.isNaN(base) || base === 0) return '-'
  return `${(n / base).toFixed(2)}×`
}

/**
 * Prints an aligned table to stdout: the first column left-aligned, the
 * others right-aligned (numbers are formatted with `fmt`), then the notes.
 */
export function printTable (opts: { title: string, columns: string[], rows: Cell[][], notes?: string[] }): void {
  const text = opts.rows.map((r) => r.map((c) => typeof c === 'number' ? fmt(c, Number.isInteger(c) ? 0 : 1) : c))
  const widths = opts.columns.map((h, i) => Math.max(h.length, ...text.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join('  ').trimEnd()
  const out = [
    '',
    opts.title,
    line(opts.columns),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...text.map(line),
    ...(opts.notes ?? []).map((n) => `  ${n}`),
    ''
  ]
  process.stdout.write(out.join('\n') + '\n')
}

/**
 * The standard load table: req/s, ratio of req/s to the `baseline` row,
 * p50/p99 (ms), p99 ratio, errors and non-2xx (totals over the reps), peak
 * RSS of the first watched process (MB) and its CPU per request (µs).
 */
export function loadTable (title: string, rows: MeasuredRow[], opts: { baseline?: string, notes?: string[] } = {}): void {
  const base = opts.baseline === undefined ? undefined : rows.find((r) => r.name === opts.baseline)?.result
  const reps = rows[0]?.samples.length ?? 0
  printTable({
    title,
    columns: ['target', 'req/s', base === undefined ? '' : `× ${opts.baseline}`, 'p50 ms', 'p99 ms', 'p99 ×', 'errors', 'non-2xx', 'RSS MB', 'CPU µs/req'],
    rows: rows.map(({ name, result: r }) => [
      name,
      fmt(r.rps, 0),
      ratio(r.rps, base?.rps),
      fmt(r.p50, Number.isInteger(r.p50) ? 0 : 1),
      fmt(r.p99, Number.isInteger(r.p99) ? 0 : 1),
      ratio(r.p99, base?.p99),
      fmt(r.errors),
      fmt(r.non2xx),
      fmt(r.rssMB, 1),
      fmt(r.cpuUsPerReq, 0)
    ]),
    notes: [
      `median of ${reps} rep(s); errors and non-2xx are totals over all reps; latency of 2xx answers only, 1 ms resolution (autocannon)`,
      'RSS = peak VmRSS of the serving process during load; CPU = its user+system time per completed request',
      ...(opts.notes ?? [])
    ]
  })
}

/**
 * The goal line under a table: the gateway's req/s against the baseline's,
 * as a ratio, and (when `p99NoWorse`) its p99 against the baseline's.
 */
export function goalLine (rows: MeasuredRow[], baseline: string, gateway: string, minRatio: number, p99NoWorse: boolean): string {
  const b = rows.find((r) => r.name === baseline)?.result
  const g = rows.find((r) => r.name === gateway)?.result
  if (b === undefined || g === undefined || b.rps === 0) return ''
  const x = g.rps / b.rps
  const met = x >= minRatio && (!p99NoWorse || g.p99 <= b.p99)
  return `goal (≥ ${minRatio.toFixed(2)}× ${baseline} req/s${p99NoWorse ? ', p99 ≤ its p99' : ''}): ${x.toFixed(2)}× req/s, p99 ${fmt(g.p99)} vs ${fmt(b.p99)} ms — ${met ? 'met' : 'not met'}`
}

/**
 * Counts the gateway's log bytes per measured request: `wrap` gives the
 * gateway's target hooks that empty its log before a round and add up
 * what it wrote after; other targets pass through untouched.
 */
export function logBytesPerRequest (gw: GatewayProcess, gatewayName: string): { wrap: (t: Target) => Target, perRequest: () => number } {
  let bytes = 0
  let requests = 0
  return {
    wrap: (t) => t.name !== gatewayName
      ? t
      : {
          ...t,
          before: () => gw.truncateLog(),
          after: (s) => {
            bytes += gw.logBytes()
            requests += s.requests
            gw.truncateLog()
          }
        },
    perRequest: () => requests > 0 ? bytes / requests : Number.NaN
  }
}
