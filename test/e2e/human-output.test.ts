import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {WHOLE_RUN} from '../../src/backup/backup-lock.js';
import {scramVerifier} from '../../src/postgres/scram.js';
import {cliEntry} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {startPty} from '../helpers/pty.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** A UTC time as the human tables print it. */
const ZONED_TIME = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z/;
/** A size in binary units, as formatBytes prints it. */
const SIZE = /\b\d+(\.\d)? (B|KiB|MiB|GiB)\b/;

interface JsonLine {
  event: string;
  tenant?: string;
  status: string;
  backupId?: string;
  bytes?: number;
  seconds: number;
  tenants?: number;
  ok?: number;
  failed?: number;
  locked?: number;
  control?: string[];
  error?: string;
}

/**
 * What an operator reads: `backup --all` as a table on a terminal and as JSON lines under cron,
 * `backup prune` listing each backup it deletes (and with --dry-run deleting nothing), `keys status`
 * counting tenant data keys, and tables whose sizes have units and whose times have a zone.
 */
describe.skipIf(!available)('human output on the embedded install', () => {
  let install: EmbeddedInstall;

  const catalog = async (): Promise<Array<{id: string; kind: string; tenant: string; location: string}>> => {
    const r = await install.cli(['backup', 'list', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as {backups: Array<{id: string; kind: string; tenant: string; location: string}>}).backups;
  };
  /** Every file under the backup destination, with its size: what a prune may remove. */
  const destinationFiles = async (): Promise<string[]> => {
    const root = path.join(install.dir.root, 'backups', 'local');
    const entries = await fs.readdir(root, {recursive: true, withFileTypes: true});
    const files = entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
    return (await Promise.all(files.map(async (f) => `${path.relative(root, f)} ${(await fs.stat(f)).size}`))).sort();
  };
  /** The first column of a renderTable block's rows, after its upper-case header line. */
  const firstColumn = (text: string, header: RegExp): string[] => {
    const lines = text.split('\n');
    const at = lines.findIndex((l) => header.test(l));
    expect(at, text).toBeGreaterThanOrEqual(0);
    const rows: string[] = [];
    for (const line of lines.slice(at + 1)) {
      if (line.trim() === '') break;
      rows.push(line.split(/\s+/)[0]!);
    }
    return rows;
  };

  beforeAll(async () => {
    install = await quickstartInstall();
  });
  afterAll(async () => {
    await install?.cleanup();
  });

  it('backup --all off a terminal (cron) prints one JSON object per line on stdout: each tenant, then a summary', async () => {
    const r = await install.cli(['backup', '--all']);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as JsonLine);
    const tenants = lines.filter((l) => l.event === 'backup');
    expect(tenants.map((l) => l.tenant).sort()).toEqual(['acme', 'globex']);
    for (const t of tenants) {
      expect(t.status).toBe('ok');
      expect(t.backupId).toMatch(new RegExp(`-${t.tenant}-[0-9a-f]{6}$`));
      expect(Number.isInteger(t.bytes)).toBe(true);
    }
    const summary = lines.at(-1)!;
    expect(summary).toMatchObject({event: 'summary', status: 'ok', tenants: 2, ok: 2, failed: 0, locked: 0});
    expect(summary.control).toHaveLength(1);
    // The summary names backups that are in the catalog.
    const ids = (await catalog()).map((b) => b.id);
    for (const id of [...tenants.map((t) => t.backupId!), ...summary.control!]) expect(ids).toContain(id);
  });

  it('backup --all off a terminal with a failing tenant: the other tenant still runs, the lines say which failed, exit 4 names it', async () => {
    const plane = await install.plane();
    try {
      await plane.tenants.onTenantCluster('globex', (d) => d.roles.setPassword('tenant_globex', scramVerifier('not-the-sealed-one')));
    } finally {
      await plane.close();
    }
    try {
      const r = await install.cli(['backup', '--all']);
      expect(r.code).toBe(4);
      const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as JsonLine);
      expect(lines.find((l) => l.tenant === 'acme')?.status).toBe('ok');
      expect(lines.find((l) => l.tenant === 'globex')).toMatchObject({event: 'backup', status: 'failed'});
      expect(lines.at(-1)).toMatchObject({event: 'summary', status: 'partial', tenants: 2, ok: 1, failed: 1});
      expect(lines.at(-1)!.error).toMatch(/1 of 2 tenant backups failed: globex/);
      expect(r.stderr).toMatch(/1 of 2 tenant backups failed: globex/);
      expect(r.stderr).toContain('dforge backup --tenant <slug>');
    } finally {
      expect((await install.cli(['tenant', 'rotate-credentials', 'globex'])).code).toBe(0);
    }
  });

  it('backup --all off a terminal while another --all runs: one summary line, status locked, exit 5, nothing backed up', async () => {
    const plane = await install.plane();
    try {
      await plane.control.query("SELECT pg_advisory_lock(hashtext('dforge.backup'), hashtext($1))", [WHOLE_RUN]);
      const before = await catalog();
      const r = await install.cli(['backup', '--all']);
      expect(r.code).toBe(5);
      const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as JsonLine);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({event: 'summary', status: 'locked', tenants: 0, control: []});
      expect(await catalog()).toEqual(before);
    } finally {
      await plane.close();
    }
  });

  it('backup --all --json stays one result object', async () => {
    const r = await install.cli(['backup', '--all', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {tenants: JsonLine[]; control: Array<{id: string}>};
    expect(result.tenants.map((t) => t.tenant).sort()).toEqual(['acme', 'globex']);
    expect(result.control).toHaveLength(1);
    expect(r.stderr).not.toContain('{"event"');
  });

  it('backup --all on a terminal shows a table with sizes in units and durations, progress on stderr, and no JSON', async () => {
    const session = startPty(`${process.execPath} ${cliEntry} backup --all --dir ${install.dir.root}`);
    const {code, output} = await session.exit;
    const text = output.replaceAll('\r', '');
    expect(code, text).toBe(0);
    expect(text).toMatch(/^TENANT\s+RESULT\s+BACKUP ID\s+SIZE\s+DURATION$/m);
    for (const tenant of ['acme', 'globex']) {
      expect(text).toMatch(new RegExp(`^${tenant}\\s+ok\\s+\\S+-${tenant}-[0-9a-f]{6}\\s+\\d+(\\.\\d)? (B|KiB|MiB)\\s+\\d+(\\.\\d)? s`, 'm'));
      expect(text).toMatch(new RegExp(`^${tenant}: backed up, `, 'm'));
    }
    expect(text).toMatch(/^dforge_control \(local\)\s+ok\s/m);
    expect(text).toMatch(/^2 of 2 tenant\(s\) backed up; 1 control backup\(s\)/m);
    expect(text).not.toContain('{"event"');
  });

  it('backup list and status: sizes in units, times with their zone, "h ago" kept', async () => {
    const list = await install.cli(['backup', 'list']);
    expect(list.code, list.stderr).toBe(0);
    const acmeRow = list.stdout.split('\n').find((l) => /-acme-[0-9a-f]{6}\s/.test(l))!;
    expect(acmeRow).toMatch(SIZE);
    expect(acmeRow).toMatch(ZONED_TIME);
    expect(list.stdout).toMatch(new RegExp(`^acme\\s+${ZONED_TIME.source} \\(0 h ago\\)$`, 'm'));

    const status = await install.cli(['status']);
    expect(status.code, status.stderr).toBe(0);
    expect(status.stdout).toMatch(new RegExp(`^acme\\s+active\\s+local\\s+${ZONED_TIME.source} \\(0 h ago\\)$`, 'm'));
    const certificates = status.stdout.slice(status.stdout.indexOf('CERTIFICATE'));
    expect(certificates.split('\n')[1]).toMatch(ZONED_TIME);

    const show = await install.cli(['tenant', 'show', 'acme']);
    expect(show.stdout).toMatch(new RegExp(`^created\\s+${ZONED_TIME.source}$`, 'm'));
  });

  it('prune --dry-run lists every backup it would delete, with why, and deletes nothing; the real prune deletes exactly those', async () => {
    const policy = ['--keep-last', '1', '--keep-daily', '0', '--keep-weekly', '0', '--keep-monthly', '0'];
    const catalogBefore = await catalog();
    const filesBefore = await destinationFiles();
    // Four runs so far (one with globex failing): 4 + 3 tenant backups and 4 control backups.
    expect(catalogBefore).toHaveLength(11);

    const dry = await install.cli(['backup', 'prune', ...policy, '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    const listed = firstColumn(dry.stdout, /^ID\s+TENANT\s+CREATED\s+SIZE\s+WHY$/);
    // keep-last 1 keeps the newest of each tenant and of dforge_control (the catalog lists newest first).
    const newest = new Map<string, string>();
    for (const b of catalogBefore) if (!newest.has(`${b.kind}:${b.tenant}`)) newest.set(`${b.kind}:${b.tenant}`, b.id);
    const kept = [...newest.values()];
    expect(listed.sort()).toEqual(catalogBefore.map((b) => b.id).filter((id) => !kept.includes(id)).sort());
    for (const line of dry.stdout.split('\n').filter((l) => listed.includes(l.split(/\s+/)[0]!))) {
      expect(line).toMatch(ZONED_TIME);
      expect(line).toMatch(SIZE);
      expect(line).toMatch(/not among the newest 1 \(keep-last 1\)$/);
    }
    expect(dry.stdout).toMatch(/^[0-9TZ]+-globex-[0-9a-f]{6}\s+globex\s/m);
    expect(dry.stdout).toMatch(/\sdforge_control \(local\)\s/);
    expect(dry.stderr).toMatch(new RegExp(`would delete ${listed.length} backup\\(s\\) \\(${SIZE.source}\\), kept 3`));
    // Nothing changed: the catalog and every file are as they were.
    expect(await catalog()).toEqual(catalogBefore);
    expect(await destinationFiles()).toEqual(filesBefore);

    const real = await install.cli(['backup', 'prune', ...policy]);
    expect(real.code, real.stderr).toBe(0);
    expect(firstColumn(real.stdout, /^ID\s+TENANT\s+CREATED\s+SIZE\s+WHY$/).sort()).toEqual([...listed].sort());
    const catalogAfter = await catalog();
    expect(catalogAfter.map((b) => b.id).sort()).toEqual(catalogBefore.map((b) => b.id).filter((id) => !listed.includes(id)).sort());
    const filesAfter = await destinationFiles();
    for (const b of catalogBefore) {
      const present = filesAfter.some((f) => f.startsWith(`${b.location} `));
      expect(present, b.location).toBe(!listed.includes(b.id));
    }
  });

  it('keys status counts tenant data keys as data keys', async () => {
    const human = await install.cli(['keys', 'status']);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/^data keys: 2 tenant data keys \(2 versions\)$/m);
    expect(firstColumn(human.stdout, /^OWNER\s+ACTIVE\s+VERSIONS/).sort()).toEqual(['acme', 'globex']);
    // Per master version, the two tenant data keys count as data keys, the two passwords apart.
    expect(human.stdout).toMatch(/^VERSION\s+STATE\s+AGE \(DAYS\)\s+SEALED SECRETS\s+DATA KEYS\s+TENANT PASSWORDS\s+CONTROL BACKUPS\s+MATERIAL$/m);
    expect(human.stdout).toMatch(/^v1\s+active\s+0\s+\d+\s+2\s+2\s/m);
    const json = JSON.parse((await install.cli(['keys', 'status', '--json'])).stdout) as {
      master: {versions: Array<{version: number; protects: Record<string, number>}>};
      dataKeys: Array<{owner: string; activeVersion: number; versions: number}>;
    };
    expect(json.master.versions.find((v) => v.version === 1)!.protects).toMatchObject({dataKeys: 2, control: 2});
    expect(json.dataKeys.map((d) => d.owner).sort()).toEqual(['acme', 'globex']);
    for (const d of json.dataKeys) expect(d).toMatchObject({activeVersion: 1, versions: 1});
  });
});
