// The single executable (scripts/build-sea.mjs) run the way an air-gapped host runs it: copied
// alone into an empty directory, no node or npm on PATH, a fresh HOME, and (where possible) no network.
import {execFileSync, spawnSync} from 'node:child_process';
import {chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

const repo = path.resolve(import.meta.dirname, '../..');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'dforge-sea-test-'));
const exe = path.join(tmp, 'dforge');
// This host has a system node in /usr/bin, so the PATH is an empty directory: nothing to fall back on.
const bare = path.join(tmp, 'empty-bin');
mkdirSync(bare);

function run(args: string[], cache = path.join(tmp, 'cache'), prefix: string[] = []) {
  const [cmd, ...rest] = prefix.length ? [...prefix, exe, ...args] : [exe, ...args];
  return spawnSync(cmd!, rest, {cwd: tmp, encoding: 'utf8', env: {PATH: bare, HOME: path.join(tmp, 'home'), XDG_CACHE_HOME: cache}});
}

beforeAll(() => {
  // The same build as npm run build:sea, after the dist/ that CLI tests already need.
  execFileSync(process.execPath, [path.join(repo, 'scripts/build-sea.mjs'), '--out', path.join(tmp, 'built')], {stdio: 'ignore'});
  copyFileSync(path.join(tmp, 'built'), exe);
  chmodSync(exe, 0o755);
}, 120_000);
afterAll(() => rmSync(tmp, {recursive: true, force: true}));

