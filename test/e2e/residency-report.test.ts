import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {readOpsLog} from '../../src/audit/ops-log.js';
import {BackupCatalog} from '../../src/backup/catalog.js';
import {openControlPlane} from '../../src/control/plane.js';
import {embeddedClusterPaths} from '../../src/postgres/embedded-install.js';
import {checkRegion, recordCrossing} from '../../src/residency/policy.js';
import {RESIDENCY_SCOPE, type ResidencyReport, type ResidencyReportRun} from '../../src/residency/report.js';
import type {CliResult} from '../helpers/cli.js';
import {multiRegionInstall, type MultiRegionInstall} from '../helpers/multi-region.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * `dforge residency report` on a real two-region install: eu (EU, clusters eu-1 and eu-2, tenants
 * acme and globex) and us (US, cluster us-1, tenant initech), every tenant backed up into its
 * region's destination. The careless and hostile cases come first: an existing record is never
 * overwritten, a backup planted in the wrong region's destination and a re-initialised cluster are
 * caught by --verify (exit 3) while the report is still written.
 */
describe.skipIf(!available)('residency report', () => {
  let install: MultiRegionInstall;
  let scratch: string;

  const json = <T>(r: CliResult): T & {schemaVersion: number} => JSON.parse(r.stdout) as T & {schemaVersion: number};
  const opsEntries = async (action: string) => {
    const plane = await openControlPlane(install.dir);
    try {
      return (await readOpsLog(plane.control)).filter((e) => e.action === action);
    } finally {
      await plane.close();
    }
  };
  const fingerprints = async (): Promise<number> => {
    const plane = await openControlPlane(install.dir);
    try {
      return Number((await plane.control.query<{n: string}>('SELECT count(*) AS n FROM residency_fingerprints')).rows[0]!.n);
    } finally {
      await plane.close();
    }
  };

  beforeAll(async () => {
    install = await multiRegionInstall();
    scratch = path.join(path.dirname(install.dir.root), 'reports');
    await fs.mkdir(scratch);
    for (const args of [
      ['tenant', 'create', 'initech', '--region', 'us'],
      ['backup', '--all'],
    ]) {
      const r = await install.cli(args);
      if (r.code !== 0) throw new Error(`dforge ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    }
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  it('refuses to overwrite an existing record (exit 1, names the file and --force) and records nothing, not even a baseline', async () => {
    const file = path.join(scratch, 'existing.md');
    await fs.writeFile(file, 'the auditor already has this one\n');
    const before = (await opsEntries('residency.report')).length;
    const r = await install.cli(['residency', 'report', '--verify', '--out', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file} already exists`);
    expect(r.stderr).toContain('--force');
    expect(await fs.readFile(file, 'utf8')).toBe('the auditor already has this one\n');
    expect((await opsEntries('residency.report')).length).toBe(before);
    expect(await fingerprints()).toBe(0);

    const usage = await install.cli(['residency', 'report', '--accept-drift', 'us-1']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('--verify');
  });

  it('show: every region with its jurisdiction, clusters and destinations, and every tenant pin', async () => {
    const r = await install.cli(['residency', 'show', '--json']);
    expect(r.code).toBe(0);
    const show = json<{regions: ResidencyReport['regions']; tenants: ResidencyReport['tenants']}>(r);
    expect(show.regions.map((g) => [g.name, g.jurisdiction, g.clusters.map((c) => `${c.name}:${c.tenants}`), g.destinations.map((d) => d.name)])).toEqual([
      ['eu', 'EU', ['eu-1:2', 'eu-2:0'], ['eu-local']],
      ['us', 'US', ['us-1:1'], ['us-local']],
    ]);
    expect(show.regions[1]!.clusters[0]!.address).toBe(`127.0.0.1:${install.ports['us-1']}`);
    expect(show.tenants.map((t) => `${t.slug} ${t.region} ${t.jurisdiction} ${t.cluster}`)).toEqual(['acme eu EU eu-1', 'globex eu EU eu-1', 'initech us US us-1']);
    const human = await install.cli(['residency', 'show']);
    expect(human.stdout).toMatch(/initech\s+us\s+US\s+us-1/);
  });

  it('report: the scope, each tenant with its backups and their regions, "no transfers", then an approved exception with its reason', async () => {
    const first = await install.cli(['residency', 'report', '--format', 'json', '--json']);
    expect(first.code).toBe(0);
    const report = json<ResidencyReportRun>(first).report;
    expect(report.scope).toEqual(RESIDENCY_SCOPE);
    expect(report.verification).toBeNull();
    const initech = report.tenants.find((t) => t.slug === 'initech')!;
    expect(initech).toMatchObject({region: 'us', jurisdiction: 'US', cluster: 'us-1'});
    expect(initech.backups).toHaveLength(1);
    expect(initech.backups[0]).toMatchObject({destination: 'us-local', destinationRegion: 'us', outsideRegion: false, approvedBy: null});
    expect(report.tenants.find((t) => t.slug === 'acme')!.backups[0]).toMatchObject({destination: 'eu-local', destinationRegion: 'eu', outsideRegion: false});
    expect(report.summary).toMatchObject({tenants: 3, tenantsByRegion: {eu: 2, us: 1}, backups: 3, backupsOutsideRegion: 0, crossRegionEvents: 0});

    const md = await install.cli(['residency', 'report']);
    expect(md.code).toBe(0);
    expect(md.stdout).toContain('## Transfers of personal data to a third country (Art. 30(1)(e))');
    expect(md.stdout).toContain('Transfers of personal data to a third country: none.');
    for (const line of [...RESIDENCY_SCOPE.global, ...RESIDENCY_SCOPE.regional]) expect(md.stdout).toContain(`- ${line}`);
    expect(md.stdout).toMatch(/\| initech \| us \| US \| us-1 \| active \| 1 \|/);

    // An approved exception, as `--allow-cross-region --reason` records it.
    const plane = await openControlPlane(install.dir);
    try {
      const approved = checkRegion(plane.config, {tenant: 'globex', from: 'eu', to: 'us', operation: 'export', what: 'audit export to /srv/us-legal', rerun: 'dforge audit export --tenant globex'}, {reason: 'DPA-2026-14 US court order | ticket 7'});
      await recordCrossing(plane, plane.config, approved!);
    } finally {
      await plane.close();
    }
    const after = await install.cli(['residency', 'report']);
    expect(after.stdout).not.toContain('Transfers of personal data to a third country: none');
    expect(after.stdout).toContain('Approved exceptions (1)');
    // The reason's pipe is escaped: operator text cannot break the table.
    expect(after.stdout).toMatch(/\| globex \| export \| eu \(EU\) \| us \(US\) \| DPA-2026-14 US court order \\\| ticket 7 \|/);
    const withEvent = json<ResidencyReportRun>(await install.cli(['residency', 'report', '--json'])).report;
    expect(withEvent.crossRegionEvents).toEqual([expect.objectContaining({tenant: 'globex', operation: 'export', fromRegion: 'eu', toRegion: 'us', fromJurisdiction: 'EU', toJurisdiction: 'US', reason: 'DPA-2026-14 US court order | ticket 7'})]);
    expect((await opsEntries('residency.report')).length).toBeGreaterThanOrEqual(4);
  });

  it('--verify: the first run records the baseline, the next compares and passes; --out writes 0600', async () => {
    const first = await install.cli(['residency', 'report', '--verify', '--json']);
    expect(first.code).toBe(0);
    const v1 = json<ResidencyReportRun>(first).report.verification!;
    expect(v1.baselineRecorded).toBe(true);
    expect(v1.clusters.map((c) => c.status)).toEqual(['baseline-recorded', 'baseline-recorded', 'baseline-recorded']);
    expect(v1.clusters.every((c) => /^\d{19}$/.test(c.systemIdentifier ?? ''))).toBe(true);
    expect(new Set(v1.clusters.map((c) => c.systemIdentifier)).size).toBe(3);
    expect(v1.findings).toEqual([]);
    expect(v1.objectsScanned).toBeGreaterThanOrEqual(3);

    const out = path.join(scratch, 'verified.md');
    const second = await install.cli(['residency', 'report', '--verify', '--out', out]);
    expect(second.code).toBe(0);
    expect(second.stdout).toBe('');
    expect(second.stderr).not.toContain('baseline recorded');
    expect((await fs.stat(out)).mode & 0o777).toBe(0o600);
    const text = await fs.readFile(out, 'utf8');
    expect(text).toContain('Findings: none.');
    expect(text).toMatch(/\| us-1 \| us \| \d{19} \| 127\.0\.0\.1:\d+ \| unchanged \|/);
    const last = (await opsEntries('residency.report')).at(-1)!;
    expect(last).toMatchObject({outcome: 'ok', details: {verified: true, baselineRecorded: false, out, findings: []}});
  });

  it("--verify catches a us tenant's backup copied into the eu destination: exit 3, names the file, the tenant and both regions; the report is still written", async () => {
    const plane = await openControlPlane(install.dir);
    let location: string;
    try {
      location = (await new BackupCatalog(plane.control).list({tenant: 'initech'}))[0]!.location;
    } finally {
      await plane.close();
    }
    // Renamed as if it were acme's: the name proves nothing, the authenticated header does.
    const planted = path.join(install.destinationDirs['eu-local']!, 'acme', 'planted.dfb');
    await fs.copyFile(path.join(install.destinationDirs['us-local']!, location), planted);
    try {
      const out = path.join(scratch, 'drift.md');
      const r = await install.cli(['residency', 'report', '--verify', '--out', out]);
      expect(r.code).toBe(3);
      expect(r.stderr).toContain(`${planted} is a backup of tenant initech of region us (US), found in destination eu-local of region eu (EU)`);
      expect(r.stderr).toContain('--accept-drift');
      expect(await fs.readFile(out, 'utf8')).toContain(`**object-outside-region** (destination:eu-local): ${planted}`);
      const j = await install.cli(['residency', 'report', '--verify', '--json']);
      expect(j.code).toBe(3);
      expect(json<ResidencyReportRun>(j).report.verification!.findings).toEqual([
        expect.objectContaining({kind: 'object-outside-region', subject: 'destination:eu-local', location: planted, tenant: 'initech', tenantRegion: 'us', foundInRegion: 'eu'}),
      ]);
      expect((await opsEntries('residency.report')).at(-1)).toMatchObject({outcome: 'failed', details: {findings: ['object-outside-region destination:eu-local']}});

      // A planted file that is not a dforge backup at all is a finding too: its owner is unknown.
      await fs.writeFile(planted, 'not a backup');
      const junk = await install.cli(['residency', 'report', '--verify', '--json']);
      expect(junk.code).toBe(3);
      expect(json<ResidencyReportRun>(junk).report.verification!.findings).toEqual([expect.objectContaining({kind: 'object-unreadable', location: planted, foundInRegion: 'eu'})]);
      await fs.rm(planted);

      // Named like a manifest, it is not skipped: only a real manifest of a backup beside it is.
      await fs.copyFile(path.join(install.destinationDirs['us-local']!, location), `${planted}.manifest.json`);
      const disguised = await install.cli(['residency', 'report', '--verify', '--json']);
      expect(disguised.code).toBe(3);
      expect(json<ResidencyReportRun>(disguised).report.verification!.findings).toEqual([
        expect.objectContaining({kind: 'object-unreadable', location: `${planted}.manifest.json`, foundInRegion: 'eu'}),
      ]);
      // A huge file named like a manifest is refused unread: verify never loads it into memory.
      await fs.writeFile(`${planted}.manifest.json`, Buffer.alloc(2 * 1024 * 1024, 0x7b));
      const huge = await install.cli(['residency', 'report', '--verify', '--json']);
      expect(huge.code).toBe(3);
      expect(json<ResidencyReportRun>(huge).report.verification!.findings).toEqual([
        expect.objectContaining({kind: 'object-unreadable', location: `${planted}.manifest.json`, message: expect.stringMatching(/is 2097152 bytes, more than the 65536 a manifest can be; not read/)}),
      ]);
      await fs.rm(`${planted}.manifest.json`);

      // Hidden, or named like an unfinished upload: still looked at, and still attributed by its header.
      for (const name of ['.hidden.dfb', 'upload.dfb.partial']) {
        const hidden = path.join(path.dirname(planted), name);
        await fs.copyFile(path.join(install.destinationDirs['us-local']!, location), hidden);
        try {
          const found = await install.cli(['residency', 'report', '--verify', '--json']);
          expect(found.code, name).toBe(3);
          expect(json<ResidencyReportRun>(found).report.verification!.findings, name).toEqual([expect.objectContaining({kind: 'object-outside-region', location: hidden, tenant: 'initech'})]);
        } finally {
          await fs.rm(hidden);
        }
      }
    } finally {
      await fs.rm(planted, {force: true});
      await fs.rm(`${planted}.manifest.json`, {force: true});
    }
    expect((await install.cli(['residency', 'report', '--verify'])).code).toBe(0);
  });

  it('--verify catches a catalogued backup whose object is gone', async () => {
    const plane = await openControlPlane(install.dir);
    let record: {id: string; location: string};
    try {
      record = (await new BackupCatalog(plane.control).list({tenant: 'acme'}))[0]!;
    } finally {
      await plane.close();
    }
    const file = path.join(install.destinationDirs['eu-local']!, record.location);
    const saved = path.join(scratch, 'saved.dfb');
    await fs.rename(file, saved);
    try {
      const r = await install.cli(['residency', 'report', '--verify', '--json']);
      expect(r.code).toBe(3);
      expect(json<ResidencyReportRun>(r).report.verification!.findings).toEqual([expect.objectContaining({kind: 'catalog-object-missing', subject: `backup:${record.id}`, tenant: 'acme'})]);
    } finally {
      await fs.rename(saved, file);
    }
  });

  it('--verify catches a re-initialised cluster (another system identifier behind us-1); --accept-drift records the new one in the ops log', async () => {
    const before = json<ResidencyReportRun>(await install.cli(['residency', 'report', '--verify', '--json'])).report.verification!.clusters.find((c) => c.name === 'us-1')!.systemIdentifier!;
    // The operator wipes us-1 and runs db init again: same name, same port, same credentials, another server.
    expect((await install.cli(['db', 'stop', '--cluster', 'us-1', '--immediate'])).code).toBe(0);
    // A cluster that cannot be asked is not a pass.
    const down = await install.cli(['residency', 'report', '--verify', '--json']);
    expect(down.code).toBe(3);
    expect(json<ResidencyReportRun>(down).report.verification!.findings).toEqual([expect.objectContaining({kind: 'unverifiable', subject: 'cluster:us-1'})]);
    await fs.rm(embeddedClusterPaths(install.dir, 'us-1').dataDir, {recursive: true, force: true});
    const init = await install.cli(['db', 'init', '--cluster', 'us-1']);
    expect(init.code, init.stderr).toBe(0);

    const r = await install.cli(['residency', 'report', '--verify', '--json']);
    expect(r.code).toBe(3);
    const v = json<ResidencyReportRun>(r).report.verification!;
    const us1 = v.clusters.find((c) => c.name === 'us-1')!;
    expect(us1).toMatchObject({status: 'changed', recorded: before});
    expect(us1.systemIdentifier).not.toBe(before);
    expect(v.findings).toEqual([expect.objectContaining({kind: 'cluster-identity-changed', subject: 'cluster:us-1'})]);
    expect(v.findings[0]!.message).toContain(`answers with system identifier ${us1.systemIdentifier}, but ${before} was recorded`);

    const unknown = await install.cli(['residency', 'report', '--verify', '--accept-drift', 'us-9']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('us-9');

    const accepted = await install.cli(['residency', 'report', '--verify', '--accept-drift', 'us-1', '--json']);
    expect(accepted.code).toBe(0);
    expect(json<ResidencyReportRun>(accepted).report.verification!.accepted).toEqual([{kind: 'cluster', name: 'us-1', from: before, to: us1.systemIdentifier}]);
    expect((await opsEntries('residency.report')).at(-1)).toMatchObject({outcome: 'ok', details: {acceptedDrift: [{kind: 'cluster', name: 'us-1', from: before, to: us1.systemIdentifier}]}});
    const again = json<ResidencyReportRun>(await install.cli(['residency', 'report', '--verify', '--json'])).report.verification!;
    expect(again.clusters.find((c) => c.name === 'us-1')!.status).toBe('unchanged');
  });
});
