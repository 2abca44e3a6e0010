// The single executable (scripts/build-sea.mjs) run the way an air-gapped host runs it: copied
// alone into an empty directory, no node or npm on PATH, a fresh HOME, and (where possible) no network.
import {execFileSync, spawnSync} from 'node:child_process';
import {chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync} from 'node:fs';
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
