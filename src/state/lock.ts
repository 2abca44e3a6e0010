import {randomBytes} from 'node:crypto';
import {promises as fs, readFileSync, unlinkSync} from 'node:fs';
import path from 'node:path';

import {LockedError} from '../errors.js';
import {fsyncDir} from './atomic-file.js';
import {describeProcess, processLiveness, type Liveness, type ProcessRecord} from './process-liveness.js';

/**
 * Exclusive, per-operation locks on the install directory.
 *
 * A lock is a file `<name>.lock` holding a record of its holder. It is created with link(2) from a
 * fully written staging file, so nobody ever reads a half-written record. A holder that died (it
 * was SIGKILLed, the host rebooted, or its pid now belongs to another process) leaves a stale
 * lock, which the next run breaks. Breaking is serialised by a per-holder "break token" created
 * with O_EXCL, so two runs racing to break the same stale lock can never remove a live one.
 */

/** Who holds a lock: the process (see process-liveness.ts), what it is doing, and since when. */
export interface LockHolder extends ProcessRecord {
  readonly command: string;
  readonly acquiredAt: string;
  /** Random per acquisition: identifies this exact holding, for release and for breaking. */
  readonly nonce: string;
}

export interface LockHandle {
  readonly name: string;
  readonly file: string;
  readonly holder: LockHolder;
  release(): Promise<void>;
}

export interface AcquireOptions {
  /** What the holder is doing, shown to whoever is refused. Must not contain secrets. */
  readonly command: string;
  readonly clock?: () => Date;
  /**
   * exclusive (the default): one holder, no shared holders. shared: any number of shared holders
   * while nobody holds it exclusively. Writers of something an exclusive holder rewrites as a
   * whole (master-key wraps, during a rotation) hold it shared.
   */
  readonly mode?: 'exclusive' | 'shared';
  /**
   * How long to wait for the other side (shared holders to finish, or an exclusive holder to
   * release) before giving up with LockedError.
   */
  readonly waitMs?: number;
  /**
   * Exclusive runs do not wait for each other by default: a second backup of the same tenant
   * should be refused, not queued. An operator's key command queues instead (for up to waitMs),
   * because what holds the keys lock besides it is short bookkeeping, such as the retired-version
   * release at the end of a cron backup.
   */
  readonly queue?: boolean;
}

/** A breaker that died mid-break leaves its token; after this long the token no longer counts. */
const BREAK_TOKEN_TTL_MS = 30_000;
const MAX_ATTEMPTS = 20;

/** Default wait for the other side of a shared lock: rotations and single wraps take seconds. */
const SHARED_WAIT_MS = 120_000;

export async function acquireLock(dir: string, name: string, options: AcquireOptions): Promise<LockHandle> {
  if (!/^[a-z0-9][a-z0-9-]*$/.test(name)) throw new Error(`invalid lock name ${name}`);
  await fs.mkdir(dir, {recursive: true, mode: 0o700});
  if (options.mode === 'shared') return acquireShared(dir, name, options);
  const exclusive = await acquireExclusive(dir, name, options);
  try {
    await waitForSharedHolders(dir, name, options);
  } catch (err) {
    await exclusive.release();
    throw err;
  }
  return exclusive;
}

