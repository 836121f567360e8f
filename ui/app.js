// lattice-gateway operator console (SPEC §15): Preact + htm, no build step.
//
// State comes from the admin API (GET /admin/services, /admin/fleet,
// /admin/services/:name/history and /rollout) and from /metrics, polled
// every second: a change made anywhere (this page, curl, another browser,
// another replica) shows within 2 s. Actions go through the same admin API
// an operator would call with curl, each after a confirmation naming the
// change. The admin token lives in sessionStorage only and travels as a
// bearer header, never in a URL or a cookie.
import { h, render } from './vendor/preact.mjs'
import { useCallback, useEffect, useRef, useState } from './vendor/hooks.mjs'
import htm from './vendor/htm.mjs'

const html = htm.bind(h)
// uPlot (the largest module) is needed only once signed in: loaded then, off the sign-in's path.
let uPlotModule = null
const loadUPlot = () => (uPlotModule ??= import('./vendor/uplot.mjs').then((m) => m.default))
const TOKEN_KEY = 'lattice-gateway.admin-token'
const POLL_MS = 1000
const WINDOW_S = 300
const PALETTE = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2', '#4b5563']
const NAMED_COLOURS = { blue: '#2563eb', green: '#16a34a', red: '#dc2626', canary: '#d97706', default: '#4b5563' }

// ---------------------------------------------------------------- admin API

class ApiError extends Error {
  constructor (status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }

  /** `409 GW_CONFLICT: a rollout is running`, for the page. */
  describe () {
    return this.status === 0 ? this.message : `${this.status} ${this.code}: ${this.message}`
  }
}

async function call (token, method, path, { body, headers = {}, auth = true } = {}) {
  const init = { method, cache: 'no-store', credentials: 'omit', headers: { accept: 'application/json', ...headers } }
  if (auth) init.headers.authorization = `Bearer ${token}`
  if (body !== undefined) {
    init.body = JSON.stringify(body)
    init.headers['content-type'] = 'application/json'
  }
  let res
  try {
    res = await fetch(path, init)
  } catch (err) {
    throw new ApiError(0, 'NETWORK', `cannot reach the admin listener (${err.message})`)
  }
  const text = await res.text()
  if (res.ok && !auth) return text
  let parsed = null
  try { parsed = text === '' ? null : JSON.parse(text) } catch { parsed = null }
  if (!res.ok) {
    const code = parsed !== null && typeof parsed.code === 'string' ? parsed.code : 'HTTP_ERROR'
    const message = parsed !== null && typeof parsed.message === 'string' ? parsed.message : (text.slice(0, 200) || res.statusText)
    throw new ApiError(res.status, code, message)
  }
  return parsed
}

const enc = encodeURIComponent

// ------------------------------------------------------------------ metrics

/** Sums `gateway_upstream_requests_total` per service and deployment: {total, failed}. */
export function upstreamTotals (text) {
  const totals = new Map()
  const line = /^gateway_upstream_requests_total\{([^}]*)\}\s+([0-9.eE+-]+)/
  const label = /(\w+)="((?:[^"\\]|\\.)*)"/g
  for (const row of text.split('\n')) {
    const m = line.exec(row)
    if (m === null) continue
    const labels = {}
    for (const l of m[1].matchAll(label)) labels[l[1]] = l[2]
    const key = `${labels.service}\u0000${labels.deployment}`
    const t = totals.get(key) ?? { total: 0, failed: 0 }
    const n = Number(m[2])
    t.total += n
    if (labels.outcome !== 'ok') t.failed += n
    totals.set(key, t)
  }
  return totals
}

/** The last five minutes of requests/s and error rate per deployment, in the browser. */
class Ring {
  constructor () {
    this.samples = [] // {t (s), rates: Map key -> {rps, err}}
    this.prev = null
  }

