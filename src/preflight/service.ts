import {promises as fs} from 'node:fs';

import {OpsLog} from '../audit/ops-log.js';
import {loadConfigFile} from '../config/load.js';
import type {VerifiedBundle} from '../bundle/verified-bundle.js';
import type {DforgeConfig} from '../config/schema.js';
import {optionalControlConnection} from '../control/optional-connection.js';
import {UsageError} from '../errors.js';
import {openKeyServices, type KeyServices} from '../keys/context.js';
import type {InstallDir} from '../state/install-dir.js';
import {closest} from '../util/closest.js';
import type {CheckResult, PreflightContext, PreflightTarget} from './check.js';
import {probeDockerEngine, type DockerEngine} from './docker.js';
import {checksFor} from './registry.js';
import {runChecks} from './runner.js';

export type {CheckResult, CheckStatus, PreflightTarget} from './check.js';

export interface PreflightInput {
  readonly dir: InstallDir;
  /** The install's config; without it the host and runtime checks run with the target's defaults. */
  readonly config?: DforgeConfig;
  readonly target: PreflightTarget;
  /** Check ids to waive: a warn or fail among them becomes `waived`, and is written to the ops log. */
  readonly ignore?: readonly string[];
  readonly env?: NodeJS.ProcessEnv;
  readonly clock?: () => Date;
  /** --bundle: verifies the bundle (once, when a check first asks). */
  readonly bundle?: () => Promise<VerifiedBundle>;
}

export interface PreflightReport {
  readonly target: PreflightTarget;
  /** True when no config was given, so the target's defaults stood in for it. */
  readonly usedDefaults: boolean;
  /** Every check that applies, in a stable order. */
  readonly checks: CheckResult[];
  /** Ids of the checks by status. */
  readonly failed: string[];
  readonly warned: string[];
  readonly waived: string[];
  /** Whether the waivers were written to the ops log; false when there were none or no control database exists yet. */
  readonly waiversLogged: boolean;
}

/** The install's dforge.yaml, or undefined when there is none yet; an invalid one is an error. */
export async function loadOptionalConfig(dir: InstallDir): Promise<DforgeConfig | undefined> {
  const exists = await fs.stat(dir.configFile).then(
    () => true,
    () => false,
  );
  return exists ? loadConfigFile(dir.configFile) : undefined;
}

/**
 * Runs every check that applies to the target and reports each one; failed checks are in the
 * report, never thrown, so the caller decides what a failure means (preflight exits 3, install
 * stops). Prints nothing. An unknown id in `ignore` is a usage error, raised before anything runs.
 */
export async function runPreflight(input: PreflightInput): Promise<PreflightReport> {
  const env = input.env ?? process.env;
  const now = input.clock ?? (() => new Date());
  const ctx: PreflightContext = {
    dir: input.dir,
    config: input.config,
    target: input.target,
    env,
    now,
    docker: once((): Promise<DockerEngine> => probeDockerEngine(env)),
    keys: once((): Promise<KeyServices> => openKeyServices(input.dir, {env, clock: now})),
    ...(input.bundle ? {bundle: once(input.bundle)} : {}),
  };
  const checks = checksFor(ctx);
  const ignore = new Set(input.ignore ?? []);
  const ids = checks.map((c) => c.id);
  const unknown = [...ignore].filter((id) => !ids.includes(id));
  if (unknown.length > 0) {
    const suggestion = closest(unknown[0]!, ids);
    throw new UsageError(`--ignore ${unknown.join(', ')}: no such check for the ${input.target} target${suggestion ? ` (did you mean ${suggestion}?)` : ''}`, {
      nextSteps: [`Checks of the ${input.target} target: ${ids.join(', ')}`],
      data: {unknown, valid: ids},
    });
  }

  const checked = await runChecks(checks, ctx);
  const results = checked.map((r): CheckResult => (ignore.has(r.id) && (r.status === 'fail' || r.status === 'warn') ? {...r, status: 'waived', waivedStatus: r.status} : r));
  const waived = results.filter((r) => r.status === 'waived');
  const withStatus = (status: CheckResult['status']): string[] => results.filter((r) => r.status === status).map((r) => r.id);
  return {
    target: input.target,
    usedDefaults: input.config === undefined,
    checks: results,
    failed: withStatus('fail'),
    warned: withStatus('warn'),
    waived: withStatus('waived'),
    waiversLogged: waived.length > 0 && (await logWaivers(input.dir, waived, input.target, now())),
  };
}

/**
 * Writes each waiver to the ops log, so a check an operator chose to override is on the record.
 * Without a reachable control database (before install, or while it is down) there is nothing to
 * write to, and the report says so; a write that fails on a reachable one is an error.
 */
export async function logWaivers(dir: InstallDir, waived: readonly CheckResult[], target: PreflightTarget, at: Date): Promise<boolean> {
  const control = await optionalControlConnection(dir).catch(() => undefined);
  if (!control) return false;
  try {
    const opsLog = new OpsLog(await openKeyServices(dir));
    for (const check of waived) {
      await opsLog.append(control, {action: 'preflight.waive', target: `check:${check.id}`, outcome: 'waived', details: {target, was: check.waivedStatus, detail: check.detail}}, at);
    }
  } finally {
    await control.end().catch(() => undefined);
  }
  return true;
}

/** Runs `fn` on first call only; every caller shares its promise (and its failure). */
function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let promise: Promise<T> | undefined;
  return () => (promise ??= fn());
}
