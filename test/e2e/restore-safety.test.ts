import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {cliEntry} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {startPty} from '../helpers/pty.js';
import {missingComponent} from '../helpers/requirements.js';

/** Whether a terminal showed `text`: colours dropped, and whitespace too, since the prompt wraps long lines mid-word. */
const showed = (output: string, text: string): boolean => output.replace(/\u001B\[[0-9;?]*[A-Za-z]/g, '').replace(/\s+/g, '').includes(text.replace(/\s+/g, ''));

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * An operator who restores over the wrong thing, or without meaning to: a restore in place and an
 * undo replace a live database, so they need the slug repeated (--confirm, or typed on a terminal);
 * each refusal leaves every database as it was and says what to run instead.
 */
describe.skipIf(!available)('restores replace a live database only when the operator confirms it', () => {
  let install: EmbeddedInstall;
  let scratch: string;
  let backupId: string;
  let backupFile: string;

  const databases = (): Promise<string[]> => install.databases();
  const kept = async (slug: string): Promise<string[]> => (await databases()).filter((d) => d.startsWith(`tenant_${slug}__pre_restore_`));
  const markers = (slug: string): Promise<string[]> => install.asTenant(slug, async (c) => (await c.query<{v: string}>('SELECT v FROM crm.marker ORDER BY v')).rows.map((r) => r.v));
  /** A refused run: its exit code, and every database and acme's rows exactly as before. */
  const expectRefused = async (args: string[], code: number): Promise<string> => {
    const before = await databases();
    const rowsBefore = await markers('acme');
    const r = await install.cli(args);
    expect(r.code, r.stderr).toBe(code);
    expect(r.stderr).toMatch(/What to do:/);
    expect(await databases()).toEqual(before);
    expect(before.some((d) => d.endsWith('__restore'))).toBe(false);
    expect(await markers('acme')).toEqual(rowsBefore);
    return r.stderr;
  };

  beforeAll(async () => {
    install = await quickstartInstall();
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-restore-safety-'));
    await install.asTenant('acme', (c) => c.query("CREATE TABLE crm.marker (v text PRIMARY KEY); INSERT INTO crm.marker VALUES ('in-backup')"));
    const r = await install.cli(['backup', '--tenant', 'acme', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const record = JSON.parse(r.stdout) as {id: string; location: string};
    backupId = record.id;
    backupFile = path.join(install.dir.root, 'backups', 'local', record.location);
    // Written after the backup: a restore loses it, an undo brings it back.
    await install.asTenant('acme', (c) => c.query("INSERT INTO crm.marker VALUES ('after-backup')"));
  }, 300_000);
  afterAll(async () => {
    await install?.cleanup();
    await fs.rm(scratch, {recursive: true, force: true});
  });

  it('off a terminal, a restore in place without --confirm is a usage error naming the flag; nothing is created or changed', async () => {
    const stderr = await expectRefused(['restore', '--tenant', 'acme', '--from', backupId], 2);
    expect(stderr).toContain('--confirm acme');
    expect(await expectRefused(['restore', '--tenant', 'acme', '--from', backupId, '--drop-previous'], 2)).toContain('--confirm acme');
    expect(await kept('acme')).toEqual([]);
    expect(await markers('acme')).toEqual(['after-backup', 'in-backup']);
  });

  it('a wrong --confirm is a usage error (2) too, with the exact command to run', async () => {
    const stderr = await expectRefused(['restore', '--tenant', 'acme', '--from', backupId, '--confirm', 'acm'], 2);
    expect(stderr).toMatch(/--confirm must be exactly acme/);
    expect(stderr).toContain(`dforge restore --tenant acme --from ${backupId} --confirm acme`);
    await expectRefused(['restore', '--tenant', 'acme', '--from', backupId, '--drop-previous', '--confirm', 'initech'], 2);
  });

  it('a control restore replaces dforge_control, so it needs --confirm dforge_control', async () => {
    expect(await expectRefused(['restore', '--control'], 2)).toContain('--confirm dforge_control');
    expect(await expectRefused(['restore', '--control', '--confirm', 'control'], 2)).toMatch(/--confirm must be exactly dforge_control/);
  });

  it('--undo with nothing kept refuses (1) and names the databases the tenant has', async () => {
    const stderr = await expectRefused(['restore', '--undo', 'acme', '--confirm', 'acme'], 1);
    expect(stderr).toMatch(/tenant acme has no earlier database to swap back in/);
    expect(stderr).toContain('tenant_acme');
    expect(stderr).toContain('dforge restore --tenant acme --from <id> --confirm acme');
  });

  it('on a terminal, typing another answer refuses; typing the slug restores and says how to undo', async () => {
    const command = `${process.execPath} ${cliEntry} restore --tenant acme --from ${backupId} --dir ${install.dir.root}`;
    const before = await databases();
    const wrong = startPty(command);
    // Long questions wrap on the terminal: wait for a word, read the text unwrapped.
    await wrong.answer('confirm', 'initech\r');
    const refused = await wrong.exit;
    expect(refused.code, refused.output).toBe(2);
    expect(showed(refused.output, 'its database tenant_acme is replaced and its open sessions are ended; the current one is kept as tenant_acme__pre_restore_'), refused.output).toBe(true);
    expect(await databases()).toEqual(before);
    expect(await markers('acme')).toEqual(['after-backup', 'in-backup']);

    const right = startPty(command);
    await right.answer('confirm', 'acme\r');
    const done = await right.exit;
    expect(done.code, done.output).toBe(0);
    expect(showed(done.output, '(undo: dforge restore --undo acme --confirm acme)'), done.output).toBe(true);
    expect(await markers('acme')).toEqual(['in-backup']);
    expect(await kept('acme')).toHaveLength(1);
  }, 120_000);

  it('--undo swaps the kept database back (and again swaps the restore back); it needs --confirm and is in the ops log', async () => {
    const [restoredOver] = await kept('acme');
    expect(await expectRefused(['restore', '--undo', 'acme'], 2)).toContain('--confirm acme');
    await expectRefused(['restore', '--undo', 'acme', '--confirm', 'ACME'], 2);

    const undo = await install.cli(['restore', '--undo', 'acme', '--confirm', 'acme', '--json']);
    expect(undo.code, undo.stderr).toBe(0);
    const result = JSON.parse(undo.stdout) as {database: string; restoredDatabase: string; previousDatabase: string};
    expect(result).toMatchObject({tenant: 'acme', database: 'tenant_acme', restoredDatabase: restoredOver});
    expect(await markers('acme')).toEqual(['after-backup', 'in-backup']);
    // The database the undo replaced is kept in place of the one that came back.
    expect(await kept('acme')).toEqual([result.previousDatabase]);

    const redo = await install.cli(['restore', '--undo', 'acme', '--confirm', 'acme', '--json']);
    expect(redo.code, redo.stderr).toBe(0);
    expect(JSON.parse(redo.stdout)).toMatchObject({restoredDatabase: result.previousDatabase});
    expect(await markers('acme')).toEqual(['in-backup']);

    const plane = await install.plane();
    try {
      const entries = (await plane.control.query<{action: string; target: string; outcome: string}>("SELECT action, target, outcome FROM ops_log WHERE action = 'restore.undo' ORDER BY seq")).rows;
      expect(entries).toEqual([
        {action: 'restore.undo', target: 'tenant:acme', outcome: 'ok'},
        {action: 'restore.undo', target: 'tenant:acme', outcome: 'ok'},
      ]);
    } finally {
      await plane.close();
    }
  });

  it('after --drop-previous nothing is kept, and --undo says so', async () => {
    for (const name of await kept('acme')) expect(name).toMatch(/^tenant_acme__pre_restore_/);
    const prune = await install.cli(['backup', 'prune', '--tenant', 'acme', '--keep-last', '100', '--keep-pre-restore-hours', '0', '--json']);
    expect(prune.code, prune.stderr).toBe(0);
    const r = await install.cli(['restore', '--tenant', 'acme', '--from', backupId, '--drop-previous', '--confirm', 'acme']);
    expect(r.code, r.stderr).toBe(0);
    expect(await kept('acme')).toEqual([]);
    expect(await expectRefused(['restore', '--undo', 'acme', '--confirm', 'acme'], 1)).toMatch(/--drop-previous/);
  });

  it('a backup of another tenant is a refusal (1), not tampering, and changes nothing', async () => {
    expect((await install.cli(['tenant', 'create', 'initech'])).code).toBe(0);
    const stderr = await expectRefused(['restore', '--tenant', 'initech', '--from', backupId, '--confirm', 'initech'], 1);
    expect(stderr).toMatch(/is a backup of tenant acme, not initech; nothing was changed/);
    expect(stderr).toContain(`dforge restore --tenant acme --from ${backupId} --confirm acme`);
    expect((await databases()).filter((d) => d.startsWith('tenant_initech'))).toEqual(['tenant_initech']);
  });

  it('restoring a deleted tenant points at --as with the exact command, which works', async () => {
    expect((await install.cli(['tenant', 'create', 'leaving'])).code).toBe(0);
    await install.asTenant('leaving', (c) => c.query("CREATE TABLE crm.marker (v text PRIMARY KEY); INSERT INTO crm.marker VALUES ('leaving')"));
    const deleted = await install.cli(['tenant', 'delete', 'leaving', '--confirm', 'leaving', '--final-backup']);
    expect(deleted.code, deleted.stderr).toBe(0);
    const id = deleted.stderr.match(/final backup of leaving: (\S+)/)![1]!;

    const stderr = await expectRefused(['restore', '--tenant', 'leaving', '--from', id, '--confirm', 'leaving'], 1);
    expect(stderr).toMatch(/no tenant leaving: it was deleted/);
    const hint = `dforge restore --tenant leaving --from ${id} --as leaving`;
    expect(stderr).toContain(hint);
    // Off a terminal too: the refusal comes before any question.
    expect(await expectRefused(['restore', '--tenant', 'leaving', '--from', id], 1)).toContain(hint);

    const back = await install.cli(hint.split(' ').slice(1));
    expect(back.code, back.stderr).toBe(0);
    expect(await markers('leaving')).toEqual(['leaving']);
  }, 120_000);

  it('a tampered backup still exits 6 with --confirm, before any database is created', async () => {
    const bytes = Buffer.from(await fs.readFile(backupFile));
    bytes[bytes.length - 100]! ^= 0x10;
    const file = path.join(scratch, 'tampered.dfb');
    await fs.writeFile(file, bytes);
    await expectRefused(['restore', '--tenant', 'acme', '--from', file, '--confirm', 'acme'], 6);
  });
});