  add (t, totals) {
    if (this.prev !== null && t > this.prev.t) {
      const dt = t - this.prev.t
      const rates = new Map()
      for (const [key, cur] of totals) {
        const before = this.prev.totals.get(key)
        // A counter that went down was reset (a restart): no rate for that step.
        if (before === undefined || cur.total < before.total) continue
        const dTotal = cur.total - before.total
        const dFailed = Math.max(0, cur.failed - before.failed)
        rates.set(key, { rps: dTotal / dt, err: dTotal === 0 ? null : (100 * dFailed) / dTotal })
      }
      this.samples.push({ t, rates })
      while (this.samples.length > 0 && this.samples[0].t < t - WINDOW_S) this.samples.shift()
    }
    this.prev = { t, totals }
  }

  /** uPlot data for one service: [times, per deployment values...]. */
  data (service, deployments, field) {
    const xs = this.samples.map((s) => s.t)
    const ys = deployments.map((dep) => this.samples.map((s) => {
      const r = s.rates.get(`${service}\u0000${dep}`)
      return r === undefined ? null : r[field]
    }))
    return [xs, ...ys]
  }
}

// ------------------------------------------------------------------- poller

const ACTIVE_ROLLOUT = new Set(['running', 'paused'])

/**
 * One poll a second: services and metrics always; the fleet while it is
 * configured; a service's history and rollout when its weights or version
 * changed, and its rollout every time while one runs or is paused.
 */
class Poller {
  constructor (token, onState, onUnauthorized) {
    this.token = token
    this.onState = onState
    this.onUnauthorized = onUnauthorized
    this.ring = new Ring()
    this.signatures = new Map()
    this.histories = {}
    this.rollouts = {}
    this.fleetSet = null // null: not asked yet; false: no fleet
    this.fleet = null
    this.services = null
    this.errors = []
    this.updatedAt = null
    this.timer = null
    this.running = false
    this.inFlight = null
  }

  start () {
    this.running = true
    this.loop()
  }

  stop () {
    this.running = false
    clearTimeout(this.timer)
  }

  async loop () {
    if (!this.running) return
    await this.refresh()
    if (this.running) this.timer = setTimeout(() => this.loop(), POLL_MS)
  }

  /** Polls now (after an action); concurrent callers share one poll. */
  refresh () {
    if (this.inFlight === null) this.inFlight = this.tick().finally(() => { this.inFlight = null })
    return this.inFlight
  }

  async tick () {
    const errors = []
    const get = (path) => call(this.token, 'GET', path)
    const [services, metrics, fleet] = await Promise.allSettled([
      get('/admin/services'),
      call(this.token, 'GET', '/metrics', { auth: false, headers: { accept: 'text/plain' } }),
      this.fleetSet === false ? Promise.resolve(null) : get('/admin/fleet')
    ])
    if (services.status === 'rejected' && services.reason.status === 401) {
      this.stop()
      this.onUnauthorized()
      return
    }
    if (services.status === 'fulfilled') this.services = services.value
    else errors.push(`GET /admin/services: ${services.reason.describe()}`)
    if (metrics.status === 'fulfilled') this.ring.add(Date.now() / 1000, upstreamTotals(metrics.value))
    else errors.push(`GET /metrics: ${metrics.reason.describe()}`)
    if (fleet.status === 'fulfilled') {
      if (fleet.value !== null) {
        this.fleetSet = true
        this.fleet = fleet.value
      }
    } else if (fleet.reason.status === 404 && this.fleetSet !== true) {
      this.fleetSet = false
    } else {
      errors.push(`GET /admin/fleet: ${fleet.reason.describe()}`)
    }

    if (this.services !== null && services.status === 'fulfilled') {
      await Promise.all(Object.entries(this.services).map(async ([name, svc]) => {
        const signature = JSON.stringify([svc.version ?? null, svc.traffic])
        const changed = this.signatures.get(name) !== signature
        this.signatures.set(name, signature)
        const rollout = this.rollouts[name]
        const work = []
        if (changed || this.histories[name] === undefined) {
          work.push(get(`/admin/services/${enc(name)}/history`).then(
            (entries) => { this.histories[name] = { entries, error: null } },
            (err) => { this.histories[name] = { entries: this.histories[name]?.entries ?? null, error: err.describe() } }))
        }
        if (changed || rollout === undefined || (rollout.state !== null && ACTIVE_ROLLOUT.has(rollout.state.status))) {
          work.push(get(`/admin/services/${enc(name)}/rollout`).then(
            (state) => { this.rollouts[name] = { state, error: null } },
            (err) => {
              if (err.status === 404) this.rollouts[name] = { state: null, error: null }
              else this.rollouts[name] = { state: rollout?.state ?? null, error: err.describe() }
            }))
        }
        await Promise.all(work)
      }))
    }
    this.errors = errors
    this.updatedAt = new Date()
    this.publish()
  }

