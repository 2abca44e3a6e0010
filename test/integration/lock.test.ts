import {spawn, type ChildProcess} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterEach, beforeEach, describe, expect, it} from 'vitest';

import {LockedError} from '../../src/errors.js';
import {acquireLock, readLockHolder} from '../../src/state/lock.js';
import {repoRoot, runCli} from '../helpers/cli.js';

const lockModule = path.join(repoRoot, 'dist', 'state', 'lock.js');

let root: string;
const children: ChildProcess[] = [];
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-lock-'));
});
afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  await fs.rm(root, {recursive: true, force: true});
});

/** Another process that takes the lock with the real module and holds it until killed. */
async function holdLockInChild(locksDir: string, name: string, mode: 'exclusive' | 'shared' = 'exclusive'): Promise<ChildProcess> {
  const code = `const {acquireLock} = await import(${JSON.stringify(lockModule)});
await acquireLock(process.argv[1], process.argv[2], {command: 'dforge test-holder', mode: ${JSON.stringify(mode)}});
process.stdout.write('held\\n');
setInterval(() => {}, 1 << 30);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code, locksDir, name], {stdio: ['ignore', 'pipe', 'inherit']});
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (c) => reject(new Error(`holder exited ${c}`)));
  });
  return child;
}

function killed(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

describe('install-directory lock, through the CLI', () => {
  it('refuses a second run with exit 5 and names the holder; proceeds once the holder is SIGKILLed', async () => {
    const dir = path.join(root, 'install');
    const holder = await holdLockInChild(path.join(dir, '.locks'), 'install');

    const refused = await runCli(['config', 'init', '--dir', dir, '--domain', 'dforge.example.com']);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toContain(`pid ${holder.pid}`);
    expect(refused.stderr).toContain('dforge test-holder');
    expect(refused.stderr).toMatch(/What to do:\n\s+- Wait for it to finish/);
    await expect(fs.stat(path.join(dir, 'dforge.yaml'))).rejects.toThrow();

    const asJson = await runCli(['config', 'init', '--dir', dir, '--domain', 'dforge.example.com', '--json']);
    expect(asJson.code).toBe(5);
    expect(JSON.parse(asJson.stdout).error).toMatchObject({kind: 'locked', exitCode: 5, data: {lock: 'install', holder: {pid: holder.pid}}});

    await killed(holder);
    const next = await runCli(['config', 'init', '--dir', dir, '--domain', 'dforge.example.com']);
    expect(next.stderr).toBe(`wrote ${path.join(dir, 'dforge.yaml')}\n`);
    expect(next.code).toBe(0);
    expect(await fs.readdir(path.join(dir, '.locks'))).toEqual([]);
  });
});

describe('acquireLock', () => {
  it('is exclusive within one process too, and reusable after release', async () => {
    const first = await acquireLock(root, 'op', {command: 'first'});
    await expect(acquireLock(root, 'op', {command: 'second'})).rejects.toBeInstanceOf(LockedError);
    expect((await readLockHolder(root, 'op'))?.command).toBe('first');
    await first.release();
    const again = await acquireLock(root, 'op', {command: 'again'});
    await again.release();
    expect(await fs.readdir(root)).toEqual([]);
  });

  it('with queue, waits for a live exclusive holder to release, and gives up after waitMs naming it', async () => {
    const holder = await holdLockInChild(root, 'keys');
    const refused = await acquireLock(root, 'keys', {command: 'rotation', queue: true, waitMs: 300}).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LockedError);
    expect((refused as LockedError).message).toContain(`pid ${holder.pid}`);

    const waiting = acquireLock(root, 'keys', {command: 'rotation', queue: true, waitMs: 10_000});
    await new Promise((r) => setTimeout(r, 300));
    expect((await readLockHolder(root, 'keys'))?.pid).toBe(holder.pid);
    await killed(holder);
    const taken = await waiting;
    expect((await readLockHolder(root, 'keys'))?.command).toBe('rotation');
    await taken.release();
  });

  it('breaks a lock whose pid now belongs to a different process (pid reuse)', async () => {
    const mine = await acquireLock(root, 'op', {command: 'x'});
    const record = JSON.parse(await fs.readFile(mine.file, 'utf8'));
    // Same live pid, but a start time that does not match it: the original holder is gone.
    await fs.writeFile(mine.file, JSON.stringify({...record, startTicks: '1', nonce: 'stale'}));
    const next = await acquireLock(root, 'op', {command: 'next'});
    expect((await readLockHolder(root, 'op'))?.command).toBe('next');
    await next.release();
  });

  it('breaks a lock from before a reboot', async () => {
    await fs.writeFile(path.join(root, 'op.lock'), JSON.stringify({pid: process.pid, host: os.hostname(), bootId: 'another-boot', startTicks: null, command: 'old', acquiredAt: '2020-01-01T00:00:00Z', nonce: 'n'}));
    const next = await acquireLock(root, 'op', {command: 'next'});
    await next.release();
  });

  it('refuses, with a manual step, a lock held on another host', async () => {
    await fs.writeFile(path.join(root, 'op.lock'), JSON.stringify({pid: 1, host: 'other-host.invalid', bootId: null, startTicks: null, command: 'dforge backup --all', acquiredAt: '2026-01-01T00:00:00Z', nonce: 'n'}));
    const err = await acquireLock(root, 'op', {command: 'x'}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockedError);
    expect((err as LockedError).nextSteps.join(' ')).toMatch(/cannot check a process on another host/);
  });

  it('refuses to guess about an unreadable lock file', async () => {
    await fs.writeFile(path.join(root, 'op.lock'), '{not json');
    const err = await acquireLock(root, 'op', {command: 'x'}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockedError);
    expect((err as LockedError).message).toMatch(/unreadable/);
  });

  it('lets exactly one of many racing processes take over a stale lock', async () => {
    // A stale lock from a dead pid, then 8 processes race to take over, each holding for 50 ms.
    await fs.writeFile(path.join(root, 'op.lock'), JSON.stringify({pid: 2 ** 22 + 1, host: os.hostname(), bootId: null, startTicks: null, command: 'dead', acquiredAt: '2020-01-01T00:00:00Z', nonce: 'dead'}));
    const code = `const {acquireLock} = await import(${JSON.stringify(lockModule)});
const fs = await import('node:fs');
try {
  const h = await acquireLock(process.argv[1], 'op', {command: 'racer'});
  fs.appendFileSync(process.argv[2], 'in ' + process.pid + '\\n');
  await new Promise((r) => setTimeout(r, 50));
  fs.appendFileSync(process.argv[2], 'out ' + process.pid + '\\n');
  await h.release();
} catch (e) { if (e.exitCode !== 5) throw e; }`;
    const log = path.join(os.tmpdir(), `dforge-race-${process.pid}.log`);
    await fs.rm(log, {force: true});
    const racers = Array.from({length: 8}, () => spawn(process.execPath, ['--input-type=module', '-e', code, root, log], {stdio: 'inherit'}));
    const codes = await Promise.all(racers.map((r) => new Promise<number | null>((res) => r.on('exit', res))));
    expect(codes.every((c) => c === 0)).toBe(true);
    const events = (await fs.readFile(log, 'utf8')).trim().split('\n');
    await fs.rm(log, {force: true});
    // Holdings never overlap: every "in" is followed by the same process's "out".
    expect(events.length).toBeGreaterThanOrEqual(2);
    for (let i = 0; i < events.length; i += 2) {
      expect(events[i]!.replace('in', 'out')).toBe(events[i + 1]);
    }
    expect((await fs.readdir(root)).filter((f) => !f.startsWith('.'))).toEqual([]);
  });
});

describe('shared holders of a lock', () => {
  it('coexist with each other, and keep an exclusive taker out until they are gone; it names them', async () => {
    const a = await holdLockInChild(root, 'keys', 'shared');
    const b = await acquireLock(root, 'keys', {command: 'in-process reader', mode: 'shared'});
    const refused = await acquireLock(root, 'keys', {command: 'rotation', waitMs: 300}).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LockedError);
    expect((refused as LockedError).message).toMatch(/holds the keys lock: pid \d+ on .* \((dforge test-holder|in-process reader)\)/);
    // Refused, it left nothing behind: the shared holders still hold, and no exclusive lock remains.
    expect(await readLockHolder(root, 'keys')).toBeUndefined();
    await b.release();
    // The child dies without releasing (SIGKILL): its record is stale, and the exclusive taker clears it.
    await killed(a);
    const exclusive = await acquireLock(root, 'keys', {command: 'rotation', waitMs: 300});
    expect(await fs.readdir(path.join(root, 'keys.shared'))).toEqual([]);
    await exclusive.release();
  });

  it('are refused while an exclusive holder lives, and wait for it to release', async () => {
    const holder = await holdLockInChild(root, 'keys');
    const refused = await acquireLock(root, 'keys', {command: 'writer', mode: 'shared', waitMs: 300}).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(LockedError);
    expect((refused as LockedError).message).toContain(`pid ${holder.pid}`);
    expect(await fs.readdir(path.join(root, 'keys.shared'))).toEqual([]);
    const waiting = acquireLock(root, 'keys', {command: 'writer', mode: 'shared', waitMs: 10_000});
    await new Promise((r) => setTimeout(r, 200));
    await killed(holder);
    const shared = await waiting;
    expect(await readLockHolder(root, 'keys')).toBeUndefined();
    await shared.release();
  });

  it('never overlap an exclusive holding: 6 writers and 2 rotations racing', async () => {
    const code = `const {acquireLock} = await import(${JSON.stringify(lockModule)});
const fs = await import('node:fs');
const mode = process.argv[3];
for (let i = 0; i < 5; i++) {
  let h;
  // Two exclusive takers never wait for each other: the refused one retries.
  while (!h) h = await acquireLock(process.argv[1], 'keys', {command: mode, mode, waitMs: 60000}).catch((e) => { if (e.exitCode !== 5) throw e; });
  fs.appendFileSync(process.argv[2], 'in ' + mode + ' ' + process.pid + '\\n');
  await new Promise((r) => setTimeout(r, 10 + Math.random() * 20));
  fs.appendFileSync(process.argv[2], 'out ' + mode + ' ' + process.pid + '\\n');
  await h.release();
}`;
    const log = path.join(root, 'events.log');
    const modes = ['shared', 'shared', 'exclusive', 'shared', 'shared', 'exclusive', 'shared', 'shared'];
    const racers = modes.map((m) => spawn(process.execPath, ['--input-type=module', '-e', code, path.join(root, 'locks'), log, m], {stdio: 'inherit'}));
    const codes = await Promise.all(racers.map((r) => new Promise<number | null>((res) => r.on('exit', res))));
    expect(codes).toEqual(modes.map(() => 0));
    const inside = {shared: 0, exclusive: 0};
    let maxShared = 0;
    for (const line of (await fs.readFile(log, 'utf8')).trim().split('\n')) {
      const [edge, mode] = line.split(' ') as ['in' | 'out', 'shared' | 'exclusive'];
      inside[mode] += edge === 'in' ? 1 : -1;
      maxShared = Math.max(maxShared, inside.shared);
      // An exclusive holding is alone: no shared holder and no other exclusive one at the same time.
      if (inside.exclusive > 0) expect(inside).toEqual({shared: 0, exclusive: 1});
    }
    expect(maxShared).toBeGreaterThan(1);
  });
});

