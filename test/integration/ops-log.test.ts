import {createHash, createHmac, randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {canonicalJson} from '../../src/audit/canonical-json.js';
import {anchorFile} from '../../src/audit/ops-log-anchor.js';
import {opsLogKeySecret} from '../../src/audit/ops-log-key.js';
import {OpsLog, opsLogHead, type ChainVerification} from '../../src/audit/ops-log.js';
import {recordOps, withOpsRecord} from '../../src/audit/record.js';
import {provisionerSecret} from '../../src/control/clusters.js';
import {VerificationError} from '../../src/errors.js';
import {openKeyServices} from '../../src/keys/context.js';
import {initKeys} from '../../src/keys/init.js';
import {runCli} from '../helpers/cli.js';
import {controlPlaneOver, type ControlPlane} from '../helpers/control-plane.js';
import {crashAtEveryStep} from '../helpers/crash-points.js';
import {tempInstall} from '../helpers/install-fixture.js';
import {findPgBinaries, startPgCluster, type PgCluster} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

interface Row {
  seq: string;
  at: Date;
  actor: string;
  action: string;
  target: string;
  outcome: string;
  details: Record<string, unknown>;
  prev_hash: Buffer;
  hash: Buffer;
  key_id: string | null;
  chain_break: unknown;
}

/**
 * The ops log as evidence against whoever can write to dforge_control but cannot read the install
 * directory's secrets: the provisioner role (whose password is the attacker's) or a DBA. Every
 * attack below is SQL on the provisioner's own session to a real control database; the verdict is
 * `dforge audit verify` run as an operator would, against an install whose dforge.yaml points at
 * that database.
 */
describe.skipIf(!available)('the keyed ops log against the provisioner', () => {
  let cluster: PgCluster;
  let plane: ControlPlane;
  let install: Awaited<ReturnType<typeof tempInstall>>;
  const cli = (...args: string[]): ReturnType<typeof runCli> => runCli([...args, '--dir', install.root]);
  /** The attacker: the provisioner's session on dforge_control. */
  const sql = async <T = Row>(text: string, params: unknown[] = []): Promise<T[]> => (await plane.control.query(text, params)).rows as T[];

  beforeAll(async () => {
    cluster = await startPgCluster('opslog');
    plane = await controlPlaneOver({'eu-1': {cluster, region: 'eu'}});
    install = await tempInstall();
    await initKeys(install, {command: 'test'});
    await fs.writeFile(install.configFile, `version: 1\ndomain: dforge.example.test\ntarget: embedded\nprimaryRegion: eu\nregions:\n  eu:\n    clusters:\n      - name: eu-1\n        kind: embedded\n        port: ${cluster.port}\n`);
    await fs.mkdir(path.join(install.root, 'pki'), {recursive: true});
    await fs.writeFile(path.join(install.root, 'pki', 'ca.crt'), cluster.ca.caCertPem);
    await (await openKeyServices(install)).sealed.put(provisionerSecret('eu-1'), plane.provisionerPassword);
  });
  afterAll(async () => {
    await plane?.close();
    await install?.cleanup();
    await cluster?.stop();
  });

  /** A fresh log of `n` entries written by dforge (and a fresh anchor). */
  const freshLog = async (n: number): Promise<void> => {
    await sql('TRUNCATE ops_log');
    await fs.rm(anchorFile(install), {force: true});
    for (let i = 1; i <= n; i++) await recordOps(install, {action: 'backup.run', target: `tenant:t${i}`, outcome: 'ok', details: {i, bytes: 1000 * i}});
  };
  const verifyJson = async (): Promise<ChainVerification> => {
    const r = await cli('audit', 'verify', '--json');
    expect(r.code, r.stdout + r.stderr).toBe(0);
    return JSON.parse(r.stdout) as ChainVerification;
  };
  /** `audit verify` must exit 6 and name the entry, in the message and in --json. */
  const expectTamper = async (entry: number, reason: RegExp): Promise<string> => {
    const human = await cli('audit', 'verify');
    expect(human.code, human.stdout + human.stderr).toBe(6);
    expect(human.stderr).toMatch(new RegExp(`the ops log failed verification at entry ${entry}\\b`));
    expect(human.stderr).toMatch(reason);
    expect(human.stdout).not.toMatch(/verified/);
    const json = await cli('audit', 'verify', '--json');
    expect(json.code).toBe(6);
    const {error} = JSON.parse(json.stdout) as {error: {kind: string; data: ChainVerification; nextSteps: string[]}};
    expect(error).toMatchObject({kind: 'verification', data: {intact: false, brokenAt: entry}});
    expect(error.nextSteps.length).toBeGreaterThan(0);
    return human.stderr;
  };
  /** What an attacker who read docs/formats.md but holds no ops-log key can do: recompute the chain. */
  const recompute = async (edit: (row: Row) => void, mac: (prev: Buffer, record: Record<string, unknown>, row: Row) => Buffer, keyId: (row: Row) => string | null): Promise<void> => {
    const rows = await sql('SELECT * FROM ops_log ORDER BY seq');
    let prev: Buffer = Buffer.alloc(32);
    for (const row of rows) {
      edit(row);
      const record = {seq: Number(row.seq), at: row.at.toISOString(), actor: row.actor, action: row.action, target: row.target, outcome: row.outcome, details: row.details};
      const hash = mac(prev, record, row);
      await sql('UPDATE ops_log SET outcome = $2, details = $3, target = $7, prev_hash = $4, hash = $5, key_id = $6 WHERE seq = $1', [row.seq, row.outcome, JSON.stringify(row.details), prev, hash, keyId(row), row.target]);
      prev = hash;
    }
  };

  it('writes every entry under ops-log key k1 and anchors the head, MAC-tagged, outside the database', async () => {
    await freshLog(4);
    expect(await verifyJson()).toMatchObject({intact: true, entries: 4, keyed: 4, legacy: 0, unanchored: 0, anchor: {seq: 4}, head: {seq: 4, keyId: 'k1'}});
    expect((await sql<{key_id: string}>('SELECT DISTINCT key_id FROM ops_log')).map((r) => r.key_id)).toEqual(['k1']);
    expect((await fs.stat(anchorFile(install))).mode & 0o777).toBe(0o600);
    // The key is a sealed secret: no plaintext key material anywhere in the install directory.
    expect(await (await openKeyServices(install)).sealed.has(opsLogKeySecret('k1'))).toBe(true);
  });

  it('detects the last entry deleted, the last three deleted, and keeps detecting it after later appends', async () => {
    await freshLog(4);
    await sql('DELETE FROM ops_log WHERE seq = (SELECT max(seq) FROM ops_log)');
    await expectTamper(4, /the log ends at entry 3, but the anchor records entry 4 .*: entry 4 was deleted/);

    await freshLog(4);
    await sql('DELETE FROM ops_log WHERE seq > 1');
    await expectTamper(2, /entries 2 to 4 were deleted/);
    // dforge keeps working, but the next entry carries the cut in its MAC'd record, so a later append
    // (which moves the anchor) does not launder the deletion.
    await recordOps(install, {action: 'backup.run', target: 'tenant:t9', outcome: 'ok'});
    const stderr = await expectTamper(2, /entry 2 records that the log had been tampered with before it was written \(the anchor named entry 4, the log ended at entry 1/);
    expect(stderr).toMatch(/backup\.run tenant:t9/);
  });

  it('detects an edited entry (outcome, details) and names it', async () => {
    await freshLog(4);
    await sql("UPDATE ops_log SET outcome = 'failed' WHERE seq = 2");
    const stderr = await expectTamper(2, /entry 2 was altered after it was written/);
    expect(stderr).toMatch(/as stored now: backup\.run tenant:t2 by \S+ at /);
    expect(stderr).toMatch(/dforge_control\.ops_log without the ops-log key/);

    await freshLog(4);
    await sql(`UPDATE ops_log SET details = details || '{"bytes": 1}' WHERE seq = 3`);
    await expectTamper(3, /entry 3 was altered after it was written/);
  });

  it('detects two entries reordered', async () => {
    await freshLog(4);
    await sql('UPDATE ops_log SET seq = -2 WHERE seq = 2');
    await sql('UPDATE ops_log SET seq = 2 WHERE seq = 3');
    await sql('UPDATE ops_log SET seq = 3 WHERE seq = -2');
    await expectTamper(2, /entry 2 does not link to entry 1/);
  });

  it('detects the whole chain recomputed without the key: as plain SHA-256, and as HMAC under a guessed key', async () => {
    await freshLog(4);
    await recompute(
      (row) => {
        if (row.seq === '2') row.outcome = 'failed';
      },
      (prev, record) => createHash('sha256').update(prev).update(canonicalJson(record)).digest(),
      () => null,
    );
    await expectTamper(4, /entry 4 is not the entry the anchor records .*: the log was rewritten/);

    await freshLog(4);
    const guessed = randomBytes(32);
    await recompute(
      (row) => {
        if (row.seq === '2') row.outcome = 'failed';
      },
      (prev, record, row) => createHmac('sha256', guessed).update('dforge ops-log entry v1\0').update(prev).update(canonicalJson({...record, keyId: 'k1', chainBreak: row.chain_break})).digest(),
      () => 'k1',
    );
    await expectTamper(1, /entry 1 was altered after it was written/);
  });

  it('still verifies after keys rotate --master, which re-wraps the ops-log key and is itself recorded', async () => {
    await freshLog(3);
    const keys = await openKeyServices(install);
    const before = await keys.sealed.versionOf(opsLogKeySecret('k1'));
    const rotate = await cli('keys', 'rotate', '--master');
    expect(rotate.code, rotate.stderr).toBe(0);
    expect(await (await openKeyServices(install)).sealed.versionOf(opsLogKeySecret('k1'))).toBe(before + 1);
    expect(await verifyJson()).toMatchObject({intact: true, entries: 4, keyed: 4, anchor: {seq: 4}});
    expect((await sql<{action: string}>('SELECT action FROM ops_log WHERE seq = 4'))[0]).toEqual({action: 'keys.rotate-master'});
  });

  it('upgrades an unkeyed log: not verified until keyed, then the first keyed entry seals the legacy prefix', async () => {
    await sql('TRUNCATE ops_log');
    await fs.rm(anchorFile(install), {force: true});
    // What an older dforge wrote: plain SHA-256 links, no key id.
    let prev: Buffer = Buffer.alloc(32);
    for (let seq = 1; seq <= 3; seq++) {
      const record = {seq, at: new Date(Date.UTC(2026, 0, seq)).toISOString(), actor: 'ops@old', action: 'tenant.create', target: `tenant:old${seq}`, outcome: 'ok', details: {}};
      const hash = createHash('sha256').update(prev).update(canonicalJson(record)).digest();
      await sql('INSERT INTO ops_log (seq, at, actor, action, target, outcome, details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)', [seq, record.at, record.actor, record.action, record.target, record.outcome, '{}', prev, hash]);
      prev = hash;
    }
    await expectTamper(1, /none of the 3 entries is keyed/);

    await recordOps(install, {action: 'backup.run', target: 'tenant:t1', outcome: 'ok'});
    const human = await cli('audit', 'verify');
    expect(human.code, human.stderr).toBe(0);
    expect(human.stderr).toMatch(/entries 1 to 3 were written before the ops log was keyed: entry 4 seals them/);
    expect(await verifyJson()).toMatchObject({intact: true, entries: 4, legacy: 3, keyed: 1});

    // Sealed: rewriting a legacy entry, even with its SHA-256 chain recomputed, breaks the keyed link.
    await recompute(
      (row) => {
        if (row.seq === '2') row.target = 'tenant:someone-else';
      },
      (p, record, row) => (row.key_id === null ? createHash('sha256').update(p).update(canonicalJson(record)).digest() : row.hash),
      (row) => row.key_id,
    );
    await expectTamper(4, /entry 4 was altered after it was written/);
  });

  it('records a run that changed something, and a failure, but not a re-run that changed nothing', async () => {
    await freshLog(1);
    const count = async (): Promise<number> => Number((await sql<{n: string}>('SELECT count(*) AS n FROM ops_log'))[0]!.n);
    await withOpsRecord(install, {action: 'certs.renew', target: 'pki', changed: (r: string[]) => r.length > 0, details: (r) => ({certificates: r})}, async () => [] as string[]);
    expect(await count()).toBe(1);
    await withOpsRecord(install, {action: 'certs.renew', target: 'pki', changed: (r: string[]) => r.length > 0, details: (r) => ({certificates: r})}, async () => ['proxy renewed']);
    await expect(withOpsRecord(install, {action: 'certs.renew', target: 'pki', changed: () => false}, async () => Promise.reject(new Error('CA key unreadable')))).rejects.toThrow('CA key unreadable');
    const rows = await sql<{action: string; outcome: string; details: unknown}>('SELECT action, outcome, details FROM ops_log WHERE seq > 1 ORDER BY seq');
    expect(rows).toEqual([
      {action: 'certs.renew', outcome: 'ok', details: {certificates: ['proxy renewed']}},
      {action: 'certs.renew', outcome: 'failed', details: {error: 'CA key unreadable'}},
    ]);
    expect(await verifyJson()).toMatchObject({intact: true, entries: 3});
  });

  it('re-anchors after a control restore only onto the log the backup recorded, and says so in the log', async () => {
    await freshLog(3);
    const backupHead = (await opsLogHead(plane.control))!;
    expect(backupHead).toMatchObject({seq: 3, keyId: 'k1'});
    for (let i = 0; i < 2; i++) await recordOps(install, {action: 'backup.run', target: 'tenant:later', outcome: 'ok'});
    // dforge_control comes back as it was at the backup: entries 4 and 5 are gone.
    await sql('DELETE FROM ops_log WHERE seq > 3');
    const stderr = await expectTamper(4, /entries 4 to 5 were deleted/);
    expect(stderr).toMatch(/restore --control re-anchors/);

    const log = new OpsLog(await openKeyServices(install));
    const err = await log.reanchorAfterRestore(plane.control, {backupId: 'b-other', backupHead: {...backupHead, mac: '00'.repeat(32)}}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VerificationError);
    expect((err as Error).message).toMatch(/does not contain entry 3 as backup b-other recorded it/);
    expect(Number((await sql<{n: string}>('SELECT count(*) AS n FROM ops_log'))[0]!.n)).toBe(3);

    const entry = await log.reanchorAfterRestore(plane.control, {backupId: 'b-1', backupHead});
    expect(entry).toMatchObject({seq: 4, action: 'restore.control', chainBreak: {kind: 'restore', anchored: {seq: 5}, found: {seq: 3}}});
    expect(await verifyJson()).toMatchObject({intact: true, entries: 4, anchor: {seq: 4}, restores: [{seq: 4, previousAnchor: 5}]});
  });

  it('a recorded command killed at any step leaves a log that verifies, and the rerun anchors it', async () => {
    await freshLog(2);
    const {killedAt} = await crashAtEveryStep({
      name: 'keys rotate --jwt (recorded)',
      prepare: async () => undefined,
      run: (env) => runCli(['keys', 'rotate', '--jwt', '--dir', install.root], {env}),
      recover: async (step) => {
        const r = await cli('audit', 'verify', '--json');
        expect(r.code, `after a kill at ${step}: ${r.stdout}${r.stderr}`).toBe(0);
        const rerun = await cli('keys', 'rotate', '--jwt');
        expect(rerun.code, rerun.stderr).toBe(0);
        expect(await verifyJson()).toMatchObject({intact: true, unanchored: 0});
      },
    });
    expect(killedAt).toEqual(expect.arrayContaining(['ops-log.entry-committed', 'ops-log.head-anchored']));
  });
});
