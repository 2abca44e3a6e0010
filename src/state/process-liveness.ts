import {readFileSync} from 'node:fs';
import os from 'node:os';

/**
 * Whether a process that left a record behind (a lock holder, a credential directory) is still
 * running. A pid alone is not enough: after a reboot, or once pids wrap, the same number belongs
 * to another process, so the record also names the host, the boot and the process's start time.
 */
export interface ProcessRecord {
  readonly pid: number;
  readonly host: string;
  /** /proc/sys/kernel/random/boot_id: a record from before a reboot is stale whatever its pid. */
  readonly bootId: string | null;
  /** Field 22 of /proc/<pid>/stat: tells a live process from a later one that reused its pid. */
  readonly startTicks: string | null;
}

export type Liveness = 'alive' | 'dead' | 'other-host';

export function describeProcess(pid: number = process.pid): ProcessRecord {
  return {pid, host: os.hostname(), bootId: readBootId(), startTicks: readStartTicks(pid)};
}

/** 'alive' whenever in doubt: callers remove what a dead process left, never what a live one uses. */
export function processLiveness(record: ProcessRecord): Liveness {
  if (record.host !== os.hostname()) return 'other-host';
  const bootId = readBootId();
  if (record.bootId !== null && bootId !== null && record.bootId !== bootId) return 'dead';
  if (!pidExists(record.pid)) return 'dead';
  const startTicks = readStartTicks(record.pid);
  if (record.startTicks !== null && startTicks !== null && startTicks !== record.startTicks) return 'dead';
  // A zombie (killed, not yet reaped by its parent) uses nothing any more.
  if (readProcessState(record.pid) === 'Z') return 'dead';
  return 'alive';
}

/** For records that name only a pid on this host: the pid exists and is not a zombie. */
export function pidLiveness(pid: number): Exclude<Liveness, 'other-host'> {
  return pidExists(pid) && readProcessState(pid) !== 'Z' ? 'alive' : 'dead';
}

function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the pid exists and belongs to someone else.
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

export function readBootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return null;
  }
}

/** The fields of /proc/<pid>/stat after the command name, which may itself contain spaces. */
function procStatFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

export function readStartTicks(pid: number): string | null {
  return procStatFields(pid)?.[19] ?? null;
}

function readProcessState(pid: number): string | null {
  return procStatFields(pid)?.[0] ?? null;
}
