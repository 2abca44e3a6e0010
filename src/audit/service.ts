import type {Client} from 'pg';

import {optionalControlConnection} from '../control/optional-connection.js';
import {UserError, VerificationError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import type {InstallDir} from '../state/install-dir.js';
import {OpsLog, readOpsLog, type ChainVerification, type StoredOpsEntry} from './ops-log.js';

/** A provisioner session on dforge_control, where the ops log lives; the caller ends it. */
export async function opsLogSession(dir: InstallDir): Promise<Client> {
  const control = await optionalControlConnection(dir);
  if (!control) throw new UserError('this install has no control database, so no ops log yet', {nextSteps: ['Set it up with dforge quickstart (evaluation) or dforge install.']});
  return control;
}

async function withControl<T>(dir: InstallDir, fn: (c: Client) => Promise<T>): Promise<T> {
  const control = await opsLogSession(dir);
  try {
    return await fn(control);
  } finally {
    await control.end().catch(() => undefined);
  }
}

export async function tailOpsLog(dir: InstallDir, options: {limit?: number; tenant?: string}): Promise<StoredOpsEntry[]> {
  return withControl(dir, (c) => readOpsLog(c, options));
}

/** Checks every MAC and link and the head against the install's anchor; a failure is exit 6 naming the entry. */
export async function verifyOpsChain(dir: InstallDir): Promise<ChainVerification> {
  const log = new OpsLog(await openKeyServices(dir));
  const result = await withControl(dir, (c) => log.verify(c));
  if (!result.intact) {
    const named = result.brokenEntry ? ` (as stored now: ${result.brokenEntry.action} ${result.brokenEntry.target} by ${result.brokenEntry.actor} at ${result.brokenEntry.at})` : '';
    throw new VerificationError(`the ops log failed verification at entry ${result.brokenAt}${named}: ${result.reason}`, {
      nextSteps: nextStepsFor(result, log.anchorFile),
      data: {...result},
    });
  }
  return result;
}

function nextStepsFor(result: ChainVerification, anchorFile: string): string[] {
  if (result.keyed === 0 && result.legacy > 0 && !result.anchor) {
    return ['These entries were written by a dforge that did not key the ops log. The next action dforge records (a backup, a tenant change) starts the keyed chain and seals them as they are now; they cannot be vouched for before that.'];
  }
  if (result.keyed > 0 && !result.anchor && result.brokenAt === result.entries) {
    return [`Restore ${anchorFile} from a backup of the install directory. If this install directory is a new copy, the next action dforge records anchors the log again.`];
  }
  return [
    'Someone changed dforge_control.ops_log without the ops-log key: keep this database as it is for investigation, and compare it with a control backup (dforge backup list).',
    'If you restored dforge_control from a backup, restore --control re-anchors the log; a restore done any other way looks like this.',
  ];
}