  publish () {
    this.onState({
      services: this.services,
      histories: { ...this.histories },
      rollouts: { ...this.rollouts },
      fleet: this.fleetSet === true ? this.fleet : null,
      ring: this.ring,
      errors: this.errors,
      updatedAt: this.updatedAt
    })
  }
}

// ------------------------------------------------------------- small parts

const colourOf = (dep, i) => NAMED_COLOURS[dep] ?? PALETTE[i % PALETTE.length]
const weightsText = (w) => Object.entries(w ?? {}).map(([d, n]) => `${d} ${n}`).join(', ')
const time = (iso) => {
  if (iso === null || iso === undefined) return '–'
  const d = new Date(iso)
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleTimeString()
}
const dateTime = (iso) => {
  const d = new Date(iso)
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString()
}
const fixed = (n, digits) => (typeof n === 'number' ? n.toFixed(digits) : '–')

/** The one confirmation dialog: `ask(text)` resolves true when `Confirm` was pressed. */
function useConfirm () {
  const [pending, setPending] = useState(null)
  const ask = useCallback((text) => new Promise((resolve) => setPending({ text, resolve })), [])
  const dialog = html`<${ConfirmDialog} pending=${pending} done=${(ok) => { pending?.resolve(ok); setPending(null) }} />`
  return [ask, dialog]
}

function ConfirmDialog ({ pending, done }) {
  const ref = useRef(null)
  const opener = useRef(null)
  useEffect(() => {
    const d = ref.current
    if (pending !== null && !d.open) {
      opener.current = document.activeElement
      d.showModal()
    } else if (pending === null && d.open) {
      d.close()
    }
    if (pending === null && opener.current !== null) {
      opener.current.focus?.()
      opener.current = null
    }
  }, [pending])
  return html`
    <dialog ref=${ref} class="confirm" aria-labelledby="confirm-title" aria-describedby="confirm-text"
      onCancel=${(e) => { e.preventDefault(); done(false) }}>
      <h2 id="confirm-title">Confirm the change</h2>
      <p id="confirm-text">${pending?.text ?? ''}</p>
      <div class="buttons">
        <button type="button" autofocus onClick=${() => done(false)}>Cancel</button>
        <button type="button" class="primary" onClick=${() => done(true)}>Confirm</button>
      </div>
    </dialog>`
}

/** An action's outcome under its panel: errors as alerts, successes as status. */
function Outcome ({ outcome }) {
  return html`
    <div class="outcome">
      <p role="alert" class=${outcome?.error ? 'error' : 'empty'}>${outcome?.error ?? ''}</p>
      <p role="status" class=${outcome?.notice ? 'notice' : 'empty'}>${outcome?.notice ?? ''}</p>
    </div>`
}

// ------------------------------------------------------------------- charts

