import {PANEL_AREAS, isWaived, worstStatus, type CheckResult, type PanelArea, type PostureStatus} from './check.js';
import type {PostureContext} from './context.js';
import {coverageOf} from './probes/audit-trail.js';

/**
 * The product page's "security posture" panel, computed from the results, never asserted: each
 * line's value is the word for its worst (unwaived) status, and its evidence counts what was
 * measured. The first six lines are the product page's; backups, keys and runtime follow.
 */
export interface PanelLine {
  readonly area: PanelArea;
  readonly label: string;
  readonly value: string;
  /** The worst unwaived status of the area's checks (SKIP when none applied). */
  readonly status: PostureStatus;
  readonly evidence: string;
}

const LABEL: Record<PanelArea, string> = {
  isolation: 'tenant isolation',
  'at-rest': 'data at rest encrypted',
  'in-transit': 'data in transit',
  audit: 'audit trail',
  'self-host': 'self-host',
  residency: 'data residency',
  backups: 'backups',
  keys: 'key rotation',
  runtime: 'runtime',
};

/** The value shown when the area passes, warns, fails, or could not be evaluated. */
const WORDS: Record<PanelArea, {pass: string; warn: string; fail: string}> = {
  isolation: {pass: 'db-level', warn: 'db-level', fail: 'broken'},
  'at-rest': {pass: 'yes', warn: 'yes', fail: 'no'},
  'in-transit': {pass: 'tls 1.3', warn: 'tls 1.3', fail: 'not tls 1.3 only'},
  audit: {pass: '100%', warn: '100%', fail: 'gaps'},
  'self-host': {pass: 'yes', warn: 'yes', fail: 'no'},
  residency: {pass: 'your call', warn: 'your call', fail: 'violated'},
  backups: {pass: 'fresh', warn: 'ageing', fail: 'stale'},
  keys: {pass: 'on policy', warn: 'rotation due', fail: 'overdue'},
  runtime: {pass: 'healthy', warn: 'healthy', fail: 'unhealthy'},
};

export function panelOf(checks: readonly CheckResult[], ctx: PostureContext): PanelLine[] {
  return PANEL_AREAS.map((area) => {
    const all = checks.filter((c) => c.area === area);
    const status = worstStatus(all);
    const words = WORDS[area];
    let value = status === 'FAIL' ? words.fail : status === 'ERROR' ? 'unverified' : status === 'WARN' ? words.warn : status === 'SKIP' ? 'n/a' : words.pass;
    const audit = area === 'audit' ? triggerCoverage(all) : undefined;
    // The percentage is the headline only while it is the whole story: a broken chain or guard, or
    // a check that could not run, shows as such.
    if (audit && audit.total > 0 && (status === 'PASS' || (status === 'FAIL' && all.every((c) => c.status === 'PASS' || c.id === 'audit.change-log-coverage')))) {
      value = `${Math.floor((1000 * audit.covered) / audit.total) / 10}%`;
    }
    return {area, label: LABEL[area], value, status, evidence: evidenceOf(area, all, ctx, audit)};
  });
}

/** Module tables with the change trigger, summed over the tenants' coverage results. */
export function triggerCoverage(results: readonly CheckResult[]): {covered: number; total: number} | undefined {
  const measured = results.map(coverageOf).filter((c) => c !== undefined);
  if (measured.length === 0) return undefined;
  return measured.reduce((sum, c) => ({covered: sum.covered + c.covered, total: sum.total + c.total}), {covered: 0, total: 0});
}

function evidenceOf(area: PanelArea, all: readonly CheckResult[], ctx: PostureContext, audit: {covered: number; total: number} | undefined): string {
  const passed = all.filter((c) => c.status === 'PASS').length;
  const parts: string[] = [];
  if (area === 'isolation') {
    const tenants = new Map<string, boolean>();
    for (const c of all) if (c.scope.startsWith('tenant:')) tenants.set(c.scope, (tenants.get(c.scope) ?? true) && c.status === 'PASS');
    parts.push(`${[...tenants.values()].filter(Boolean).length}/${tenants.size} tenants: own db, own role, no PUBLIC connect, hba sameuser, cross-tenant login refused`);
  } else if (area === 'audit') {
    if (audit) parts.push(`${audit.covered}/${audit.total} module tables have the change trigger`);
    const chain = all.find((c) => c.id === 'audit.ops-log-chain');
    if (chain) parts.push(chain.status === 'PASS' ? 'ops log chain intact' : `ops log chain: ${chain.status.toLowerCase()}`);
  } else if (area === 'residency') {
    const byRegion = new Map<string, number>();
    for (const t of ctx.tenants) byRegion.set(t.region, (byRegion.get(t.region) ?? 0) + 1);
    parts.push([...byRegion].map(([r, n]) => `${r}: ${n} tenant${n === 1 ? '' : 's'}`).join(', ') || 'no tenants');
    const misplaced = all.filter((c) => c.id === 'residency.backup-placement' && c.status === 'FAIL').length;
    parts.push(`${misplaced} destination${misplaced === 1 ? '' : 's'} holding another region's backups`);
  } else if (area === 'in-transit') {
    parts.push('checked by handshake: TLS 1.3 negotiated, TLS 1.2 refused');
  }
  parts.push(`${passed}/${all.filter((c) => c.status !== 'SKIP').length} checks pass`);
  const problems = all.filter((c) => c.status !== 'PASS' && c.status !== 'SKIP');
  for (const c of problems.slice(0, 2)) parts.push(`${c.status.toLowerCase()}${isWaived(c) ? ' (waived)' : ''}: ${c.title}${c.scope === 'install' ? '' : ` [${c.scope}]`}`);
  if (problems.length > 2) parts.push(`${problems.length - 2} more`);
  return parts.join('; ');
}
