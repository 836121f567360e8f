/**
 * Multi-core scenario: the pass-through of bench/passthrough.ts with the
 * gateway at `server.workers: 1` and at `server.workers: 2`, measured in
 * one run, to report how the gateway scales on this machine.
 *
 * Unlike the other scenarios nothing is pinned: the gateway (or its
 * workers), the upstream and the load generator may all run on every core,
 * as they would on a host. On a 2-core machine the second worker therefore
 * shares the cores with autocannon and the upstream, and the table says
 * so. CPU µs/req counts every process of the gateway (the cluster primary
 * and its workers); RSS is the first worker's peak.
 *
 *   npm run bench -- workers [--counts 1,2] [--duration S] [--reps N] [--connections C] [--warmup S]
 */
import { readFileSync } from 'node:fs'
import { cpus } from 'node:os'
import {
  fmt, loadTable, parseBenchArgs, pinning, pinSelfToLoadCpu, startGateway, startUpstream, runMatrix,
  logBytesPerRequest, type ChildHandle, type GatewayProcess, type Target
} from './lib.js'

export async function run (args: string[]): Promise<void> {
  const { common, values } = parseBenchArgs(args, { counts: { type: 'string' } })
  const raw = typeof values.counts === 'string' ? values.counts : '1,2'
  const counts = raw.split(',').map((s) => Number(s.trim()))
  if (counts.some((n) => !Number.isInteger(n) || n < 1 || n > 64)) throw new Error(`--counts must list worker counts from 1 to 64, e.g. 1,2 (got ${raw})`)

  const started: ChildHandle[] = []
  pinSelfToLoadCpu(pinning.allCpus)
  try {
    const primary = await startUpstream({ name: 'primary', pin: false })
    started.push(primary)
    const secondary = await startUpstream({ name: 'secondary', pin: false })
    started.push(secondary)
    const gateways: GatewayProcess[] = []
    for (const workers of counts) {
      const gw = await startGateway({
        server: { logLevel: 'info', workers },
        services: { items: { origins: { primary: primary.url, secondary: secondary.url } } },
        routes: [{ type: 'proxy', prefix: '/api', service: 'items', rewritePrefix: '' }]
      }, { pin: false })
      started.push(gw)
      gateways.push(gw)
    }

    const targets: Target[] = gateways.map((gw, i) => {
      const workers = counts[i]!
      const pids = processesOf(gw.pid)
      if (workers > 1 && pids.length < workers + 1) throw new Error(`workers: ${workers}: expected ${workers} worker processes under pid ${gw.pid}, found ${pids.length - 1}`)
      // Workers first: the table's RSS column is the first watched pid's.
      return { name: `workers: ${workers}`, url: `${gw.url}/api/items/1`, watch: [...pids.slice(1), pids[0]!] }
    })
    const logs = gateways.map((gw, i) => logBytesPerRequest(gw, targets[i]!.name))
    const rows = await runMatrix(targets.map((t, i) => logs[i]!.wrap(t)), common, { label: 'workers' })

    const one = rows[0]?.result.rps
    loadTable(`workers — pass-through, 1 KB JSON, 0 ms upstream, ${common.connections} connections, ${common.duration} s × ${common.reps}`, rows, {
      baseline: rows[0]?.name,
      notes: [
        `${cpus().length} CPUs; nothing pinned: the gateway, the upstream and the load generator (autocannon, in the runner) share every core`,
        'every feature on, as in the passthrough scenario; CPU µs/req is the cluster primary plus its workers',
        ...rows.slice(1).map((r) => `${r.name}: ${one === undefined || one === 0 ? '—' : fmt(r.result.rps / one, 2)}× the req/s of ${rows[0]!.name}`)
      ]
    })
  } finally {
    await Promise.all(started.map((c) => c.stop()))
    pinSelfToLoadCpu()
  }
}

/** The pid and its child processes (a cluster primary's workers), from /proc. */
function processesOf (pid: number): number[] {
  let children: number[] = []
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {}
  return [pid, ...children]
}