function Chart ({ title, unit, service, deployments, ring, field, tick }) {
  const box = useRef(null)
  const plot = useRef(null)
  const [loadError, setLoadError] = useState(null)
  const key = deployments.join('\u0000')
  useEffect(() => {
    let cancelled = false
    let resize = null
    loadUPlot().then((UPlot) => {
      if (cancelled) return
      const el = box.current
      const opts = {
        width: Math.max(240, el.clientWidth),
        height: 150,
        legend: { show: true, live: false },
        cursor: { show: false },
        scales: {
          x: { time: true, range: () => { const now = Date.now() / 1000; return [now - WINDOW_S, now] } },
          // Never a flat zero-height scale: at least 1 req/s or 1 %.
          y: { range: (_u, _min, max) => [0, Math.max(1, (max ?? 0) * 1.1)] }
        },
        axes: [{ stroke: '#555' }, { stroke: '#555', size: 48, values: (_u, vals) => vals.map((v) => `${+v.toFixed(2)}${unit}`) }],
        series: [{}, ...deployments.map((dep, i) => ({ label: dep, stroke: colourOf(dep, i), width: 2, spanGaps: false }))]
      }
      const p = new UPlot(opts, ring.data(service, deployments, field), el)
      plot.current = p
      resize = new ResizeObserver(() => p.setSize({ width: Math.max(240, el.clientWidth), height: 150 }))
      resize.observe(el)
    }, (err) => { if (!cancelled) setLoadError(`charts unavailable: ${err.message}`) })
    return () => {
      cancelled = true
      resize?.disconnect()
      plot.current?.destroy()
      plot.current = null
    }
  }, [key])
  useEffect(() => {
    if (plot.current !== null) plot.current.setData(ring.data(service, deployments, field))
  }, [tick, key])
  return html`
    <figure class="chart">
      <figcaption>${title}</figcaption>
      <div ref=${box} class="plot" role="img" aria-label=${`${title} for ${deployments.join(', ')}, last 5 minutes`}></div>
      ${loadError !== null ? html`<p role="alert" class="error">${loadError}</p>` : null}
    </figure>`
}

// ----------------------------------------------------------------- sign-in

function SignIn ({ onSignedIn, message }) {
  const [error, setError] = useState(message)
  const [busy, setBusy] = useState(false)
  const input = useRef(null)
  useEffect(() => { input.current?.focus() }, [])
  const submit = async (e) => {
    e.preventDefault()
    const token = input.current.value.trim()
    if (token === '') { setError('Enter the admin token'); return }
    setBusy(true)
    setError(null)
    try {
      await call(token, 'GET', '/admin/services')
      onSignedIn(token)
    } catch (err) {
      setBusy(false)
      if (err.status === 401) setError('Invalid token')
      else if (err.status === 403) setError('The admin API is disabled on this gateway (admin.token is not set)')
      else setError(err.describe())
      input.current?.select()
    }
  }
  return html`
    <main class="signin">
      <h1>lattice-gateway console</h1>
      <form onSubmit=${submit} novalidate>
        <label for="token">Admin token</label>
        <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" ref=${input}
          aria-describedby="signin-error" />
        <button type="submit" class="primary" disabled=${busy}>Sign in</button>
        <p id="signin-error" role="alert" class=${error ? 'error' : 'empty'}>${error ?? ''}</p>
      </form>
      <p class="hint">The token is kept in this tab only (sessionStorage) and sent as a bearer header to this gateway's admin API.</p>
    </main>`
}

// ----------------------------------------------------------- service panel

function Origins ({ service, dep, deployment, act, token }) {
  const origins = Object.entries(deployment.origins ?? {})
  return html`
    <ul class="origins">
      ${origins.map(([role, o]) => html`
        <li key=${role} class=${deployment.active === role ? 'active' : ''}>
          <span class="role">${role}</span>
          <span class=${o.healthy ? 'ok' : 'bad'}>${o.healthy ? 'healthy' : 'unhealthy'}</span>
          <span class=${o.breaker === 'closed' ? 'ok' : 'bad'}>breaker ${o.breaker}</span>
          ${deployment.active === role ? html`<strong class="active-tag">active</strong>` : null}
          <span class="url">${o.url}</span>
        </li>`)}
    </ul>
    ${deployment.active === 'secondary'
      ? html`<button type="button" onClick=${() => act(`Fail ${service} ${dep} back to its primary (${deployment.origins?.primary?.url ?? 'primary'})?`,
          () => call(token, 'POST', `/admin/services/${enc(service)}/deployments/${enc(dep)}/failback`),
          (r) => (r?.failedBack ? `${service} ${dep}: back on its primary` : `${service} ${dep}: still on its secondary (the primary is not healthy yet)`))}>Failback</button>`
      : null}`
}