async function acquireExclusive(dir: string, name: string, options: AcquireOptions): Promise<LockHandle> {
  const file = path.join(dir, `${name}.lock`);
  const me = describeSelf(options);
  const staged = path.join(dir, `.${name}.${me.nonce}.staged`);
  const deadline = Date.now() + (options.waitMs ?? SHARED_WAIT_MS);
  try {
    await fs.writeFile(staged, JSON.stringify(me), {mode: 0o600, flag: 'wx'});
    for (let attempt = 0; attempt < MAX_ATTEMPTS; ) {
      try {
        await fs.link(staged, file);
        await fsyncDir(dir);
        return holdingOf(name, file, me);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const holder = await readHolder(file);
      if (holder === undefined) {
        attempt++; // released between our link and our read
        continue;
      }
      if (holder === 'corrupt') throw corruptLockError(name, file);
      const liveness = processLiveness(holder);
      if (liveness === 'alive' && options.queue && Date.now() < deadline) {
        await sleep(50 + Math.random() * 100);
        continue;
      }
      if (liveness !== 'dead') throw lockedError(name, holder, liveness);
      await breakStaleLock(file, holder, me);
      attempt++;
      await sleep(5 + Math.random() * 20);
    }
    throw new LockedError(`could not take the ${name} lock: other runs kept taking it`, {
      nextSteps: ['Another dforge run is starting at the same moment; re-run when it has finished.'],
      data: {lock: name},
    });
  } finally {
    await fs.rm(staged, {force: true});
  }
}

/*
 * Shared holders each own a file <name>.shared/<nonce>.json. Both sides announce themselves
 * before they look at the other (a shared holder writes its file, then reads <name>.lock; an
 * exclusive holder links <name>.lock, then lists the shared files), so on one host at most one
 * side can miss the other, and then it is the one that announced last and sees the first.
 * When both see each other, the shared side withdraws and retries: the exclusive side wins.
 */

const sharedDir = (dir: string, name: string): string => path.join(dir, `${name}.shared`);

async function acquireShared(dir: string, name: string, options: AcquireOptions): Promise<LockHandle> {
  const deadline = Date.now() + (options.waitMs ?? SHARED_WAIT_MS);
  const holders = sharedDir(dir, name);
  await fs.mkdir(holders, {recursive: true, mode: 0o700});
  const me = describeSelf(options);
  const mine = path.join(holders, `${me.nonce}.json`);
  for (;;) {
    await fs.writeFile(mine, JSON.stringify(me), {mode: 0o600, flag: 'wx'});
    await fsyncDir(holders);
    const exclusive = await readHolder(path.join(dir, `${name}.lock`));
    if (exclusive === undefined) return holdingOf(name, mine, me);
    await fs.rm(mine, {force: true});
    if (exclusive === 'corrupt') throw corruptLockError(name, path.join(dir, `${name}.lock`));
    const liveness = processLiveness(exclusive);
    if (liveness === 'dead') {
      await breakStaleLock(path.join(dir, `${name}.lock`), exclusive, me);
      continue;
    }
    if (liveness === 'other-host' || Date.now() > deadline) throw lockedError(name, exclusive, liveness);
    await sleep(50 + Math.random() * 100);
  }
}

/** Under the exclusive lock: waits until every live shared holder has released. */
async function waitForSharedHolders(dir: string, name: string, options: AcquireOptions): Promise<void> {
  const deadline = Date.now() + (options.waitMs ?? SHARED_WAIT_MS);
  const holders = sharedDir(dir, name);
  for (;;) {
    const names = await fs.readdir(holders).catch(() => [] as string[]);
    let blocker: {holder: LockHolder; liveness: Liveness} | undefined;
    for (const entry of names.filter((n) => n.endsWith('.json'))) {
      const file = path.join(holders, entry);
      const holder = await readHolder(file);
      if (holder === undefined) continue;
      if (holder === 'corrupt') {
        // Half-written: its writer is mid-announcement and will see our lock and withdraw, or it
        // crashed while writing. Either way it holds nothing.
        await fs.rm(file, {force: true});
        continue;
      }
      const liveness = processLiveness(holder);
      if (liveness === 'dead') await fs.rm(file, {force: true});
      else blocker ??= {holder, liveness};
    }
    if (!blocker) return;
    if (blocker.liveness === 'other-host' || Date.now() > deadline) throw lockedError(name, blocker.holder, blocker.liveness);
    await sleep(50 + Math.random() * 100);
  }
}

/** Reads who holds a lock, if anyone: for status displays. */
export async function readLockHolder(dir: string, name: string): Promise<LockHolder | undefined> {
  const holder = await readHolder(path.join(dir, `${name}.lock`));
  return holder === 'corrupt' ? undefined : holder;
}

function holdingOf(name: string, file: string, me: LockHolder): LockHandle {
  let released = false;
  // If the process exits without release() (process.exit in a library, an uncaught error),
  // remove the lock synchronously on the way out rather than leave it for staleness detection.
  const onExit = (): void => {
    if (!released && ownsLockSync(file, me)) unlinkSync(file);
  };
  process.once('exit', onExit);
  return {
    name,
    file,
    holder: me,
    async release() {
      if (released) return;
      released = true;
      process.removeListener('exit', onExit);
      const current = await readHolder(file);
      if (current !== undefined && current !== 'corrupt' && current.nonce === me.nonce) {
        await fs.rm(file, {force: true});
        await fsyncDir(path.dirname(file));
      }
    },
  };
}

function ownsLockSync(file: string, me: LockHolder): boolean {
  try {
    return (JSON.parse(readFileSync(file, 'utf8')) as LockHolder).nonce === me.nonce;
  } catch {
    return false;
  }
}

async function readHolder(file: string): Promise<LockHolder | 'corrupt' | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const parsed = JSON.parse(text) as Partial<LockHolder>;
    if (typeof parsed.pid !== 'number' || typeof parsed.nonce !== 'string' || typeof parsed.host !== 'string') return 'corrupt';
    return parsed as LockHolder;
  } catch {
    return 'corrupt';
  }
}

/**
 * Removes `file` only while it still records the stale `holder`. The break token is unique to
 * that holding, so of several runs breaking the same stale lock exactly one proceeds, and a lock
 * taken in the meantime by a live run is never touched.
 */
async function breakStaleLock(file: string, holder: LockHolder, me: LockHolder): Promise<void> {
  const token = `${file}.break-${holder.nonce}`;
  try {
    await fs.writeFile(token, JSON.stringify(me), {mode: 0o600, flag: 'wx'});
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const st = await fs.stat(token).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > BREAK_TOKEN_TTL_MS) await fs.rm(token, {force: true});
    return;
  }
  try {
    const current = await readHolder(file);
    if (current !== undefined && current !== 'corrupt' && current.nonce === holder.nonce) {
      await fs.unlink(file);
    }
  } finally {
    await fs.rm(token, {force: true});
  }
}

function lockedError(name: string, holder: LockHolder, liveness: Liveness): LockedError {
  const who = `pid ${holder.pid} on ${holder.host} (${holder.command}), since ${holder.acquiredAt}`;
  const nextSteps =
    liveness === 'other-host'
      ? [
          `Host ${holder.host} holds it; dforge cannot check a process on another host.`,
          `If that run is gone for certain, remove the lock file by hand.`,
        ]
      : [`Wait for it to finish, then re-run. Inspect it with: ps -o pid,etime,args -p ${holder.pid}`];
  return new LockedError(`another dforge run holds the ${name} lock: ${who}`, {
    nextSteps,
    data: {lock: name, holder: {pid: holder.pid, host: holder.host, command: holder.command, acquiredAt: holder.acquiredAt}},
  });
}

function corruptLockError(name: string, file: string): LockedError {
  return new LockedError(`the ${name} lock file is unreadable, so dforge cannot tell whether its holder is alive`, {
    nextSteps: [`Make sure no dforge run is active (ps -C node -o pid,args), then remove ${file}.`],
    data: {lock: name, file},
  });
}

function describeSelf(options: AcquireOptions): LockHolder {
  return {
    ...describeProcess(),
    command: options.command,
    acquiredAt: (options.clock ?? (() => new Date()))().toISOString(),
    nonce: randomBytes(12).toString('hex'),
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
