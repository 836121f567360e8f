/**
 * Attack scenario: slow clients against the gateway, beside nginx.
 *
 * The same two upstreams (a primary and a secondary, bench upstream
 * processes that answer a POST once its body is in) are reached through lattice-gateway (a service with both
 * origins, defaults otherwise) and, when nginx is installed, through
 * nginx as a reverse proxy (`upstream { server primary; server secondary
 * backup; }`, its own nginx.conf written to the run's temp directory,
 * run as a child with `master_process off`, defaults otherwise). For
 * each target, two phases of `--seconds`:
 *
 * - quiet: a normal client alone (autocannon, `--normal` connections,
 *   GET) — success rate, p50, p99;
 * - attack: the same normal client while attackers (raw sockets from this
 *   process, reconnecting whenever the server closes them) hold
 *   connections: `--slowloris` clients trickling header lines, `--slow-small`
 *   POSTs of 1000 bytes trickled a byte at a time, `--slow-large` POSTs of
 *   1 MiB that send 100 KiB and then trickle, every `--gap` ms.
 *
 * Reported per phase: the normal client's requests, success rate (2xx of
 * all attempts, errors included), p50/p99; how the attackers' connections
 * ended (408, another status, closed without an answer, still open at the
 * end); requests the secondary served (traffic that switched) and, for
 * the gateway, failover and breaker transitions in its log.
 *
 *   npm run bench -- attack [--seconds 20] [--normal 10] [--slowloris 100] [--slow-small 100] [--slow-large 20] [--gap 1000]
 */
import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { fmt, load, parseBenchArgs, pinning, printTable, scratch, startGateway, startProgram, startUpstream, type ChildHandle, type LoadResult, type Upstream } from './lib.js'

interface Options { seconds: number, normal: number, slowloris: number, slowSmall: number, slowLarge: number, gapMs: number }

interface AttackTally {
  opened: number
  /** Connections ended, by how: '408', '400', '504', 'closed' (no answer). */
  ended: Map<string, number>
  openAtEnd: number
}

interface PhaseRow {
  target: string
  phase: 'quiet' | 'attack'
  normal: LoadResult
  tally: AttackTally | null
  secondary: number
  transitions: string
}

