import {optionalControlConnection} from '../control/plane.js';
import type {InstallDir} from '../state/install-dir.js';
import {appendOpsEntry} from './ops-log.js';

/**
 * Runs an operator action and writes its outcome to the ops log, when the install has a control
 * database. Before bootstrap there is no log to write to; the action still runs.
 */
export async function withOpsRecord<T>(dir: InstallDir, entry: {action: string; target: string; details?: (result: T) => Record<string, unknown>}, fn: () => Promise<T>): Promise<T> {
  let result: T;
  try {
    result = await fn();
  } catch (err) {
    await record(dir, {action: entry.action, target: entry.target, outcome: 'failed', details: {error: err instanceof Error ? err.message : String(err)}});
    throw err;
  }
  await record(dir, {action: entry.action, target: entry.target, outcome: 'ok', details: entry.details?.(result) ?? {}});
  return result;
}

async function record(dir: InstallDir, e: {action: string; target: string; outcome: 'ok' | 'failed'; details: Record<string, unknown>}): Promise<void> {
  // An unreachable control database must not turn a completed action into a failure.
  const control = await optionalControlConnection(dir).catch(() => undefined);
  if (!control) return;
  try {
    await appendOpsEntry(control, e);
  } finally {
    await control.end().catch(() => undefined);
  }
}
