import {randomBytes} from 'node:crypto';
import {promises as fs, rmSync} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import {describeProcess, pidLiveness, processLiveness, type Liveness, type ProcessRecord} from '../state/process-liveness.js';
import {onTermination} from '../util/termination.js';

/**
 * Private directories for the files a libpq tool reads its credentials from (a passfile, the CA).
 *
 * They live in the install directory (`run/libpq/<pid>-<random>/`), never in the system temp
 * directory: a killed run's leftovers stay where only this user can read them, and where the next
 * run finds them. A directory is removed when its session closes, synchronously on SIGINT, SIGTERM
 * and SIGHUP (util/termination.ts), and, after a SIGKILL, by the next session of any run, once the
 * process that made it is dead.
 */
export interface CredentialDir {
  readonly path: string;
  /** Writes a 0600 file that did not exist; returns its path. */
  write(name: string, content: string): Promise<string>;
  /** Removes the directory and everything in it. */
  remove(): Promise<void>;
}

/** Session directories: the creating pid, then randomness. Nothing else in the area is ever removed. */
const SESSION_NAME = /^([1-9]\d{0,9})-[0-9a-f]{16}$/;
/** Who made the directory, so a sweep can tell a dead creator from a later process with its pid. */
const OWNER_FILE = 'owner.json';

export async function openCredentialDir(dir: InstallDir): Promise<CredentialDir> {
  const area = await ensureCredentialArea(dir);
  await sweepStaleCredentialDirs(area);
  const session = path.join(area, `${process.pid}-${randomBytes(8).toString('hex')}`);
  // Registered before it exists, so a signal from here on removes whatever of it was made.
  const forget = onTermination(() => rmSync(session, {recursive: true, force: true}));
  const remove = async (): Promise<void> => {
    await fs.rm(session, {recursive: true, force: true});
    forget();
  };
  const write = async (name: string, content: string): Promise<string> => {
    const file = path.join(session, name);
    await fs.writeFile(file, content, {mode: 0o600, flag: 'wx'});
    return file;
  };
  try {
    await fs.mkdir(session, {mode: 0o700});
    await fs.chmod(session, 0o700);
    await write(OWNER_FILE, JSON.stringify(describeProcess()));
  } catch (err) {
    await remove();
    throw err;
  }
  return {path: session, write, remove};
}

/**
 * Removes the session directories whose creator has died (a SIGKILL, a crash, a reboot). A
 * directory whose creator may be alive is kept, whatever its age: its tool may still need it.
 */
export async function sweepStaleCredentialDirs(area: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await fs.readdir(area)) {
    const match = SESSION_NAME.exec(name);
    if (!match) continue;
    const session = path.join(area, name);
    if ((await creatorLiveness(session, Number(match[1]))) !== 'dead') continue;
    await fs.rm(session, {recursive: true, force: true});
    removed.push(session);
  }
  return removed;
}

async function creatorLiveness(session: string, pid: number): Promise<Liveness> {
  const text = await fs.readFile(path.join(session, OWNER_FILE), 'utf8').catch(() => undefined);
  let record: Partial<ProcessRecord> | undefined;
  try {
    record = text === undefined ? undefined : (JSON.parse(text) as Partial<ProcessRecord>);
  } catch {
    record = undefined;
  }
  // A creator killed before its record was complete left only the pid in the name.
  if (record?.pid !== pid || typeof record.host !== 'string') return pidLiveness(pid);
  return processLiveness({pid, host: record.host, bootId: record.bootId ?? null, startTicks: record.startTicks ?? null});
}

/**
 * `run/libpq`, made if missing and checked every time: a real directory (not a link to one),
 * owned by this user, closed to everyone else. `run/` itself stays traversable because the
 * embedded server's socket directory is in it too, but no one else may write it, so no one else
 * can swap `run/libpq` for something of theirs.
 */
async function ensureCredentialArea(dir: InstallDir): Promise<string> {
  const area = dir.libpqSessionsDir;
  const run = path.dirname(area);
  await makeDir(run, 0o755);
  await closeToWriters(run);
  await assertOwnDir(run, 0o022, 'writable by group or others', `Make it a directory of the user running dforge that only this user can write: chown "$(id -un)" ${run} && chmod go-w ${run}`);
  await makeDir(area, 0o700);
  await assertOwnDir(area, 0o077, 'open to group or others', `Remove it (rm -rf ${area}); dforge makes it again, as a private directory.`);
  return area;
}

async function makeDir(dir: string, mode: number): Promise<void> {
  try {
    await fs.mkdir(dir, {mode});
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return;
    throw err;
  }
  // mkdir honours the umask; the mode of a directory dforge made must be exact.
  await fs.chmod(dir, mode);
}

/**
 * The embedded cluster's setup makes `run/` with the umask's mode, which may let the group write
 * it (umask 002); taking write away from a directory of ours loses nothing and closes that door.
 */
async function closeToWriters(dir: string): Promise<void> {
  const st = await fs.lstat(dir);
  if (st.isDirectory() && st.uid === process.geteuid?.() && (st.mode & 0o022) !== 0) await fs.chmod(dir, st.mode & 0o7777 & ~0o022);
}

async function assertOwnDir(dir: string, forbidden: number, what: string, fix: string): Promise<void> {
  const st = await fs.lstat(dir);
  const uid = process.geteuid?.();
  const problem = !st.isDirectory()
    ? 'not a directory (a symbolic link or a file)'
    : uid !== undefined && st.uid !== uid
      ? `owned by uid ${st.uid}, not by the user running dforge (uid ${uid})`
      : (st.mode & forbidden) !== 0
        ? `${what} (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')})`
        : undefined;
  if (problem === undefined) return;
  throw new UserError(`${dir} is ${problem}, so dforge will not put database credentials in it`, {
    nextSteps: [fix],
  });
}