function TrafficForm ({ name, svc, act, token, locked }) {
  const deployments = Object.keys(svc.deployments ?? {})
  const [drafts, setDrafts] = useState({})
  const [localError, setLocalError] = useState(null)
  const current = svc.traffic ?? {}
  const value = (dep) => drafts[dep] ?? String(current[dep] ?? 0)
  const dirty = deployments.some((dep) => drafts[dep] !== undefined && drafts[dep] !== String(current[dep] ?? 0))
  const submit = async (e) => {
    e.preventDefault()
    setLocalError(null)
    const weights = {}
    for (const dep of deployments) {
      const raw = value(dep).trim()
      if (!/^\d+$/.test(raw)) { setLocalError(`${name} ${dep} weight must be a whole number, 0 or more`); return }
      weights[dep] = Number(raw)
    }
    if (Object.values(weights).every((w) => w === 0)) {
      setLocalError(`Invalid change: every weight of ${name} is 0, so no request could be served. Give at least one deployment a weight above 0.`)
      return
    }
    const headers = typeof svc.version === 'number' ? { 'if-match': String(svc.version) } : {}
    const ok = await act(`Set ${name} traffic to ${weightsText(weights)} (now ${weightsText(current)})?`,
      () => call(token, 'PUT', `/admin/services/${enc(name)}/traffic`, { body: weights, headers }),
      (r) => `${name}: traffic ${weightsText(r?.traffic ?? weights)} applied${typeof r?.version === 'number' ? ` (version ${r.version})` : ''}${r?.fleet?.pending?.length ? `; ${r.fleet.pending.length} replica(s) had not confirmed yet` : ''}`)
    if (ok) setDrafts({})
  }
  return html`
    <form class="traffic" onSubmit=${submit} novalidate>
      <table>
        <caption>Deployments${typeof svc.version === 'number' ? html` <span class="version">version ${svc.version}</span>` : null}</caption>
        <thead><tr><th scope="col">Deployment</th><th scope="col">Weight</th><th scope="col">New weight</th><th scope="col">Origins</th></tr></thead>
        <tbody>
          ${deployments.map((dep, i) => html`
            <tr key=${dep}>
              <th scope="row"><span class="swatch" style=${{ background: colourOf(dep, i) }}></span>${dep}</th>
              <td class="weight" data-deployment=${dep}>${current[dep] ?? 0}</td>
              <td>
                <label class="visually-hidden" for=${`w-${name}-${dep}`}>${name} ${dep} weight</label>
                <input id=${`w-${name}-${dep}`} type="number" min="0" step="1" inputmode="numeric" class="weight-input"
                  value=${value(dep)} disabled=${locked}
                  onInput=${(e) => setDrafts({ ...drafts, [dep]: e.currentTarget.value })} />
              </td>
              <td><${Origins} service=${name} dep=${dep} deployment=${svc.deployments[dep]} act=${act} token=${token} /></td>
            </tr>`)}
        </tbody>
      </table>
      <div class="buttons">
        <button type="submit" class="primary" disabled=${locked}>Apply traffic</button>
        ${dirty ? html`<button type="button" onClick=${() => { setDrafts({}); setLocalError(null) }}>Reset</button>` : null}
        ${locked ? html`<span class="hint">Weights are driven by the rollout while it runs or is paused.</span>` : null}
      </div>
      ${localError !== null ? html`<p role="alert" class="error">${localError}</p>` : null}
    </form>`
}

function Analyses ({ analyses }) {
  if (!Array.isArray(analyses) || analyses.length === 0) return html`<p class="hint">No analysis yet.</p>`
  const side = (s) => (s ? `${s.requests ?? 0} req, ${s.failures ?? 0} failed, error rate ${fixed(s.errorRate, 3)}, p99 ${fixed(s.p99Ms, 1)} ms` : '–')
  return html`
    <div class="scroll">
      <table class="analyses">
        <caption>Analyses</caption>
        <thead><tr><th scope="col">Step</th><th scope="col">At</th><th scope="col">Result</th><th scope="col">Reason</th><th scope="col">Candidate</th><th scope="col">Baseline</th></tr></thead>
        <tbody>
          ${analyses.map((a, i) => html`
            <tr key=${i}>
              <td>${(a.step ?? 0) + 1}</td>
              <td>${time(a.at)}</td>
              <td class=${a.passed ? 'ok' : 'bad'}>${a.passed ? 'passed' : 'failed'}</td>
              <td>${a.reason ?? ''}</td>
              <td>${side(a.candidate)}</td>
              <td>${side(a.baseline)}</td>
            </tr>`)}
        </tbody>
      </table>
    </div>`
}

