import {execFile as execFileCb} from 'node:child_process';
import {existsSync, promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, describe, expect, it} from 'vitest';

import {BugError} from '../../src/errors.js';
import {renderPostgresUnit, type PostgresUnitSpec} from '../../src/postgres/systemd-unit.js';
import {missingComponent} from '../helpers/requirements.js';

const execFile = promisify(execFileCb);

const spec: PostgresUnitSpec = {
  description: 'dForge embedded PostgreSQL 15',
  user: 'dforge-postgres',
  group: 'dforge-postgres',
  postgresBinary: '/usr/lib/postgresql/15/bin/postgres',
  dataDir: '/opt/dforge/data/postgres/main-1',
  runDir: '/opt/dforge/run/postgres/main-1',
  listenAddresses: ['127.0.0.1'],
};

/** Each `Key=value` line of the unit, values in order (a key may repeat, e.g. SystemCallFilter). */
function directives(unit: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const line of unit.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (!m) continue;
    map.set(m[1]!, [...(map.get(m[1]!) ?? []), m[2]!]);
  }
  return map;
}

describe('renderPostgresUnit', () => {
  it('is deterministic', () => {
    expect(renderPostgresUnit(spec)).toBe(renderPostgresUnit({...spec, listenAddresses: [...spec.listenAddresses]}));
  });

  it('sets every sandboxing directive, each once', () => {
    const d = directives(renderPostgresUnit(spec));
    const expected: Record<string, string[]> = {
      ProtectSystem: ['strict'],
      ReadWritePaths: [`${spec.dataDir} ${spec.runDir}`],
      ProtectHome: ['true'],
      PrivateTmp: ['true'],
      PrivateMounts: ['true'],
      PrivateDevices: ['true'],
      DevicePolicy: ['closed'],
      ProtectProc: ['invisible'],
      ProcSubset: ['pid'],
      NoNewPrivileges: ['true'],
      CapabilityBoundingSet: [''],
      AmbientCapabilities: [''],
      RestrictSUIDSGID: ['true'],
      ProtectKernelTunables: ['true'],
      ProtectKernelModules: ['true'],
      ProtectKernelLogs: ['true'],
      ProtectControlGroups: ['true'],
      ProtectClock: ['true'],
      ProtectHostname: ['true'],
      RestrictAddressFamilies: ['AF_UNIX AF_INET AF_INET6'],
      IPAddressDeny: ['any'],
      IPAddressAllow: ['localhost'],
      RestrictNamespaces: ['true'],
      RestrictRealtime: ['true'],
      LockPersonality: ['true'],
      KeyringMode: ['private'],
      SystemCallArchitectures: ['native'],
      SystemCallFilter: ['@system-service', '~@privileged @resources'],
      SystemCallErrorNumber: ['EPERM'],
      RemoveIPC: ['no'],
      UMask: ['0077'],
    };
    for (const [key, values] of Object.entries(expected)) expect(d.get(key), key).toEqual(values);
    // Left out on purpose (the unit says why): they would break JIT, the shm interlock, startup or clients.
    for (const absent of ['MemoryDenyWriteExecute', 'PrivateIPC', 'PrivateUsers', 'PrivateNetwork', 'DynamicUser']) {
      expect(d.has(absent), absent).toBe(false);
    }
  });

  it('keeps home trees readable only when a cluster directory lives in one', () => {
    const home = (dataDir: string, runDir = spec.runDir): string[] | undefined => directives(renderPostgresUnit({...spec, dataDir, runDir})).get('ProtectHome');
    expect(home('/home/pg/data')).toEqual(['read-only']);
    expect(home('/root/data')).toEqual(['read-only']);
    expect(home(spec.dataDir, '/run/user/0/pg')).toEqual(['read-only']);
    expect(home('/homework/data')).toEqual(['true']);
    expect(home('/srv/root/data')).toEqual(['true']);
  });

  it('lets packets through only from loopback and concrete listen addresses', () => {
    const allow = (listenAddresses: string[]): string[] | undefined => directives(renderPostgresUnit({...spec, listenAddresses})).get('IPAddressAllow');
    expect(allow(['localhost', '::1', '127.0.0.2'])).toEqual(['localhost']);
    expect(allow(['10.0.0.5', '*', '0.0.0.0', '::', 'fe80::1%eth0', '10.0.0.5', '2001:db8::7'])).toEqual(['localhost 10.0.0.5 fe80::1 2001:db8::7']);
    expect(() => renderPostgresUnit({...spec, listenAddresses: ['db.example.test']})).toThrow(BugError);
  });
});

// --offline arrived in systemd 250.
async function securityAnalyzer(): Promise<string | false> {
  const bin = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((f) => existsSync(f));
  if (!bin) return missingComponent('systemd-analyze', 'not installed (Debian package systemd): exposure score not measured');
  const {stdout} = await execFile(bin, ['--version']);
  const version = Number(/^systemd (\d+)/.exec(stdout)?.[1]);
  if (!(version >= 250)) return missingComponent('systemd-analyze security --offline', `systemd ${version} predates it (250)`);
  return bin;
}

const analyzer = await securityAnalyzer();

describe.skipIf(!analyzer)('systemd-analyze security --offline', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await fs.rm(d, {recursive: true, force: true});
  });

  it.each([
    ['loopback only', spec],
    ['a non-loopback listen address', {...spec, listenAddresses: ['127.0.0.1', '10.0.0.5']}],
    ['a data directory under /home', {...spec, dataDir: '/home/dforge/data'}],
  ])('rates the unit 2.0 or lower (lower is safer) with %s, without a parse warning', async (_name, s) => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-unit-'));
    dirs.push(dir);
    // The unit type comes from the file name.
    const file = path.join(dir, 'dforge-postgres.service');
    await fs.writeFile(file, renderPostgresUnit(s));
    const {stdout, stderr} = await execFile(analyzer as string, ['security', '--offline=true', '--no-pager', file], {
      env: {...process.env, SYSTEMD_COLORS: '0', SYSTEMD_PAGER: 'cat', LC_ALL: 'C'},
    });
    expect(stderr.split('\n').filter((l) => l.includes(file))).toEqual([]);
    const score = Number(/Overall exposure level for dforge-postgres\.service: (\d+\.\d+)/.exec(stdout)?.[1]);
    expect(score).toBeLessThanOrEqual(2.0);
  });
});
