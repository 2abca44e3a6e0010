import type {Client} from 'pg';

import {optionalControlConnection} from '../control/optional-connection.js';
import {DforgeError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import {InstallDir} from '../state/install-dir.js';
import {OpsLog, type OpsOutcome, type StoredOpsEntry} from './ops-log.js';

/**
 * What dforge records for an auditor. Tenant actions are `tenant.<verb>` (src/tenants/service.ts);
 * a name outside this list does not compile, so the log's vocabulary stays the one docs describe.
 */
export type OpsAction =
  | 'backup.run'
  | 'backup.stale'
  | 'backup.verify'
  | 'backup.decrypt'
  | 'backup.prune'
  | 'backup.credentials'
  | 'restore.tenant'
  | 'restore.undo'
  | 'audit.verify'
  | 'preflight.waive'
  | 'keys.rotate-master'
  | 'keys.rotate-jwt'
  | 'keys.release'
  | 'keys.export-master'
  | 'restore.control'
  | 'backup.rebuild-catalog'
  | 'certs.generate'
  | 'certs.import'
  | 'certs.renew'
  | 'uninstall'
  | 'uninstall.purge'
  | 'posture.run'
  | 'posture.waiver'
  | 'audit.export'
  | 'bundle.verify'
  | 'db.psql'
  | 'upgrade'
  | 'upgrade.rollback'
  | 'residency.cross-region'
  | 'residency.report'
  | `tenant.${string}`;

export interface OpsRecord {
  readonly action: OpsAction;
  readonly target: string;
  readonly outcome: OpsOutcome;
  /** Context for the record. Never a secret. */
  readonly details?: Record<string, unknown>;
}

/** Where a record goes: an install (its control database, when it has one) or an open session. */
export type OpsLogSink = InstallDir | {readonly opsLog: OpsLog; readonly control: Client};

/**
 * Writes one outcome to the ops log. With an install directory, before bootstrap there is no log,
 * and an unreachable control database must not turn a completed action into a failure: both return
 * undefined. A log that is reachable but refuses the entry (no ops-log key, a full disk for the
 * anchor) is an error.
 */
export async function recordOps(sink: OpsLogSink, entry: OpsRecord, now?: Date): Promise<StoredOpsEntry | undefined> {
  if (!(sink instanceof InstallDir)) return sink.opsLog.append(sink.control, entry, now);
  const control = await optionalControlConnection(sink).catch(() => undefined);
  if (!control) return undefined;
  try {
    return await new OpsLog(await openKeyServices(sink)).append(control, entry, now);
  } finally {
    await control.end().catch(() => undefined);
  }
}

export interface OpsRecordSpec<T> {
  readonly action: OpsAction;
  readonly target: string;
  /** Context for the record, from the result. Never a secret. */
  readonly details?: (result: T) => Record<string, unknown>;
  /**
   * False when the run changed nothing (an idempotent re-run): then nothing is recorded, so the
   * log holds what happened, not how often someone asked. A failure is always recorded.
   */
  readonly changed?: (result: T) => boolean;
}

/** Runs an operator action and writes its outcome to the ops log (see recordOps for when it cannot). */
export async function withOpsRecord<T>(sink: OpsLogSink, spec: OpsRecordSpec<T>, fn: () => Promise<T>): Promise<T> {
  let result: T;
  try {
    result = await fn();
  } catch (err) {
    await recordOps(sink, {action: spec.action, target: spec.target, outcome: 'failed', details: failureDetails(err)});
    throw err;
  }
  if (spec.changed?.(result) === false) return result;
  await recordOps(sink, {action: spec.action, target: spec.target, outcome: 'ok', details: spec.details?.(result) ?? {}});
  return result;
}

/**
 * What an auditor needs of a failure: the message, and for dforge's typed errors their kind (a
 * `verification` failure is a tamper detection) and, where the error names one, its reason.
 */
function failureDetails(err: unknown): Record<string, unknown> {
  if (!(err instanceof DforgeError)) return {error: err instanceof Error ? err.message : String(err)};
  return {error: err.message, kind: err.kind, ...(typeof err.data.reason === 'string' ? {reason: err.data.reason} : {})};
}
