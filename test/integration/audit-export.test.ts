import {execFileSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {EXPORT_SIGNING_KEY_SECRET, exportPublicKeyFile, type ExportManifest} from '../../src/audit/export.js';
import {runCli} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * `dforge audit export` and `verify-export` on a real quickstart install, against whoever holds
 * the file afterwards: a flipped byte in the export or in its manifest, a manifest moved onto
 * another export, a spreadsheet formula planted in tenant data.
 */
describe.skipIf(!available)('audit export and verify-export', () => {
  let install: EmbeddedInstall;
  let out: string;
  let tenantPassword: string;

  beforeAll(async () => {
    install = await quickstartInstall();
    out = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-export-'));
    const plane = await install.plane();
    try {
      tenantPassword = await install.tenantPassword(plane, 'acme');
    } finally {
      await plane.close();
    }
    await install.asTenant('acme', async (c) => {
      await c.query('CREATE TABLE crm.leads (id int PRIMARY KEY, name text, stage text, amount numeric)');
      for (let i = 1; i <= 2500; i++) {
        await c.query('BEGIN');
        await c.query("SELECT set_config('dforge.actor', $1, true)", [i === 7 ? '=HYPERLINK("http://evil.example","x")' : `user${i % 5}@acme.io`]);
        await c.query('INSERT INTO crm.leads VALUES ($1, $2, $3, 12345678901234567890.000001)', [i, i === 9 ? '=cmd|\' /C calc\'!A0' : `lead, "${i}"`, '+stage']);
        await c.query('COMMIT');
      }
    });
  }, 300_000);
  afterAll(async () => {
    await install?.cleanup();
    if (out) await fs.rm(out, {recursive: true, force: true});
  });

  const exportTo = async (name: string, ...source: string[]): Promise<{file: string; manifest: ExportManifest}> => {
    const file = path.join(out, name);
    const format = name.endsWith('.csv') ? 'csv' : 'jsonl';
    const r = await install.cli(['audit', 'export', ...source, '--format', format, '--out', file, '--json']);
    expect(r.code, r.stderr).toBe(0);
    return {file, manifest: (JSON.parse(r.stdout) as {manifest: ExportManifest}).manifest};
  };
  const verifyCode = async (file: string, ...extra: string[]): Promise<{code: number | null; reason?: string}> => {
    const r = await install.cli(['audit', 'verify-export', file, ...extra, '--json']);
    return {code: r.code, reason: r.code === 0 ? undefined : (JSON.parse(r.stdout) as {error: {data?: {reason?: string}}}).error.data?.reason};
  };
  const flipByte = async (file: string, at: number): Promise<void> => {
    const bytes = await fs.readFile(file);
    bytes[at] = bytes[at]! ^ 0x01;
    await fs.writeFile(file, bytes);
  };

  it('exports a tenant change log as JSON lines, every row exactly, 0600, signed; verify-export passes', async () => {
    const {file, manifest} = await exportTo('acme.jsonl', '--tenant', 'acme');
    expect(manifest).toMatchObject({kind: 'dforge-audit-export', version: 1, format: 'jsonl', source: 'tenant:acme', rows: 2500, range: {since: null, until: null}});
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    const lines = (await fs.readFile(file, 'utf8')).trimEnd().split('\n');
    expect(lines).toHaveLength(2500);
    const first = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(first).toMatchObject({actor: 'user1@acme.io', db_role: 'tenant_acme', schema: 'crm', table: 'leads', operation: 'INSERT', before: null, after: {id: 1, name: 'lead, "1"', stage: '+stage'}});
    expect(first.id).toBe(manifest.range.firstId);
    // numeric and microseconds survive as PostgreSQL printed them.
    expect(lines[0]).toContain('"amount": 12345678901234567890.000001');
    expect(first.at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    expect(await verifyCode(file)).toEqual({code: 0});
  });

  it('exports as CSV with formula cells neutralised and RFC 4180 quoting; verify-export passes', async () => {
    const {file, manifest} = await exportTo('acme.csv', '--tenant', 'acme');
    expect(manifest.rows).toBe(2500);
    const text = await fs.readFile(file, 'utf8');
    const rows = text.split('\r\n');
    expect(rows[0]).toBe('id,at,actor,db_role,txid,schema,table,operation,before,after');
    // The actor cell (=HYPERLINK…) of row 7 starts with an apostrophe, quoted because it holds quotes and a comma.
    expect(text).toContain(`,"'=HYPERLINK(""http://evil.example"",""x"")",tenant_acme,`);
    // No cell starts with a formula character: every cell is checked after RFC 4180 parsing.
    for (const cell of parseCsv(text).flat()) expect(cell).not.toMatch(/^[=+\-@\t\r]/);
    expect(await verifyCode(file)).toEqual({code: 0});
  });

  it('exports the ops log for a time range; the export itself is recorded in the ops log without data', async () => {
    const {file, manifest} = await exportTo('ops.jsonl', '--ops', '--since', '2000-01-01T00:00:00Z');
    expect(manifest).toMatchObject({source: 'ops', range: {since: '2000-01-01T00:00:00.000Z', until: null, firstId: 1}});
    expect(manifest.rows).toBeGreaterThan(0);
    const entries = (await fs.readFile(file, 'utf8')).trimEnd().split('\n').map((l) => JSON.parse(l) as {action: string; hash: string});
    expect(entries.map((e) => e.action)).toContain('tenant.create');
    expect(entries.every((e) => /^[0-9a-f]{64}$/.test(e.hash))).toBe(true);
    const csv = await exportTo('ops.csv', '--ops');
    expect(await verifyCode(file)).toEqual({code: 0});
    expect(await verifyCode(csv.file)).toEqual({code: 0});
    const tail = (JSON.parse((await install.cli(['audit', 'tail', '--limit', '5', '--json'])).stdout) as {entries: Array<{action: string; target: string; details: Record<string, unknown>}>}).entries;
    const recorded = tail.filter((e) => e.action === 'audit.export');
    expect(recorded.map((e) => e.target)).toEqual(expect.arrayContaining(['tenant:acme', 'ops']));
    const details = recorded.find((e) => e.target === 'tenant:acme')!.details;
    expect(Object.keys(details).sort()).toEqual(['file', 'format', 'range', 'rows', 'sha256']);
    expect(JSON.stringify(recorded)).not.toContain('user1@acme.io');
  });

  it('a flipped byte in the export, or in the manifest, or a manifest moved onto another export, exits 6', async () => {
    const {file} = await exportTo('tamper.jsonl', '--tenant', 'acme');
    const manifestFile = `${file}.manifest.json`;
    const pristine = await fs.readFile(file);
    const manifest = await fs.readFile(manifestFile);
    await flipByte(file, 1234);
    expect(await verifyCode(file)).toEqual({code: 6, reason: 'sha256'});
    await fs.writeFile(file, pristine);
    // One bit of the hash the manifest records: the signature no longer verifies.
    await flipByte(manifestFile, manifest.indexOf('"sha256": "') + 12);
    expect(await verifyCode(file)).toEqual({code: 6, reason: 'signature'});
    await fs.writeFile(manifestFile, manifest.toString().replace('"rows": 2500', '"rows": 2499'));
    expect(await verifyCode(file)).toEqual({code: 6, reason: 'signature'});
    // Another export's manifest, valid and signed, beside this file.
    await fs.copyFile(path.join(out, 'ops.jsonl.manifest.json'), manifestFile);
    expect(await verifyCode(file)).toEqual({code: 6, reason: 'sha256'});
    await fs.writeFile(manifestFile, manifest);
    expect(await verifyCode(file)).toEqual({code: 0});
  });

  it('an auditor without the install verifies with the public key alone, and with openssl', async () => {
    const {file, manifest} = await exportTo('auditor.csv', '--tenant', 'acme', '--since', '2000-01-01T00:00:00Z');
    const pub = exportPublicKeyFile(install.dir);
    expect((await fs.stat(pub)).mode & 0o777).toBe(0o644);
    const elsewhere = path.join(out, 'auditor-copy');
    await fs.mkdir(elsewhere);
    await fs.copyFile(file, path.join(elsewhere, 'auditor.csv'));
    await fs.copyFile(`${file}.manifest.json`, path.join(elsewhere, 'auditor.csv.manifest.json'));
    await fs.copyFile(pub, path.join(elsewhere, 'audit-export.pub'));
    const auditor = await runCli(['audit', 'verify-export', path.join(elsewhere, 'auditor.csv'), '--public-key', path.join(elsewhere, 'audit-export.pub'), '--dir', path.join(out, 'no-install'), '--json']);
    expect(auditor.code, auditor.stdout + auditor.stderr).toBe(0);
    expect(JSON.parse(auditor.stdout)).toMatchObject({verified: true, manifest: {rows: 2500, source: 'tenant:acme'}});
    // Some other Ed25519 key: the manifest was not signed by it.
    const foreign = path.join(elsewhere, 'foreign.pub');
    execFileSync('sh', ['-c', `openssl genpkey -algorithm ed25519 | openssl pkey -pubout -out ${foreign}`]);
    expect(await verifyCode(path.join(elsewhere, 'auditor.csv'), '--public-key', foreign)).toEqual({code: 6, reason: 'key'});

    // The documented openssl recipe: the signed bytes are the manifest without its signature, as jq -cSj prints it.
    const m = `${file}.manifest.json`;
    execFileSync('sh', ['-c', `jq -cSj 'del(.signature)' ${m} > ${elsewhere}/signed && jq -r .signature.value ${m} | base64 -d > ${elsewhere}/sig`]);
    const verified = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', `${elsewhere}/signed`, '-sigfile', `${elsewhere}/sig`]).toString();
    expect(verified).toContain('Signature Verified Successfully');
    expect(execFileSync('sha256sum', [file]).toString().split(' ')[0]).toBe(manifest.file.sha256);
    expect(execFileSync('sh', ['-c', `openssl pkey -pubin -in ${pub} -outform DER | sha256sum`]).toString().split(' ')[0]).toBe(manifest.signature.publicKeySha256);
  });

  it('no secret in an export or its manifest', async () => {
    const secrets = [tenantPassword];
    const plane = await install.plane();
    try {
      const key = await plane.keys.sealed.get(EXPORT_SIGNING_KEY_SECRET);
      secrets.push(key.toString('utf8').split('\n')[1]!);
    } finally {
      await plane.close();
    }
    for (const name of await fs.readdir(out, {recursive: true})) {
      const p = path.join(out, name);
      if (!(await fs.stat(p)).isFile()) continue;
      const text = await fs.readFile(p, 'utf8');
      for (const s of secrets) expect(text, `${name} holds a secret`).not.toContain(s);
      expect(text).not.toMatch(/PRIVATE KEY|password/i);
    }
    for (const o of install.outputs) for (const s of secrets) expect(o).not.toContain(s);
  });
});

/** An RFC 4180 reader for the test: CRLF records, quoted cells with doubled quotes. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') {
      row.push(cell);
      cell = '';
    } else if (ch === '\r' && text[i + 1] === '\n') {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
      i++;
    } else cell += ch;
  }
  return rows;
}
