import type {DforgeConfig, InstallTarget} from '../config/schema.js';
import type {VerifiedBundle} from '../bundle/verified-bundle.js';
import type {KeyServices} from '../keys/context.js';
import type {InstallDir} from '../state/install-dir.js';
import type {DockerEngine} from './docker.js';

export type PreflightTarget = InstallTarget;

/** `waived` is never found by a check: only the operator turns a fail or warn into it (--ignore). */
export type CheckStatus = 'pass' | 'warn' | 'fail' | 'waived';

/** What one check found. */
export interface CheckOutcome {
  readonly status: 'pass' | 'warn' | 'fail';
  /** What was measured, in the operator's terms (values, paths, versions). Never a secret. */
  readonly detail: string;
  /** What to do about a warn or fail. */
  readonly remedy?: string;
}

/** One line of the report: the `--json` contract of every check. */
export interface CheckResult {
  readonly id: string;
  readonly title: string;
  readonly status: CheckStatus;
  readonly detail: string;
  /** What to do; null when there is nothing to do. */
  readonly remedy: string | null;
  /** For a waived check, what it found before the waiver. */
  readonly waivedStatus?: 'warn' | 'fail';
  readonly durationMs: number;
}

/** What every check may consult. Expensive shared probes are connected once, on first use. */
export interface PreflightContext {
  readonly dir: InstallDir;
  /** Undefined when the install directory has no dforge.yaml yet: checks then use the target's defaults. */
  readonly config?: DforgeConfig;
  readonly target: PreflightTarget;
  readonly env: NodeJS.ProcessEnv;
  readonly now: () => Date;
  /** The local Docker engine; rejects with a UserError when it cannot be reached. */
  docker(): Promise<DockerEngine>;
  /** The install's key services (sealed secrets); rejects when the install has no master key. */
  keys(): Promise<KeyServices>;
  /** preflight --bundle: the bundle, verified once for every check that reads it. */
  bundle?: () => Promise<VerifiedBundle>;
}

export interface PreflightCheck {
  readonly id: string;
  readonly title: string;
  /** How long the check may run before it counts as failed; the runner's default when unset. */
  readonly timeoutMs?: number;
  /** A throw counts as a fail (its message the detail, its next steps the remedy); `signal` aborts at the timeout. */
  run(ctx: PreflightContext, signal: AbortSignal): Promise<CheckOutcome>;
}

/** One verdict over several items (locations, ports): the worst status, every detail and every remedy, in order. */
export function combine(findings: readonly CheckOutcome[]): CheckOutcome {
  const statuses = findings.map((f) => f.status);
  const remedies = findings.flatMap((f) => (f.remedy ? [f.remedy] : []));
  return {
    status: statuses.includes('fail') ? 'fail' : statuses.includes('warn') ? 'warn' : 'pass',
    detail: findings.map((f) => f.detail).join('; '),
    ...(remedies.length > 0 ? {remedy: remedies.join(' ')} : {}),
  };
}
