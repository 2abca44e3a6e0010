import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {parse as parseYaml, stringify as stringifyYaml} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {BackupCatalog} from '../../src/backup/catalog.js';
import {superuserSecret} from '../../src/control/clusters.js';
import {openControlPlane} from '../../src/control/plane.js';
import {connectOverSocket} from '../../src/postgres/connect.js';
import {EMBEDDED_SUPERUSER, embeddedCluster} from '../../src/postgres/embedded-install.js';
import type {CheckResult} from '../../src/posture/check.js';
import {openPostureContext, type Probe} from '../../src/posture/context.js';
import {AT_REST_CHECKS, atRestProbe} from '../../src/posture/probes/at-rest.js';
import {BACKUPS_CHECKS, backupsProbe} from '../../src/posture/probes/backups.js';
import {KEYS_CHECKS, keysProbe} from '../../src/posture/probes/keys.js';
import {RESIDENCY_CHECKS, residencyProbe} from '../../src/posture/probes/residency.js';
import {TRANSIT_CHECKS, transitProbe} from '../../src/posture/probes/transit.js';
import {checkRegion, recordCrossing} from '../../src/residency/policy.js';
import {InstallDir} from '../../src/state/install-dir.js';
import {runCli, type CliResult} from '../helpers/cli.js';
import {findPgBinaries, freePort} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

const PROBES: Array<[Probe, readonly {id: string}[]]> = [
  [transitProbe, TRANSIT_CHECKS],
  [atRestProbe, AT_REST_CHECKS],
  [backupsProbe, BACKUPS_CHECKS],
  [keysProbe, KEYS_CHECKS],
  [residencyProbe, RESIDENCY_CHECKS],
];

/**
 * The data probes on a real two-region embedded install (eu: acme and globex on eu-1, us: initech
 * on us-1, each region with its own local destination), every tenant backed up and deep-verified.
 * Each hostile or careless change must turn its check FAIL, and undoing it must turn it PASS.
 */