export async function run (args: string[]): Promise<void> {
  const { values } = parseBenchArgs(args, {
    seconds: { type: 'string' },
    normal: { type: 'string' },
    slowloris: { type: 'string' },
    'slow-small': { type: 'string' },
    'slow-large': { type: 'string' },
    gap: { type: 'string' }
  })
  const num = (name: string, def: number, min: number): number => {
    const v = values[name] === undefined ? def : Number(values[name])
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer >= ${min}; got ${String(values[name])}`)
    return v
  }
  const o: Options = {
    seconds: num('seconds', 20, 1),
    normal: num('normal', 10, 1),
    slowloris: num('slowloris', 100, 0),
    slowSmall: num('slow-small', 100, 0),
    slowLarge: num('slow-large', 20, 0),
    gapMs: num('gap', 1000, 10)
  }
  const nginx = nginxPath()
  const rows: PhaseRow[] = []
  rows.push(...await gatewayRun(o))
  if (nginx === null) process.stdout.write('\nattack: nginx is not installed (apt-get install -y nginx): the nginx rows are skipped\n')
  else rows.push(...await nginxRun(o, nginx))

  const ended = (t: AttackTally | null, key: string): string => t === null ? '-' : fmt(t.ended.get(key) ?? 0)
  const other = (t: AttackTally | null): string => {
    if (t === null) return '-'
    const parts = [...t.ended].filter(([k]) => k !== '408' && k !== 'closed').map(([k, n]) => `${n}×${k}`)
    return parts.length === 0 ? '0' : parts.join(' ')
  }
  printTable({
    title: `attack — slow clients (${o.slowloris} slowloris, ${o.slowSmall} slow 1000-byte bodies, ${o.slowLarge} slow 1 MiB bodies, a byte every ${o.gapMs} ms) while ${o.normal} normal connections send GETs, ${o.seconds} s per phase`,
    columns: ['target', 'phase', 'normal reqs', 'success %', 'p50 ms', 'p99 ms', 'attack conns', 'ended 408', 'other status', 'closed, no answer', 'open at end', 'secondary reqs', 'transitions'],
    rows: rows.map((r) => [
      r.target, r.phase, fmt(r.normal.requests), successPct(r.normal), fmt(r.normal.p50), fmt(r.normal.p99),
      r.tally === null ? '-' : fmt(r.tally.opened), ended(r.tally, '408'), other(r.tally), ended(r.tally, 'closed'), r.tally === null ? '-' : fmt(r.tally.openAtEnd),
      fmt(r.secondary), r.transitions
    ]),
    notes: [
      'success % = 2xx answers ÷ (answers + connection errors) of the normal client; p50/p99 over its 2xx answers (autocannon, 1 ms resolution)',
      'attack conns = attacker connections opened during the phase (each reconnects when closed); ended = how the server ended them; open at end = still held when the phase stopped',
      'secondary reqs = requests the secondary upstream served in the phase (traffic the slow clients pushed off the primary); transitions = the gateway\'s failover/breaker log lines (nginx: -)',
      'both at their defaults: the gateway reads bodies up to 64 KiB before contacting an origin, 408 after clientBodyTimeoutMs 10 s (buffered) / a 10 s gap (streamed), headersTimeoutMs 10 s, requestTimeoutMs 30 s; nginx buffers every body, client_header_timeout and client_body_timeout 60 s between reads',
      pinning.note
    ]
  })
}

function successPct (r: LoadResult): string {
  const attempts = r.requests + r.errors
  return attempts === 0 ? '-' : ((100 * (r.requests - r.non2xx)) / attempts).toFixed(2)
}

async function upstreams (started: ChildHandle[]): Promise<{ primary: Upstream, secondary: Upstream }> {
  // Like a service that parses what it is sent: a POST is answered once its body is in.
  const primary = await startUpstream({ name: 'primary', readBody: true })
  started.push(primary)
  const secondary = await startUpstream({ name: 'secondary', readBody: true })
  started.push(secondary)
  return { primary, secondary }
}

async function gatewayRun (o: Options): Promise<PhaseRow[]> {
  const started: ChildHandle[] = []
  try {
    const { primary, secondary } = await upstreams(started)
    const gw = await startGateway({
      server: { logLevel: 'info' },
      services: { items: { origins: { primary: primary.url, secondary: secondary.url } } },
      routes: [{ type: 'proxy', prefix: '/api', service: 'items', rewritePrefix: '' }]
    })
    started.push(gw)
    const transitions = (): string => {
      let failovers = 0
      let breakers = 0
      for (const line of readFileSync(gw.logFile, 'utf8').split('\n')) {
        if (line.includes('"event":"failover"')) failovers++
        if (line.includes('"event":"breaker"')) breakers++
      }
      return `${failovers} failover, ${breakers} breaker`
    }
    return await phases('lattice-gateway', gw.url, secondary, o, transitions)
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

async function nginxRun (o: Options, bin: string): Promise<PhaseRow[]> {
  const started: ChildHandle[] = []
  try {
    const { primary, secondary } = await upstreams(started)
    const dir = join(scratch(), `nginx-${Date.now().toString(36)}`)
    mkdirSync(dir, { recursive: true })
    for (const d of ['logs', 'body', 'proxy']) mkdirSync(join(dir, d), { recursive: true })
    const port = await freePort()
    const hostPort = (u: string): string => new URL(u).host
    writeFileSync(join(dir, 'nginx.conf'), `
daemon off;
master_process off;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'logs', 'error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'body')};
  proxy_temp_path ${join(dir, 'proxy')};
  upstream items {
    server ${hostPort(primary.url)};
    server ${hostPort(secondary.url)} backup;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    location /api/ {
      proxy_pass http://items/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`)
    const proc = startProgram('nginx', bin, ['-p', dir, '-c', join(dir, 'nginx.conf')], { cwd: dir })
    started.push(proc)
    const url = `http://127.0.0.1:${port}`
    for (let i = 0; ; i++) {
      try {
        const res = await request(`${url}/api/items/1`)
        await res.body.dump()
        if (res.statusCode === 200) break
      } catch {}
      if (i > 200) throw new Error(`nginx did not start: ${proc.stderrTail()}`)
      await sleep(50)
    }
    return await phases('nginx', url, secondary, o, () => '-')
  } finally {
    await Promise.all(started.map((c) => c.stop()))
  }
}

async function phases (target: string, base: string, secondary: Upstream, o: Options, transitions: () => string): Promise<PhaseRow[]> {
  const url = `${base}/api/items/1`
  // Warm-up: pools and JIT.
  await load({ url, duration: 2, connections: o.normal })
  const rows: PhaseRow[] = []
  let before = (await secondary.stats()).requests
  const quiet = await load({ url, duration: o.seconds, connections: o.normal })
  let after = (await secondary.stats()).requests
  rows.push({ target, phase: 'quiet', normal: quiet, tally: null, secondary: after - before, transitions: transitions() })
  before = after
  const attack = startAttackers(base, o)
  // Let the attackers take their connections first.
  await sleep(Math.min(2000, o.gapMs * 2))
  const loud = await load({ url, duration: o.seconds, connections: o.normal })
  const tally = attack.stop()
  after = (await secondary.stats()).requests
  rows.push({ target, phase: 'attack', normal: loud, tally, secondary: after - before, transitions: transitions() })
  process.stderr.write(`attack: ${target} done\n`)
  return rows
}

/** Attacker connections that reconnect whenever the server ends them, until stop(). */
function startAttackers (base: string, o: Options): { stop(): AttackTally } {
  const port = Number(new URL(base).port)
  const tally: AttackTally = { opened: 0, ended: new Map(), openAtEnd: 0 }
  const live = new Set<Socket>()
  let stopped = false
  const head = (lines: string[]): string => lines.join('\r\n')
  const kinds: Array<{ n: number, first: string, drip: string }> = [
    // slowloris: a request head that never ends.
    { n: o.slowloris, first: head(['GET /api/items/1 HTTP/1.1', 'Host: 127.0.0.1', 'User-Agent: slowloris', '']), drip: 'X-a: b\r\n' },
    // slow body, small enough to be buffered.
    { n: o.slowSmall, first: head(['POST /api/items/1 HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: text/plain', 'Content-Length: 1000', '', '']), drip: 'a' },
    // slow body, large: streamed.
    { n: o.slowLarge, first: head(['POST /api/items/1 HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: text/plain', `Content-Length: ${1024 * 1024}`, '', '']) + 'b'.repeat(100 * 1024), drip: 'b' }
  ]
  const open = (first: string, drip: string): void => {
    if (stopped) return
    tally.opened++
    const sock = connect(port, '127.0.0.1')
    live.add(sock)
    let received = ''
    let timer: NodeJS.Timeout | null = null
    sock.on('connect', () => {
      sock.write(first)
      timer = setInterval(() => { if (sock.writable) sock.write(drip) }, o.gapMs)
    })
    sock.on('data', (c: Buffer) => { if (received.length < 64) received += c.toString('latin1') })
    sock.on('error', () => {})
    sock.on('close', () => {
      if (timer !== null) clearInterval(timer)
      live.delete(sock)
      if (stopped) return
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(received)
      const key = m === null ? 'closed' : m[1]!
      tally.ended.set(key, (tally.ended.get(key) ?? 0) + 1)
      // A new attacker takes its place, a little later (as a tool would).
      setTimeout(open, 50, first, drip)
    })
  }
  for (const k of kinds) for (let i = 0; i < k.n; i++) open(k.first, k.drip)
  return {
    stop () {
      stopped = true
      tally.openAtEnd = live.size
      for (const s of live) s.destroy()
      return tally
    }
  }
}

function nginxPath (): string | null {
  for (const p of ['/usr/sbin/nginx', '/usr/bin/nginx', '/usr/local/sbin/nginx']) {
    try {
      execFileSync(p, ['-v'], { stdio: 'ignore' })
      return p
    } catch {}
  }
  return null
}

async function freePort (): Promise<number> {
  const s = createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()))
  const port = (s.address() as AddressInfo).port
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}
