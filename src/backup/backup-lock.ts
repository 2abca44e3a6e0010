import os from 'node:os';

import type {ControlPlane} from '../control/plane.js';
import {LockedError} from '../errors.js';

/**
 * Backup locks are PostgreSQL advisory locks on dforge_control's session, so they hold across
 * hosts (a Kubernetes CronJob and an operator's shell) and vanish with a killed run's connection:
 * nothing stale is ever left to break.
 *
 * To name a holder, every run that takes one first sets its session's application_name to
 * "dforge <pid>@<host> <command>" (PostgreSQL keeps 63 bytes of it). A refused run reads the
 * holder from pg_locks and pg_stat_activity: its pid, host and command, and since when its session
 * has been running. All dforge runs connect as the provisioner, so they see each other's sessions.
 */

const LOCK_CLASS = 'dforge.backup';

/** The key of the run-wide lock of `backup --all`; no tenant slug or '_control' can be it. */
export const WHOLE_RUN = '*all';

/** Who holds a backup lock, as far as PostgreSQL can tell. */
export interface BackupLockHolder {
  /** The holder's process id and host, when it is a dforge run that announced itself. */
  readonly pid: number | null;
  readonly host: string | null;
  readonly command: string;
  /** When the holder's session started. */
  readonly since: string;
  readonly backendPid: number;
}

const ANNOUNCE = /^dforge (\d+)@(\S+) (.+)$/;

function announcement(command: string): string {
  const text = `dforge ${process.pid}@${os.hostname()} ${command}`;
  // application_name is cut at 63 bytes by the server; cut on a character boundary here instead.
  return Buffer.from(text).subarray(0, 63).toString('utf8').replace(/\uFFFD$/, '');
}

async function holderOf(plane: ControlPlane, key: string): Promise<BackupLockHolder | undefined> {
  const rows = await plane.control.query<{backend_pid: number; application_name: string; backend_start: Date}>(
    `SELECT a.pid AS backend_pid, a.application_name, a.backend_start
       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND l.classid = hashtext($1)::oid AND l.objid = hashtext($2)::oid`,
    [LOCK_CLASS, key],
  );
  const row = rows.rows[0];
  if (!row) return undefined;
  const announced = ANNOUNCE.exec(row.application_name);
  return {
    pid: announced ? Number(announced[1]) : null,
    host: announced ? announced[2]! : null,
    command: announced ? announced[3]! : `a session named "${row.application_name}"`,
    since: row.backend_start.toISOString(),
    backendPid: row.backend_pid,
  };
}

function describeHolder(h: BackupLockHolder | undefined): string {
  if (!h) return 'its holder has just released it';
  const who = h.pid === null ? `${h.command} (PostgreSQL backend ${h.backendPid})` : `pid ${h.pid} on ${h.host} (${h.command})`;
  return `${who}, running since ${h.since}`;
}

/**
 * Runs `fn` holding the backup lock `key` (a tenant slug, '_control', or WHOLE_RUN); an overlapping
 * run gets a LockedError (exit 5) at once that names the holder.
 */
export async function withBackupLock<T>(plane: ControlPlane, key: string, command: string, fn: () => Promise<T>): Promise<T> {
  await plane.control.query("SELECT set_config('application_name', $1, false)", [announcement(command)]);
  const got = await plane.control.query<{ok: boolean}>('SELECT pg_try_advisory_lock(hashtext($1), hashtext($2)) AS ok', [LOCK_CLASS, key]);
  if (!got.rows[0]?.ok) {
    const holder = await holderOf(plane, key);
    const what = key === WHOLE_RUN ? 'another backup --all run is under way' : `another run is backing up ${key}`;
    throw new LockedError(`${what}: ${describeHolder(holder)}`, {
      nextSteps: [
        holder?.pid ? `Let it finish (inspect it on ${holder.host} with: ps -o pid,etime,args -p ${holder.pid}); if cron runs overlap, space them out (dforge backup schedule).` : 'Let it finish, then re-run; if cron runs overlap, space them out (dforge backup schedule).',
      ],
      data: {lock: key === WHOLE_RUN ? 'backup:all' : `backup:${key}`, ...(holder ? {holder} : {})},
    });
  }
  try {
    return await fn();
  } finally {
    await plane.control.query('SELECT pg_advisory_unlock(hashtext($1), hashtext($2))', [LOCK_CLASS, key]);
  }
}
