import {optionalControlConnection} from '../control/plane.js';
import {UserError, VerificationError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import {readOpsLog, verifyOpsLog, type ChainVerification, type StoredOpsEntry} from './ops-log.js';

async function withControl<T>(dir: InstallDir, fn: (c: NonNullable<Awaited<ReturnType<typeof optionalControlConnection>>>) => Promise<T>): Promise<T> {
  const control = await optionalControlConnection(dir);
  if (!control) throw new UserError('this install has no control database, so no ops log yet', {nextSteps: ['Set it up with dforge quickstart (evaluation) or dforge install.']});
  try {
    return await fn(control);
  } finally {
    await control.end().catch(() => undefined);
  }
}

export async function tailOpsLog(dir: InstallDir, options: {limit?: number; tenant?: string}): Promise<StoredOpsEntry[]> {
  return withControl(dir, (c) => readOpsLog(c, options));
}

/** Checks the hash chain; a break is a verification failure (exit 6) that names the entry. */
export async function verifyOpsChain(dir: InstallDir): Promise<ChainVerification> {
  const result = await withControl(dir, (c) => verifyOpsLog(c));
  if (!result.intact) {
    throw new VerificationError(`the ops log chain is broken at entry ${result.brokenAt}: ${result.reason}`, {
      nextSteps: ['Someone changed dforge_control.ops_log directly. Compare with a backup of dforge_control, and keep this database for investigation.'],
      data: {...result},
    });
  }
  return result;
}