function Rollout ({ name, svc, rollout, act, token }) {
  const deployments = Object.keys(svc.deployments ?? {})
  const state = rollout?.state ?? null
  const active = state !== null && ACTIVE_ROLLOUT.has(state.status)
  const baseline = deployments.reduce((best, d) => ((svc.traffic?.[d] ?? 0) > (svc.traffic?.[best] ?? -1) ? d : best), deployments[0])
  const candidates = deployments.filter((d) => d !== baseline)
  const [to, setTo] = useState('')
  const [steps, setSteps] = useState('')
  const [interval, setIntervalMs] = useState('')
  const [localError, setLocalError] = useState(null)
  const base = `/admin/services/${enc(name)}`
  const verb = (label, path, text) => html`
    <button type="button" onClick=${() => act(text, () => call(token, 'POST', `${base}/rollout/${path}`),
      (r) => `${name}: rollout ${r?.status ?? path}`)}>${label}</button>`
  const start = async (e) => {
    e.preventDefault()
    setLocalError(null)
    const target = to !== '' && candidates.includes(to) ? to : candidates[0]
    const body = { to: target }
    if (steps.trim() !== '') {
      const list = steps.split(/[\s,]+/).filter((s) => s !== '')
      if (!list.every((s) => /^\d+$/.test(s) && Number(s) <= 100)) { setLocalError('Steps are whole percentages from 0 to 100, e.g. 5, 25, 50, 100'); return }
      body.steps = list.map(Number)
    }
    if (interval.trim() !== '') {
      if (!/^\d+$/.test(interval.trim())) { setLocalError('The step interval is a whole number of milliseconds'); return }
      body.stepIntervalMs = Number(interval.trim())
    }
    await act(`Start a rollout of ${name} from ${baseline} to ${target}${body.steps ? ` in steps ${body.steps.join(', ')}` : ' with the configured steps'}?`,
      () => call(token, 'POST', `${base}/rollouts`, { body }),
      (r) => `${name}: rollout to ${r?.to ?? target} started (weight ${r?.weight ?? '?'})`)
  }
  return html`
    <section class="rollout" aria-labelledby=${`ro-${name}`}>
      <h3 id=${`ro-${name}`}>Rollout</h3>
      ${rollout?.error ? html`<p role="alert" class="error">GET rollout: ${rollout.error}</p>` : null}
      ${state !== null
        ? html`
          <p class="rollout-state">
            <strong class=${`status status-${state.status}`}>${state.status}</strong>
            ${' '}${state.from} → ${state.to}, candidate weight ${state.weight}
            ${active ? `, step ${(state.step ?? 0) + 1} of ${state.steps?.length ?? '?'}` : ''}
            ${state.driver ? html`<span class="hint"> · driven by ${state.driver}</span>` : null}
            ${state.reason ? html`<span class="reason"> · ${state.reason}</span>` : null}
          </p>
          <ol class="steps" aria-label="Steps">
            ${(state.steps ?? []).map((w, i) => html`<li key=${i} class=${i < state.step ? 'done' : i === state.step ? 'current' : ''} aria-current=${i === state.step ? 'step' : undefined}>${w}%</li>`)}
          </ol>
          <${Analyses} analyses=${state.analyses} />`
        : html`<p class="hint">No rollout yet.</p>`}
      ${active
        ? html`<div class="buttons">
            ${state.status === 'running'
              ? verb('Pause', 'pause', `Pause the rollout of ${name} to ${state.to} at weight ${state.weight}?`)
              : verb('Resume', 'resume', `Resume the rollout of ${name} to ${state.to}?`)}
            ${verb('Promote', 'promote', `Promote ${state.to}: give it 100% of ${name} now?`)}
            ${verb('Abort', 'abort', `Abort the rollout of ${name}: ${state.from} back to 100%?`)}
          </div>`
        : candidates.length > 0
          ? html`<form class="start" onSubmit=${start} novalidate>
              <div class="field">
                <label for=${`ro-to-${name}`}>${name} rollout candidate</label>
                <select id=${`ro-to-${name}`} value=${to !== '' && candidates.includes(to) ? to : candidates[0]} onChange=${(e) => setTo(e.currentTarget.value)}>
                  ${candidates.map((d) => html`<option key=${d} value=${d}>${d}</option>`)}
                </select>
              </div>
              <div class="field">
                <label for=${`ro-steps-${name}`}>${name} rollout steps (%)</label>
                <input id=${`ro-steps-${name}`} type="text" inputmode="numeric" placeholder="configured" value=${steps} onInput=${(e) => setSteps(e.currentTarget.value)} />
              </div>
              <div class="field">
                <label for=${`ro-int-${name}`}>${name} step interval (ms)</label>
                <input id=${`ro-int-${name}`} type="text" inputmode="numeric" placeholder="configured" value=${interval} onInput=${(e) => setIntervalMs(e.currentTarget.value)} />
              </div>
              <button type="submit" class="primary">Start rollout</button>
              <span class="hint">from ${baseline}, the deployment with the highest weight</span>
              ${localError !== null ? html`<p role="alert" class="error">${localError}</p>` : null}
            </form>`
          : null}
    </section>`
}