describe('dforge single executable', () => {
  it('has no node on the PATH it runs with', () => {
    expect(spawnSync('/bin/sh', ['-c', 'command -v node npm'], {env: {PATH: bare}}).stdout.toString()).toBe('');
  });

  it('prints the same version as the npm install (same Node)', () => {
    const r = run(['--version']);
    expect(r.status).toBe(0);
    const npm = execFileSync(path.join(repo, 'node_modules/node/bin/node'), [path.join(repo, 'bin/run.js'), '--version'], {encoding: 'utf8'});
    expect(r.stdout).toBe(npm);
  });

  it('lays out and validates an install directory, and lists the help topics, with no network', () => {
    const dir = path.join(tmp, 'inst');
    const net = spawnSync('unshare', ['--net', '-r', 'true']).status === 0 ? ['/usr/bin/unshare', '--net', '-r'] : [];
    expect(run(['config', 'init', '--dir', dir, '--domain', 'x.example'], undefined, net).status).toBe(0);
    const v = run(['config', 'validate', '--dir', dir], undefined, net);
    expect(v.stdout).toContain('valid');
    expect(v.status).toBe(0);
    const h = run(['help'], undefined, net);
    for (const topic of ['config', 'tenant', 'backup', 'keys', 'certs']) expect(h.stdout).toMatch(new RegExp(`^  ${topic} `, 'm'));
  });

  it('refuses a cache directory others can write, and one another user owns', () => {
    const cache = path.join(tmp, 'cache-open');
    mkdirSync(path.join(cache, 'dforge'), {recursive: true});
    chmodSync(path.join(cache, 'dforge'), 0o777);
    const r = run(['--version'], cache);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('writable by group or others');
    expect(readdirSync(path.join(cache, 'dforge'))).toEqual([]);
    if (process.geteuid?.() === 0) {
      const other = path.join(tmp, 'cache-other');
      mkdirSync(path.join(other, 'dforge'), {recursive: true, mode: 0o700});
      execFileSync('chown', ['12345', path.join(other, 'dforge')]);
      const o = run(['--version'], other);
      expect(o.status).toBe(1);
      expect(o.stderr).toContain('owned by uid 12345');
    }
  });

  // Root run with a cache inside a directory another user controls (sudo -E keeps their HOME): that
  // user could rename dforge/ away after the checks and put their own tree in its place.
  const asRoot = process.geteuid?.() === 0;
  it.runIf(asRoot)('refuses a cache below a directory another user owns, and writes nothing there', () => {
    const hostile = path.join(tmp, 'hostile-owner');
    mkdirSync(hostile, {mode: 0o755});
    execFileSync('chown', ['12345', hostile]);
    const r = run(['--version'], path.join(hostile, 'home', '.cache'));
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`${hostile}, above the cache directory, is owned by uid 12345`);
    expect(r.stderr).toContain('set XDG_CACHE_HOME to a directory only you can write');
    expect(r.stderr).not.toContain('Remove that directory');
    expect(readdirSync(hostile)).toEqual([]);
  });

  it('refuses a cache below a group- or world-writable directory that is not sticky', () => {
    for (const mode of [0o777, 0o775]) {
      const open = path.join(tmp, `open-${mode.toString(8)}`);
      mkdirSync(open);
      chmodSync(open, mode);
      const r = run(['--version'], path.join(open, 'cache'));
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`${open}, above the cache directory, is writable by group or others and not sticky (mode ${mode.toString(8)})`);
      expect(readdirSync(open)).toEqual([]);
    }
  });

  it.runIf(asRoot)('accepts a private directory of ours in a sticky world-writable one, and only that', () => {
    // /tmp itself: root-owned, sticky, world-writable; the level below is ours and 0700.
    const mine = mkdtempSync('/tmp/dforge-sea-own-');
    try {
      const r = run(['--version'], path.join(mine, 'c'));
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/^dforge\//);
    } finally {
      rmSync(mine, {recursive: true, force: true});
    }
    const sticky = path.join(tmp, 'sticky');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    // Theirs in a sticky dir: sticky only protects what we own.
    const theirs = path.join(sticky, 'theirs');
    mkdirSync(theirs, {mode: 0o700});
    execFileSync('chown', ['12345', theirs]);
    const t = run(['--version'], path.join(theirs, 'c'));
    expect(t.status).toBe(1);
    expect(t.stderr).toContain(`${theirs}, above the cache directory, is owned by uid 12345 inside a directory others can write`);
    expect(readdirSync(theirs)).toEqual([]);
    // Ours but open to others in a sticky dir: they could swap what is below.
    const ajar = path.join(sticky, 'ajar');
    mkdirSync(ajar);
    chmodSync(ajar, 0o1777);
    const a = run(['--version'], path.join(ajar, 'c'));
    expect(a.status).toBe(1);
    expect(a.stderr).toContain(`${ajar}, above the cache directory, is writable by group or others inside a directory others can write`);
    expect(readdirSync(ajar)).toEqual([]);
  });

  it.runIf(asRoot)('resolves a symbolic link above the cache and checks where it really leads', () => {
    const hostile = path.join(tmp, 'hostile-link-target');
    mkdirSync(hostile, {mode: 0o755});
    execFileSync('chown', ['12345', hostile]);
    const link = path.join(tmp, 'link-home');
    symlinkSync(hostile, link);
    const r = run(['--version'], path.join(link, '.cache'));
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`${hostile}, above the cache directory, is owned by uid 12345`);
    expect(readdirSync(hostile)).toEqual([]);
    // A link to a directory that passes is followed once, and the tree lands at the real path.
    const good = path.join(tmp, 'good-target');
    mkdirSync(good, {mode: 0o700});
    const goodLink = path.join(tmp, 'link-good');
    symlinkSync(good, goodLink);
    const g = run(['--version'], path.join(goodLink, '.cache'));
    expect(g.status).toBe(0);
    expect(readdirSync(path.join(good, '.cache', 'dforge')).filter((n) => !n.startsWith('.'))).toHaveLength(1);
  });

  it('throws away a planted tree that this executable did not finish writing', () => {
    const cache = path.join(tmp, 'cache-planted');
    expect(run(['--version'], cache).status).toBe(0);
    const [digest] = readdirSync(path.join(cache, 'dforge')).filter((n) => !n.startsWith('.'));
    const target = path.join(cache, 'dforge', digest!);
    rmSync(target, {recursive: true, force: true});
    mkdirSync(path.join(target, 'bin'), {recursive: true, mode: 0o700});
    writeFileSync(path.join(target, 'bin', 'run.js'), 'console.log("planted")');
    const r = run(['--version'], cache);
    expect(r.stdout).not.toContain('planted');
    expect(r.stdout).toMatch(/^dforge\//);
    expect(existsSync(path.join(target, '.dforge-sea'))).toBe(true);
  });
});