describe.skipIf(!available)('posture: data in transit, at rest, backups, keys and residency', () => {
  let root: string;
  let dir: InstallDir;
  let backedUpAt: Date;

  const cli = async (args: string[]): Promise<CliResult> => {
    const r = await runCli([...args, '--dir', dir.root]);
    if (r.code !== 0) throw new Error(`dforge ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    return r;
  };
  const run = async (probe: Probe, clock?: () => Date): Promise<CheckResult[]> => {
    const ctx = await openPostureContext(dir, clock ? {clock} : {});
    try {
      return await probe(ctx);
    } finally {
      await ctx.plane?.close();
    }
  };
  const find = (results: CheckResult[], id: string, scope: string): CheckResult => {
    const r = results.find((x) => x.id === id && x.scope === scope);
    if (!r) throw new Error(`no result ${id} for ${scope} in ${results.map((x) => `${x.id}@${x.scope}`).join(', ')}`);
    return r;
  };
  const asSuperuser = async (cluster: string, sql: string[]): Promise<void> => {
    const plane = await openControlPlane(dir);
    try {
      const pg = embeddedCluster(dir, plane.config, cluster);
      const password = (await plane.keys.sealed.get(superuserSecret(cluster))).toString('utf8');
      const client = await connectOverSocket(pg.runDir, pg.port, {user: EMBEDDED_SUPERUSER, password, database: 'postgres'});
      try {
        for (const statement of sql) await client.query(statement);
      } finally {
        await client.end();
      }
    } finally {
      await plane.close();
    }
  };

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-posture-data-'));
    // The server account must traverse the install directory.
    await fs.chmod(root, 0o755);
    dir = new InstallDir(path.join(root, 'install'));
    const [euPort, usPort] = [await freePort(), await freePort()];
    await cli(['quickstart', '--port', String(euPort), '--region', 'eu', '--json']);
    const config = parseYaml(await fs.readFile(dir.configFile, 'utf8')) as {regions: Record<string, Record<string, unknown>>};
    // Two regions need a jurisdiction each (config/schema.ts).
    config.regions.eu!.jurisdiction = 'EU';
    config.regions.us = {
      jurisdiction: 'US',
      clusters: [{name: 'us-1', kind: 'embedded', port: usPort}],
      backup: {destinations: [{name: 'us-local', kind: 'local', path: path.join(dir.root, 'backups', 'us')}]},
    };
    await fs.writeFile(dir.configFile, stringifyYaml(config));
    await cli(['db', 'init', '--cluster', 'us-1']);
    await cli(['tenant', 'create', 'initech', '--region', 'us']);
    backedUpAt = new Date();
    await cli(['backup', '--all', '--json']);
    await cli(['backup', 'verify', '--all', '--deep']);
  });
  afterAll(async () => {
    if (dir) await runCli(['db', 'stop', '--immediate', '--dir', dir.root]);
    if (root) await fs.rm(root, {recursive: true, force: true});
  });

  it('healthy: every check PASSes, except the data volume (no dm-crypt here: WARN) and what does not apply (SKIP with a reason)', async () => {
    for (const [probe, definitions] of PROBES) {
      const results = await run(probe);
      const ids = new Set(definitions.map((d) => d.id));
      for (const r of results) {
        expect(ids.has(r.id), `${r.id} is not among its probe's definitions`).toBe(true);
        const expected =
          r.id === 'at-rest.data-volume' ? ['PASS', 'WARN'] : r.scope === 'proxy' ? ['SKIP'] : ['PASS'];
        expect(expected, `${r.id}@${r.scope}: ${r.status} ${r.observed} ${r.reason ?? ''}`).toContain(r.status);
        if (r.status === 'SKIP') expect(r.reason).toBeTruthy();
      }
    }
    const transit = await run(transitProbe);
    expect(transit.map((r) => `${r.id}@${r.scope}`).sort()).toEqual(
      ['cluster:eu-1', 'cluster:us-1']
        .flatMap((s) => TRANSIT_CHECKS.map((d) => `${d.id}@${s}`))
        .concat(['in-transit.tls13@proxy', 'in-transit.tls12-refused@proxy', 'in-transit.certificate@proxy'])
        .sort(),
    );
    expect(find(transit, 'in-transit.certificate', 'cluster:eu-1').observed).toMatch(/days left/);
    expect(find(await run(residencyProbe), 'residency.cross-region-exceptions', 'install').observed).toBe('0 catalogued backup(s) outside their region; 0 approved exception(s)');
    const placement = find(await run(residencyProbe), 'residency.backup-placement', 'destination:us-local');
    expect(placement.observed).toContain('2 backup file(s) in us-local (region us), 1 of them control backups');
  });

  it('a cluster that accepts TLS 1.2 again FAILs in-transit.tls12-refused, and PASSes once reset', async () => {
    await asSuperuser('eu-1', ["ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1.2'", 'SELECT pg_reload_conf()']);
    try {
      const results = await run(transitProbe);
      const refused = find(results, 'in-transit.tls12-refused', 'cluster:eu-1');
      expect(refused.status).toBe('FAIL');
      expect(refused.observed).toContain('TLS 1.2 handshake accepted');
      expect(find(results, 'in-transit.tls13', 'cluster:eu-1').status).toBe('PASS');
      expect(find(results, 'in-transit.tls12-refused', 'cluster:us-1').status).toBe('PASS');
    } finally {
      await asSuperuser('eu-1', ['ALTER SYSTEM RESET ssl_min_protocol_version', 'SELECT pg_reload_conf()']);
    }
    const after = await run(transitProbe);
    expect(find(after, 'in-transit.tls12-refused', 'cluster:eu-1').status).toBe('PASS');
  });

  it('a stopped cluster is ERROR, never PASS: its handshakes and its tenants cannot be measured', async () => {
    await cli(['db', 'stop', '--cluster', 'us-1']);
    try {
      const transit = await run(transitProbe);
      for (const id of ['in-transit.tls13', 'in-transit.tls12-refused', 'in-transit.certificate']) {
        expect(find(transit, id, 'cluster:us-1')).toMatchObject({status: 'ERROR', observed: 'not evaluated'});
        expect(find(transit, id, 'cluster:eu-1').status).toBe('PASS');
      }
      expect(find(transit, 'in-transit.tls13', 'cluster:us-1').reason).toMatch(/^cannot reach 127\.0\.0\.1:\d+/);
      expect(find(await run(residencyProbe), 'residency.tenant-pinned', 'tenant:initech').status).toBe('ERROR');
    } finally {
      await cli(['db', 'start', '--cluster', 'us-1']);
    }
    expect(find(await run(transitProbe), 'in-transit.tls13', 'cluster:us-1').status).toBe('PASS');
  });

  it("a backup copied into another region's destination FAILs residency, named by its authenticated header; removing it PASSes", async () => {
    const acmeDir = path.join(dir.root, 'backups', 'eu', 'acme');
    const [file] = (await fs.readdir(acmeDir)).filter((f) => f.endsWith('.dfb'));
    // Renamed as if it were initech's: the file name proves nothing, the header does.
    const copy = path.join(dir.root, 'backups', 'us', 'initech', `20260101T000000Z-initech-000000.dfb`);
    await fs.copyFile(path.join(acmeDir, file!), copy);
    try {
      const results = await run(residencyProbe);
      const us = find(results, 'residency.backup-placement', 'destination:us-local');
      expect(us.status).toBe('FAIL');
      expect(us.observed).toContain(`${copy} is a backup of tenant acme of region eu, in destination us-local of region us`);
      expect(find(results, 'residency.backup-placement', 'destination:eu-local').status).toBe('PASS');
    } finally {
      await fs.rm(copy);
    }
    expect(find(await run(residencyProbe), 'residency.backup-placement', 'destination:us-local').status).toBe('PASS');
  });

  it("a catalogued backup in another region's destination FAILs residency.cross-region-exceptions; an approved exception for it PASSes, listed with its reason", async () => {
    const plane = await openControlPlane(dir);
    try {
      const [acme] = await new BackupCatalog(plane.control).list({tenant: 'acme'});
      // The catalog says an eu tenant's backup sits in us-local: what a careless copy plus rebuild-catalog leaves.
      await plane.control.query("INSERT INTO backups SELECT 'moved-' || id, kind, tenant, region, cluster, 'us-local', location, size, sha256, pg_version, key_id, key_version, created_at, verified_at FROM backups WHERE id = $1", [acme!.id]);
      try {
        const unapproved = find(await run(residencyProbe), 'residency.cross-region-exceptions', 'install');
        expect(unapproved.status).toBe('FAIL');
        expect(unapproved.observed).toContain(`backup moved-${acme!.id} of tenant acme (region eu) is in destination us-local of region us`);
        const approval = checkRegion(plane.config, {tenant: 'acme', from: 'eu', to: 'us', operation: 'backup', what: 'backup to destination us-local', rerun: 'dforge backup --tenant acme'}, {reason: 'DPA-2026-14 test restore in US'});
        await recordCrossing(plane, plane.config, approval!, new Date(Date.parse(acme!.createdAt) - 1000));
        const approved = find(await run(residencyProbe), 'residency.cross-region-exceptions', 'install');
        expect(approved.status).toBe('PASS');
        expect(approved.observed).toMatch(/^1 catalogued backup\(s\) outside their region; 1 approved exception\(s\): #\d+ acme backup eu->us \(DPA-2026-14 test restore in US\)$/);
      } finally {
        await plane.control.query('DELETE FROM backups WHERE id = $1', [`moved-${acme!.id}`]);
      }
    } finally {
      await plane.close();
    }
  });

  it('a tampered newest backup FAILs at-rest.backup-encrypted and residency; the original bytes PASS again', async () => {
    const acmeDir = path.join(dir.root, 'backups', 'eu', 'acme');
    const file = path.join(acmeDir, (await fs.readdir(acmeDir)).find((f) => f.endsWith('.dfb'))!);
    const original = await fs.readFile(file);
    const tampered = Buffer.from(original);
    // A byte of the header JSON's pgVersion digits: still parseable, no longer authentic.
    const at = tampered.indexOf('"pgVersion":"') + '"pgVersion":"'.length;
    tampered[at] = tampered[at] === 0x31 ? 0x32 : 0x31;
    await fs.writeFile(file, tampered);
    try {
      expect(find(await run(atRestProbe), 'at-rest.backup-encrypted', 'tenant:acme').status).toBe('FAIL');
      const eu = find(await run(residencyProbe), 'residency.backup-placement', 'destination:eu-local');
      expect(eu.status).toBe('FAIL');
      expect(eu.observed).toContain(`not an authentic backup: ${file}`);
    } finally {
      await fs.writeFile(file, original);
    }
    expect(find(await run(atRestProbe), 'at-rest.backup-encrypted', 'tenant:acme').status).toBe('PASS');
  });

  it('freshness and rotation follow the clock: 30 h WARN, 60 h FAIL; deep verify and JWT key age WARN when old', async () => {
    const at = (hours: number) => () => new Date(backedUpAt.getTime() + hours * 36e5);
    expect(find(await run(backupsProbe, at(30)), 'backups.freshness', 'tenant:initech').status).toBe('WARN');
    const late = await run(backupsProbe, at(60));
    expect(find(late, 'backups.freshness', 'tenant:acme')).toMatchObject({status: 'FAIL', reason: 'older than 50 hours'});
    expect(find(late, 'backups.deep-verify', 'install').status).toBe('PASS');
    expect(find(await run(backupsProbe, at(8 * 24 + 1)), 'backups.deep-verify', 'install').status).toBe('WARN');
    expect(find(await run(backupsProbe, at(1)), 'backups.freshness', 'tenant:acme').status).toBe('PASS');

    const keys = await run(keysProbe, at(91 * 24));
    expect(find(keys, 'keys.jwt-age', 'install')).toMatchObject({status: 'WARN', fix: 'dforge keys rotate --jwt'});
    expect(find(keys, 'keys.master-age', 'install').status).toBe('PASS');
    expect(find(keys, 'keys.data-key-age', 'tenant:initech').status).toBe('PASS');
    expect(find(await run(keysProbe, at(366 * 24)), 'keys.master-age', 'install').status).toBe('WARN');
  });

  it('a secret readable by others, or a plaintext file in secrets/, FAILs naming the file; fixed, it PASSes', async () => {
    const sealed = path.join(dir.secretsDir, 'postgres', 'eu-1', 'provisioner.sealed');
    const planted = path.join(dir.secretsDir, 'postgres', 'eu-1', 'password.txt');
    await fs.chmod(sealed, 0o644);
    await fs.writeFile(planted, 'hunter2\n', {mode: 0o600});
    try {
      const results = await run(atRestProbe);
      const modes = find(results, 'at-rest.secret-permissions', 'install');
      expect(modes.status).toBe('FAIL');
      expect(modes.observed).toContain(`${sealed} is 0644, expected 0600`);
      const plain = find(results, 'at-rest.secrets-sealed', 'install');
      expect(plain.status).toBe('FAIL');
      expect(plain.observed).toContain(`not sealed: ${planted}`);
    } finally {
      await fs.chmod(sealed, 0o600);
      await fs.rm(planted);
    }
    const after = await run(atRestProbe);
    expect(find(after, 'at-rest.secret-permissions', 'install').status).toBe('PASS');
    expect(find(after, 'at-rest.secrets-sealed', 'install').status).toBe('PASS');
  });
});
