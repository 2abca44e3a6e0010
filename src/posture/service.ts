import {POSTURE_STATUSES, PANEL_AREAS, SEVERITY_WEIGHT, errorResult, isWaived, worstStatus, type CheckDefinition, type CheckResult, type PanelArea, type PostureStatus} from './check.js';
import type {PostureContext, Probe} from './context.js';
import {panelOf, type PanelLine} from './panel.js';
import {applyWaivers, type Waiver, type WaiverUse} from './waivers.js';

/** A probe and every check it can emit: when the probe itself breaks, each of them is ERROR. */
export interface RegisteredProbe {
  readonly name: string;
  readonly checks: readonly CheckDefinition[];
  readonly probe: Probe;
}

export type FailOn = 'warn' | 'fail';
export type Overall = 'green' | 'amber' | 'red' | 'grey';

export interface PostureReport {
  readonly format: 1;
  readonly install: {readonly domain: string; readonly target: string; readonly release: string};
  /** When the run started, and how long it took. */
  readonly at: string;
  readonly durationMs: number;
  readonly tenant: string | null;
  readonly failOn: FailOn;
  /** red: a FAIL; grey: nothing failed but something could not be evaluated; amber: a WARN; else green. Waived results don't count. */
  readonly overall: Overall;
  /** Severity-weighted share of evaluated checks that PASS, 0–100 (a waived result is evaluated and not a pass). */
  readonly score: number;
  /** Share of applicable checks (all but SKIP) that could be evaluated (not ERROR, not MANUAL), 0–100. */
  readonly coverage: number;
  readonly counts: Readonly<Record<PostureStatus, number>> & {readonly waived: number};
  readonly panel: readonly PanelLine[];
  readonly checks: readonly CheckResult[];
  readonly waivers: {readonly used: readonly WaiverUse[]; readonly unused: readonly string[]; readonly ignored?: string};
  /** What the exit code is: 0, 3 (something at or above failOn), or 1 (nothing failed, but checks could not be evaluated). */
  readonly exitCode: 0 | 1 | 3;
  /** Set by `--record`: where the run is stored. */
  readonly record?: {readonly id: string; readonly file: string};
}

export interface PostureOptions {
  readonly waivers?: readonly Waiver[];
  readonly failOn?: FailOn;
}

/** Runs every probe at once (each bounds its own connections through ctx.limit) and builds the report. */
export async function runPosture(ctx: PostureContext, probes: readonly RegisteredProbe[], options: PostureOptions = {}): Promise<PostureReport> {
  const started = ctx.clock();
  const t0 = performance.now();
  const measured = (
    await Promise.all(
      probes.map(async (p) => {
        try {
          return await p.probe(ctx);
        } catch (err) {
          return p.checks.map((def) => errorResult(def, 'install', new Error(`the ${p.name} probe failed: ${err instanceof Error ? err.message : String(err)}`)));
        }
      }),
    )
  ).flat();
  const {results, used} = applyWaivers(measured, options.waivers ?? [], started);
  const checks = sortResults(results);
  const failOn = options.failOn ?? 'fail';
  const usedIds = new Set(used.map((u) => u.waiver.id));
  return {
    format: 1,
    install: {domain: ctx.config.domain, target: ctx.config.target, release: ctx.config.release},
    at: started.toISOString(),
    durationMs: Math.round(performance.now() - t0),
    tenant: ctx.onlyTenant ?? null,
    failOn,
    overall: overallOf(checks),
    score: scoreOf(checks),
    coverage: coverageOf(checks),
    counts: countsOf(checks),
    panel: panelOf(checks, ctx),
    checks,
    waivers: {used, unused: (options.waivers ?? []).filter((w) => !usedIds.has(w.id)).map((w) => w.id)},
    exitCode: exitCodeOf(checks, failOn),
  };
}


export function exitCodeOf(checks: readonly CheckResult[], failOn: FailOn): 0 | 1 | 3 {
  const live = checks.filter((c) => !isWaived(c));
  if (live.some((c) => c.status === 'FAIL' || (failOn === 'warn' && c.status === 'WARN'))) return 3;
  return live.some((c) => c.status === 'ERROR') ? 1 : 0;
}

export function overallOf(checks: readonly CheckResult[]): Overall {
  const worst = worstStatus(checks);
  return worst === 'FAIL' ? 'red' : worst === 'ERROR' ? 'grey' : worst === 'WARN' ? 'amber' : 'green';
}

const evaluated = (c: CheckResult): boolean => c.status === 'PASS' || c.status === 'WARN' || c.status === 'FAIL';

function scoreOf(checks: readonly CheckResult[]): number {
  const weight = (cs: readonly CheckResult[]): number => cs.reduce((sum, c) => sum + SEVERITY_WEIGHT[c.severity], 0);
  const all = weight(checks.filter(evaluated));
  return all === 0 ? 0 : round1((100 * weight(checks.filter((c) => c.status === 'PASS'))) / all);
}

function coverageOf(checks: readonly CheckResult[]): number {
  const applicable = checks.filter((c) => c.status !== 'SKIP');
  return applicable.length === 0 ? 0 : round1((100 * applicable.filter(evaluated).length) / applicable.length);
}

function countsOf(checks: readonly CheckResult[]): Record<PostureStatus, number> & {waived: number} {
  const counts = Object.fromEntries(POSTURE_STATUSES.map((s) => [s, 0])) as Record<PostureStatus, number>;
  for (const c of checks) counts[c.status] += 1;
  return {...counts, waived: checks.filter(isWaived).length};
}

function sortResults(results: readonly CheckResult[]): CheckResult[] {
  const area = (a: PanelArea): number => PANEL_AREAS.indexOf(a);
  return [...results].sort((a, b) => area(a.area) - area(b.area) || a.id.localeCompare(b.id) || a.scope.localeCompare(b.scope, 'en', {numeric: true}));
}

const round1 = (n: number): number => Math.round(n * 10) / 10;
