import {spawnSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterEach, beforeEach, describe, expect, it} from 'vitest';

import {openCredentialDir, sweepStaleCredentialDirs} from '../../src/backup/credential-dir.js';
import {UserError} from '../../src/errors.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {describeProcess} from '../../src/state/process-liveness.js';

let root: string;
let dir: InstallDir;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-creds-'));
  dir = new InstallDir(root);
});
afterEach(async () => {
  await fs.rm(root, {recursive: true, force: true});
});

const modeOf = async (p: string): Promise<number> => (await fs.lstat(p)).mode & 0o777;
const hex = (n: number): string => n.toString(16).padStart(16, '0');

/** A pid that certainly belonged to a process, which has exited and been reaped. */
function deadPid(): number {
  const r = spawnSync('true');
  if (r.pid === undefined || r.status !== 0) throw new Error('cannot run true');
  return r.pid;
}

describe('credential directories', () => {
  it('are 0700 directories of 0600 files under run/libpq (0700), whatever the umask, and go on remove()', async () => {
    const previous = process.umask(0o000);
    try {
      const session = await openCredentialDir(dir);
      expect(path.dirname(session.path)).toBe(dir.libpqSessionsDir);
      expect(path.basename(session.path)).toMatch(new RegExp(`^${process.pid}-[0-9a-f]{16}$`));
      const file = await session.write('pgpass', 'h:1:*:u:p\n');
      expect(await modeOf(dir.libpqSessionsDir)).toBe(0o700);
      expect(await modeOf(session.path)).toBe(0o700);
      expect(await modeOf(file)).toBe(0o600);
      expect(await modeOf(path.join(session.path, 'owner.json'))).toBe(0o600);
      // Never over an existing file.
      await expect(session.write('pgpass', 'x')).rejects.toThrow(/EEXIST/);
      await session.remove();
      expect(await fs.readdir(dir.libpqSessionsDir)).toEqual([]);
    } finally {
      process.umask(previous);
    }
  });

  it('a sweep removes what dead processes left and keeps everything else', async () => {
    const area = dir.libpqSessionsDir;
    await fs.mkdir(area, {recursive: true, mode: 0o700});
    const dead = deadPid();
    const me = describeProcess();
    const make = async (name: string, owner?: object): Promise<string> => {
      const p = path.join(area, name);
      await fs.mkdir(p, {mode: 0o700});
      await fs.writeFile(path.join(p, 'pgpass'), 'secret', {mode: 0o600});
      if (owner) await fs.writeFile(path.join(p, 'owner.json'), JSON.stringify(owner), {mode: 0o600});
      return p;
    };
    const gone = [
      await make(`${dead}-${hex(1)}`, {...me, pid: dead}),
      // Killed before it wrote its record: the pid in the name decides.
      await make(`${dead}-${hex(2)}`),
      // This pid, but a process that started at another time: an earlier owner of the pid.
      await make(`${process.pid}-${hex(3)}`, {...me, startTicks: '1'}),
      // Before the last reboot.
      await make(`${process.pid}-${hex(4)}`, {...me, bootId: 'another-boot'}),
    ];
    const kept = [
      await make(`${process.pid}-${hex(5)}`, me),
      await make(`${process.pid}-${hex(6)}`),
      // A half-written record: the live pid in the name keeps it.
      await make(`${process.pid}-${hex(7)}`, undefined),
      // Another host's (a shared install directory): its pid says nothing here.
      await make(`${dead}-${hex(8)}`, {...me, pid: dead, host: 'elsewhere.example'}),
      // Not named like a session: never dforge's to remove.
      await make(`${dead}-short`),
      await make('dforge-libpq-abc123'),
      await make('notes'),
    ];
    await fs.writeFile(path.join(kept[2]!, 'owner.json'), '{"pid": ', {mode: 0o600});
    const removed = await sweepStaleCredentialDirs(area);
    expect(removed.sort()).toEqual([...gone].sort());
    expect((await fs.readdir(area)).sort()).toEqual(kept.map((k) => path.basename(k)).sort());
  });

  it('opening a session sweeps first', async () => {
    await fs.mkdir(dir.libpqSessionsDir, {recursive: true, mode: 0o700});
    const stale = path.join(dir.libpqSessionsDir, `${deadPid()}-${hex(9)}`);
    await fs.mkdir(stale, {mode: 0o700});
    const session = await openCredentialDir(dir);
    expect(await fs.readdir(dir.libpqSessionsDir)).toEqual([path.basename(session.path)]);
    await session.remove();
  });

  it('refuses an area that is a symbolic link, open to others, or owned by someone else', async () => {
    const area = dir.libpqSessionsDir;
    await fs.mkdir(path.dirname(area), {mode: 0o755});
    const elsewhere = path.join(root, 'elsewhere');
    await fs.mkdir(elsewhere, {mode: 0o700});
    await fs.symlink(elsewhere, area);
    await expect(openCredentialDir(dir)).rejects.toThrow(/run\/libpq is not a directory \(a symbolic link or a file\)/);
    expect(await fs.readdir(elsewhere)).toEqual([]);
    await fs.unlink(area);

    await fs.mkdir(area, {mode: 0o700});
    await fs.chmod(area, 0o750);
    await expect(openCredentialDir(dir)).rejects.toThrow(UserError);
    await expect(openCredentialDir(dir)).rejects.toThrow(/open to group or others \(mode 0750\)/);
    await fs.chmod(area, 0o700);

    if (process.geteuid?.() === 0) {
      await fs.chown(area, 65534, 65534);
      await expect(openCredentialDir(dir)).rejects.toThrow(/owned by uid 65534/);
      await fs.chown(area, 0, 0);
      await fs.chown(path.dirname(area), 65534, 65534);
      await expect(openCredentialDir(dir)).rejects.toThrow(/run is owned by uid 65534/);
      await fs.chown(path.dirname(area), 0, 0);
    }
  });

  it('takes write access to run/ away from group and others (an umask 002 install), keeping it traversable', async () => {
    await fs.mkdir(path.join(root, 'run'), {mode: 0o755});
    await fs.chmod(path.join(root, 'run'), 0o775);
    const session = await openCredentialDir(dir);
    expect(await modeOf(path.join(root, 'run'))).toBe(0o755);
    await session.remove();
  });
});
