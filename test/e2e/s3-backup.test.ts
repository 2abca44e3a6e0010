
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {S3Destination} from '../../src/backup/s3-destination.js';
import {cliEntry, runCli, type CliResult} from '../helpers/cli.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {multiRegionInstall, type MultiRegionInstall} from '../helpers/multi-region.js';
import {startPty} from '../helpers/pty.js';
import {missingComponent} from '../helpers/requirements.js';
import {startS3Server, type S3TestServer} from '../helpers/s3-server.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

describe.skipIf(!available)('backups of a US tenant to an S3-compatible destination', () => {
  let s3: S3TestServer;
  let install: MultiRegionInstall;
  let backupId: string;

  /** The CLI with `input` on stdin, its --json output checked against the schemas as every run is. */
  const withStdin = (args: string[], input: string): Promise<CliResult> => runCli([...args, '--dir', install.dir.root], {input});
  const bucketObjects = (): Promise<string[]> =>
    new S3Destination('us', {name: 'probe', kind: 's3', endpoint: s3.endpoint, bucket: s3.bucket, prefix: '', credentials: {secret: 'unused'}}, {get: async () => Buffer.from(JSON.stringify(s3.credentials))}).list('');

  beforeAll(async () => {
    s3 = await startS3Server();
    install = await multiRegionInstall({usDestinations: [{name: 'us-s3', kind: 's3', endpoint: s3.endpoint, bucket: s3.bucket, prefix: 'dforge', credentials: {secret: 'backup/us-s3'}}]});
  }, 120_000);
  afterAll(async () => {
    await install?.cleanup();
    await s3?.stop();
  });

  it('refuses credentials that are missing, malformed or wrong, and seals nothing', async () => {
    const empty = await install.cli(['backup', 'credentials', 'us-s3', '--json']);
    expect(empty.code).toBe(2);
    expect(empty.stdout).toContain('no credentials on standard input');

    // On a terminal it refuses at once instead of waiting for typing the operator may not expect.
    const tty = await startPty(`${process.execPath} ${cliEntry} backup credentials us-s3 --dir ${install.dir.root}`).exit;
    expect(tty.code, tty.output).toBe(2);
    expect(tty.output).toContain('standard input is a terminal');

    const malformed = await withStdin(['backup', 'credentials', 'us-s3'], '{"accessKeyId": "S3RVER", "secretAccessKey": ""}');
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toContain('not S3 credentials');

    const local = await withStdin(['backup', 'credentials', 'eu-local'], JSON.stringify(s3.credentials));
    expect(local.code).toBe(2);
    expect(local.stderr).toContain('local directory');

    const wrong = await withStdin(['backup', 'credentials', 'us-s3'], JSON.stringify({accessKeyId: 'NOBODY', secretAccessKey: 'wrong-secret-77e1'}));
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain('InvalidAccessKeyId');
    expect(wrong.stderr).not.toContain('wrong-secret-77e1');

    // The right access key id with a wrong secret: the store checks the signature, not only the id.
    const wrongSecret = await withStdin(['backup', 'credentials', 'us-s3'], JSON.stringify({...s3.credentials, secretAccessKey: 'wrong-secret-5b02'}));
    expect(wrongSecret.code, wrongSecret.stderr).toBe(1);
    expect(wrongSecret.stderr).toContain('SignatureDoesNotMatch');
    expect(wrongSecret.stderr).toContain('refused its credentials');
    expect(wrongSecret.stderr).toContain('dforge backup credentials us-s3');
    expect(wrongSecret.stderr).not.toContain('wrong-secret-5b02');
    expect(wrongSecret.stderr).not.toContain(s3.credentials.secretAccessKey);

    // Without sealed credentials a backup to the S3 destination fails and says how to seal them.
    expect((await install.cli(['tenant', 'create', 'initech', '--region', 'us'])).code).toBe(0);
    const unsealed = await install.cli(['backup', '--tenant', 'initech']);
    expect(unsealed.code).not.toBe(0);
    expect(unsealed.stderr).toContain('dforge backup credentials us-s3');
    expect(await bucketObjects()).toEqual([]);
  });

  it('seals the credentials from stdin without printing them', async () => {
    const r = await withStdin(['backup', 'credentials', 'us-s3', '--json'], JSON.stringify(s3.credentials));
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({destination: 'us-s3', region: 'us', secret: 'backup/us-s3', verified: true});
    expect(r.stdout + r.stderr).not.toContain(s3.credentials.secretAccessKey);
  });

  it('backs up, lists, verifies deep, restores and prunes through the bucket', async () => {
    await install.asTenant('initech', (c) => c.query('CREATE TABLE crm.t (id int PRIMARY KEY, v text); INSERT INTO crm.t SELECT g, md5(g::text) FROM generate_series(1, 2000) g'));
    const b = await install.cli(['backup', '--tenant', 'initech', '--json']);
    expect(b.code, b.stderr).toBe(0);
    backupId = (JSON.parse(b.stdout) as {id: string}).id;
    const objects = await bucketObjects();
    expect(objects.some((o) => o.startsWith('dforge/initech/') && o.endsWith('.dfb'))).toBe(true);
    expect(objects.every((o) => o.startsWith('dforge/'))).toBe(true);

    const list = JSON.parse((await install.cli(['backup', 'list', '--tenant', 'initech', '--json'])).stdout) as {backups: Array<{id: string; region: string}>};
    expect(list.backups.map((x) => [x.id, x.region])).toContainEqual([backupId, 'us']);

    const v = await install.cli(['backup', 'verify', backupId, '--deep', '--json']);
    expect(v.code, v.stderr).toBe(0);

    await install.asTenant('initech', (c) => c.query('DELETE FROM crm.t WHERE id > 10'));
    const r = await install.cli(['restore', '--tenant', 'initech', '--from', backupId, '--confirm', 'initech', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(await install.asTenant('initech', async (c) => (await c.query<{n: string}>('SELECT count(*) AS n FROM crm.t')).rows[0]!.n)).toBe('2000');

    // The object's URL names it as well as its id; an unknown bucket is no destination of the install.
    const url = `s3://${s3.bucket}/dforge/initech/${backupId}.dfb`;
    const copy = await install.cli(['restore', '--tenant', 'initech', '--from', url, '--as', 'initech-copy', '--json']);
    expect(copy.code, copy.stdout).toBe(0);
    expect(await install.asTenant('initech-copy', async (c) => (await c.query<{n: string}>('SELECT count(*) AS n FROM crm.t')).rows[0]!.n)).toBe('2000');
    const stray = await install.cli(['restore', '--tenant', 'initech', '--from', `s3://elsewhere/dforge/initech/${backupId}.dfb`, '--as', 'initech-stray', '--json']);
    expect(stray.code).toBe(1);
    expect(stray.stdout).toContain('no declared backup destination holds s3://elsewhere/');

    const second = await install.cli(['backup', '--tenant', 'initech', '--json']);
    expect(second.code, second.stderr).toBe(0);
    // Prune always keeps the newest verified backup: verify the second so the first is the one to go.
    expect((await install.cli(['backup', 'verify', (JSON.parse(second.stdout) as {id: string}).id, '--deep', '--json'])).code).toBe(0);
    const prune = await install.cli(['backup', 'prune', '--tenant', 'initech', '--keep-last', '1', '--keep-daily', '0', '--keep-weekly', '0', '--keep-monthly', '0', '--keep-pre-restore-hours', '0', '--json']);
    expect(prune.code, prune.stderr).toBe(0);
    const pruned = JSON.parse(prune.stdout) as {deleted: string[]};
    expect(pruned.deleted).toContain(backupId);
    const remaining = (JSON.parse((await install.cli(['backup', 'list', '--tenant', 'initech', '--json'])).stdout) as {backups: Array<{id: string}>}).backups.map((x) => x.id);
    expect(remaining).not.toContain(backupId);
    // The bucket holds exactly the backups the catalog still lists: pruned objects are gone from it.
    const dfb = (await bucketObjects()).filter((o) => o.startsWith('dforge/initech/') && o.endsWith('.dfb'));
    expect(dfb.map((o) => o.replace(/^dforge\/initech\/|\.dfb$/g, '')).sort()).toEqual([...remaining].sort());
  }, 180_000);
});
