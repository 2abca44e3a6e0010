import {DforgeError} from '../errors.js';
import type {CheckOutcome, CheckResult, PreflightCheck, PreflightContext} from './check.js';

export const DEFAULT_CHECK_TIMEOUT_MS = 20_000;

/**
 * Runs every check at once and reports each, in registry order. The checks only read and probe,
 * so they are safe to run concurrently; each has its own deadline, so one that hangs (a DNS
 * server, an engine, a database that never answers) is reported as failed and cannot hang the run.
 */
export async function runChecks(checks: readonly PreflightCheck[], ctx: PreflightContext): Promise<CheckResult[]> {
  return Promise.all(checks.map((check) => runOne(check, ctx)));
}

async function runOne(check: PreflightCheck, ctx: PreflightContext): Promise<CheckResult> {
  const timeoutMs = check.timeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS;
  const controller = new AbortController();
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<CheckOutcome>((resolve) => {
    timer = setTimeout(() => {
      controller.abort();
      resolve({
        status: 'fail',
        detail: `no answer within ${timeoutMs / 1000} s`,
        remedy: `Find out why the ${check.id} check does not finish (a network, DNS server or service that does not answer), then re-run preflight.`,
      });
    }, timeoutMs);
  });
  let outcome: CheckOutcome;
  try {
    outcome = await Promise.race([check.run(ctx, controller.signal).catch(asOutcome), deadline]);
  } finally {
    clearTimeout(timer);
  }
  return {
    id: check.id,
    title: check.title,
    status: outcome.status,
    detail: outcome.detail,
    remedy: outcome.remedy ?? null,
    durationMs: Math.round(performance.now() - started),
  };
}

/** A check that throws has failed; a typed error already says what to do. */
function asOutcome(err: unknown): CheckOutcome {
  if (err instanceof DforgeError) return {status: 'fail', detail: err.message, ...(err.nextSteps.length > 0 ? {remedy: err.nextSteps.join(' ')} : {})};
  return {status: 'fail', detail: `the check itself broke: ${err instanceof Error ? err.message : String(err)}`, remedy: 'This is a bug in dforge; re-run with DEBUG=dforge* and report the output.'};
}