function History ({ name, history }) {
  const entries = history?.entries ?? null
  return html`
    <section class="history" aria-labelledby=${`hist-${name}`}>
      <h3 id=${`hist-${name}`}>History</h3>
      ${history?.error ? html`<p role="alert" class="error">GET history: ${history.error}</p>` : null}
      ${entries === null
        ? html`<p class="hint">Loading…</p>`
        : entries.length === 0
          ? html`<p class="hint">No change since this gateway started.</p>`
          : html`<div class="scroll history-scroll">
              <table>
                <caption class="visually-hidden">${name} changes, newest first</caption>
                <thead><tr><th scope="col">Version</th><th scope="col">At</th><th scope="col">Source</th><th scope="col">Change</th><th scope="col">Replica</th><th scope="col">Reason</th></tr></thead>
                <tbody>
                  ${entries.map((e) => html`
                    <tr key=${e.version}>
                      <td>${e.version}</td>
                      <td>${dateTime(e.at)}</td>
                      <td>${e.source}</td>
                      <td>${weightsText(e.from)} → ${weightsText(e.to)}</td>
                      <td>${e.replica}</td>
                      <td>${e.reason ?? ''}</td>
                    </tr>`)}
                </tbody>
              </table>
            </div>`}
    </section>`
}

function ServicePanel ({ name, svc, history, rollout, ring, tick, token, ask, refresh }) {
  const [outcome, setOutcome] = useState(null)
  const deployments = Object.keys(svc.deployments ?? {})
  // Every action: confirmation naming the change, the admin API call, then its answer or error shown here.
  const act = async (question, run, describe) => {
    if (!(await ask(question))) return false
    setOutcome(null)
    try {
      const result = await run()
      setOutcome({ notice: describe(result) })
      await refresh()
      return true
    } catch (err) {
      const hint = err instanceof ApiError && err.status === 412 ? ` — ${name} was changed elsewhere since this page loaded it: check the current weights and apply again` : ''
      setOutcome({ error: `${err instanceof ApiError ? err.describe() : String(err)}${hint}` })
      await refresh()
      return false
    }
  }
  const locked = rollout?.state !== null && rollout?.state !== undefined && ACTIVE_ROLLOUT.has(rollout.state.status)
  return html`
    <section class="panel service" aria-labelledby=${`svc-${name}`} data-service=${name}>
      <h2 id=${`svc-${name}`}>${name}</h2>
      <${TrafficForm} name=${name} svc=${svc} act=${act} token=${token} locked=${locked} />
      <${Outcome} outcome=${outcome} />
      <div class="charts">
        <${Chart} title="Upstream requests/s" unit="" service=${name} deployments=${deployments} ring=${ring} field="rps" tick=${tick} />
        <${Chart} title="Error rate" unit="%" service=${name} deployments=${deployments} ring=${ring} field="err" tick=${tick} />
      </div>
      <${Rollout} name=${name} svc=${svc} rollout=${rollout} act=${act} token=${token} />
      <${History} name=${name} history=${history} />
    </section>`
}

