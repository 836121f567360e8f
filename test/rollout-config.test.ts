/**
 * Rollout and preview config (SPEC §11): defaults filled in, every error at
 * its own path, all of them in one run.
 */
import t from 'tap'
import { validateConfig, ConfigError, type ConfigIssue } from '../src/config/load.js'
import { ROLLOUT_DEFAULTS } from '../src/config/schema.js'

const review = {
  deployments: { blue: { primary: 'http://127.0.0.1:9201' }, green: { primary: 'http://127.0.0.1:9203' } },
  traffic: { blue: 100, green: 0 }
}

function issuesOf (raw: unknown): string[] {
  try {
    validateConfig(raw)
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i: ConfigIssue) => `${i.path}: ${i.message}`)
    throw err
  }
  throw new Error('the config was accepted')
}

t.test('defaults: a rollout block gets the SPEC defaults; preview only when given', async (t) => {
  const c = validateConfig({ services: { review: { ...review, rollout: {} } } })
  t.strictSame(c.services.review!.rollout, { steps: [5, 25, 50, 100], stepIntervalMs: 60000, analysis: { minRequests: 50, maxErrorRate: 0.01, maxP99Ratio: 1.5 }, failureLimit: 1, shield: true })
  t.strictSame(c.services.review!.rollout, ROLLOUT_DEFAULTS, 'the defaults a service without the block starts with')
  t.equal(c.services.review!.preview, undefined)
  const p = validateConfig({ services: { review: { ...review, preview: {}, rollout: { analysis: { maxErrorRate: 0.05 } } } } })
  t.strictSame(p.services.review!.preview, { header: 'x-preview-deployment' })
  t.strictSame(p.services.review!.rollout!.analysis, { minRequests: 50, maxErrorRate: 0.05, maxP99Ratio: 1.5 }, 'an analysis key given alone keeps the other defaults')
})

t.test('errors are reported at their paths, all at once', async (t) => {
  const lines = issuesOf({
    services: {
      review: { ...review, rollout: { steps: [5, 50, 25, 100], stepIntervalMs: 1, analysis: { maxErrorRate: 2, minRequets: 3 }, shield: 'yes' }, preview: { header: '', tokn: 'x' } },
      other: { ...review, rollout: { steps: [10, 50] } },
      single: { origins: { primary: 'http://127.0.0.1:9101' }, rollout: {} }
    }
  })
  const has = (re: RegExp): void => { t.ok(lines.some((l) => re.test(l)), `${re}: ${lines.join(' | ')}`) }
  has(/^services\.review\.rollout\.stepIntervalMs: must be >= 10/)
  has(/^services\.review\.rollout\.analysis\.maxErrorRate: must be <= 1/)
  has(/^services\.review\.rollout\.analysis\.minRequets: unknown key \(did you mean "minRequests"\?\)/)
  has(/^services\.review\.rollout\.shield: must be true or false/)
  has(/^services\.review\.preview\.header: must not be empty/)
  has(/^services\.review\.preview\.tokn: unknown key/)
  has(/^services\.other\.rollout\.steps: the last step must be 100/)
  has(/^services\.single\.rollout: needs at least two deployments/)
  const steps = issuesOf({ services: { review: { ...review, rollout: { steps: [5, 50, 25, 100] } } } })
  t.strictSame(steps, ['services.review.rollout.steps[2]: steps must increase (got [5,50,25,100])'])
})