function Fleet ({ fleet }) {
  const replicas = Array.isArray(fleet.replicas) ? fleet.replicas : []
  return html`
    <section class="panel fleet" aria-labelledby="fleet-title">
      <h2 id="fleet-title">Fleet ${fleet.name ?? ''}</h2>
      <p>
        <span class=${fleet.connected ? 'ok' : 'bad'}>${fleet.connected ? 'store connected' : 'store unreachable'}</span>
        · ${replicas.filter((r) => r.live).length} live of ${replicas.length} replicas · this page talks to ${fleet.self}
      </p>
      <div class="scroll">
        <table>
          <caption class="visually-hidden">Replicas</caption>
          <thead><tr><th scope="col">Replica</th><th scope="col">Host</th><th scope="col">PID</th><th scope="col">Started</th><th scope="col">Last seen</th><th scope="col">Live</th><th scope="col">Versions</th></tr></thead>
          <tbody>
            ${replicas.map((r) => html`
              <tr key=${r.id} class=${r.id === fleet.self ? 'self' : ''}>
                <td>${r.id}${r.id === fleet.self ? ' (this one)' : ''}</td>
                <td>${r.host}</td>
                <td>${r.pid}</td>
                <td>${time(r.startedAt)}</td>
                <td>${time(r.lastSeenAt)}</td>
                <td class=${r.live ? 'ok' : 'bad'}>${r.live ? 'live' : 'gone'}</td>
                <td>${Object.entries(r.versions ?? {}).map(([s, v]) => `${s} ${v}`).join(', ')}</td>
              </tr>`)}
          </tbody>
        </table>
      </div>
    </section>`
}

function Dashboard ({ token, onSignOut, onUnauthorized }) {
  const [state, setState] = useState(null)
  const [tick, setTick] = useState(0)
  const poller = useRef(null)
  const [ask, dialog] = useConfirm()
  useEffect(() => {
    const p = new Poller(token, (s) => { setState(s); setTick((n) => n + 1) }, onUnauthorized)
    poller.current = p
    p.start()
    return () => p.stop()
  }, [token])
  useEffect(() => {
    if (state !== null && !performance.getEntriesByName('console-data').length) performance.mark('console-data')
  }, [state])
  const refresh = useCallback(() => poller.current?.refresh(), [])
  const services = state?.services ?? null
  return html`
    <header class="top">
      <h1>lattice-gateway console</h1>
      <p class="updated" aria-live="off">${state?.updatedAt ? `updated ${state.updatedAt.toLocaleTimeString()}` : 'loading…'}</p>
      <button type="button" onClick=${onSignOut}>Sign out</button>
    </header>
    ${state?.errors?.length ? html`<div role="alert" class="error banner">${state.errors.map((e) => html`<p key=${e}>${e}</p>`)}</div>` : null}
    <main class="grid">
      ${state?.fleet ? html`<${Fleet} fleet=${state.fleet} />` : null}
      ${services === null
        ? html`<p class="hint">Loading services…</p>`
        : Object.entries(services).map(([name, svc]) => html`
          <${ServicePanel} key=${name} name=${name} svc=${svc} history=${state.histories[name]} rollout=${state.rollouts[name]}
            ring=${state.ring} tick=${tick} token=${token} ask=${ask} refresh=${refresh} />`)}
    </main>
    ${dialog}`
}

function App () {
  const [token, setToken] = useState(() => sessionStorage.getItem(TOKEN_KEY))
  const [message, setMessage] = useState(null)
  useEffect(() => { performance.mark('console-rendered') }, [])
  if (token === null) {
    return html`<${SignIn} message=${message} onSignedIn=${(t) => { sessionStorage.setItem(TOKEN_KEY, t); setMessage(null); setToken(t) }} />`
  }
  const signOut = (why) => {
    sessionStorage.removeItem(TOKEN_KEY)
    setMessage(why)
    setToken(null)
  }
  return html`<${Dashboard} token=${token} onSignOut=${() => signOut(null)} onUnauthorized=${() => signOut('Invalid token')} />`
}

const root = document.getElementById('app')
root.textContent = ''
render(html`<${App} />`, root)
