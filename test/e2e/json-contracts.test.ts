import {existsSync, promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {checkedContracts, commandIdOf, repoRoot, runCli, type CliResult} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * Every command that can run against a quickstart install, run once with --json: runCli validates
 * each stdout against docs/schemas (success or error envelope), so this is the contract test for
 * all of them. Commands that need Docker (install on compose, upgrade, bundle create/load/push) are
 * validated the same way by their own e2e tests, through the same helper.
 */
describe.skipIf(!available)('--json output contracts, against a quickstart install', () => {
  let install: EmbeddedInstall;
  let work: string;
  const succeeded = new Set<string>();

  /** Runs `args --json`, expects `code` (0 unless said) and returns the parsed stdout. */
  async function json(args: string[], code = 0): Promise<Record<string, unknown>> {
    const r: CliResult = await install.cli([...args, '--json']);
    expect(r.code, `dforge ${args.join(' ')}: ${r.stdout}${r.stderr}`).toBe(code);
    const id = commandIdOf(args)!;
    if (code === 0) succeeded.add(id);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  }

  beforeAll(async () => {
    install = await quickstartInstall();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-contracts-'));
  });
  afterAll(async () => {
    await install?.cleanup();
    if (work) await fs.rm(work, {recursive: true, force: true});
  });

  it('every command in the manifest has a committed schema, and so does the error envelope', async () => {
    const manifest = JSON.parse(await fs.readFile(path.join(repoRoot, 'oclif.manifest.json'), 'utf8')) as {commands: Record<string, {enableJsonFlag?: boolean}>};
    const withJson = Object.keys(manifest.commands).filter((id) => manifest.commands[id]!.enableJsonFlag !== false);
    expect(withJson.length).toBeGreaterThan(50);
    const missing = withJson.filter((id) => !existsSync(path.join(repoRoot, 'docs', 'schemas', `${id.replaceAll(':', '-')}.schema.json`)));
    expect(missing).toEqual([]);
    expect(existsSync(path.join(repoRoot, 'docs', 'schemas', 'error.schema.json'))).toBe(true);
  });

  it('tenants, keys, certs, config: each success is an object with schemaVersion', async () => {
    expect(await json(['tenant', 'create', 'initech'])).toMatchObject({schemaVersion: 1, slug: 'initech'});
    const list = await json(['tenant', 'list']);
    expect(list).toMatchObject({schemaVersion: 1, tenants: expect.arrayContaining([expect.objectContaining({slug: 'initech'})])});
    await json(['tenant', 'show', 'acme']);
    await json(['tenant', 'suspend', 'acme']);
    await json(['tenant', 'resume', 'acme']);
    await json(['tenant', 'rotate-credentials', 'acme']);
    expect(await json(['tenant', 'credentials', 'acme'])).not.toHaveProperty('password');
    expect(await json(['tenant', 'credentials', 'acme', '--uri'])).toMatchObject({schemaVersion: 1, uri: expect.stringMatching(/^postgresql:\/\//)});
    await json(['tenant', 'create', 'leaving']);
    await json(['tenant', 'delete', 'leaving', '--confirm', 'leaving']);

    await json(['keys', 'status']);
    expect(await json(['keys', 'jwks'])).toMatchObject({schemaVersion: 1, keys: expect.any(Array)});
    await json(['keys', 'rotate', '--jwt']);
    await json(['certs', 'status']);
    await json(['certs', 'export', '--format', 'pem', '--out', path.join(work, 'ca.pem')]);

    await json(['config', 'validate']);
    expect(await json(['config', 'schema'])).toMatchObject({schemaVersion: 1, schema: expect.objectContaining({type: 'object'})});
    const fresh = path.join(work, 'fresh');
    expect((await runCli(['config', 'init', '--domain', 'erp.example.com', '--target', 'compose', '--dir', fresh, '--json'])).code).toBe(0);
    succeeded.add('config:init');
  });

  it('backups, restore as a copy, db, audit, posture, status', async () => {
    const backup = await json(['backup', '--tenant', 'acme']);
    const list = await json(['backup', 'list']);
    expect(list).toMatchObject({schemaVersion: 1, backups: [expect.objectContaining({id: backup.id})]});
    await json(['backup', 'verify', String(backup.id)]);
    await json(['backup', 'verify', '--all']);
    await json(['backup', 'prune', '--dry-run']);
    await json(['backup', 'rebuild-catalog']);
    await json(['backup', 'decrypt', String(backup.id), '--out', path.join(work, 'acme.dump'), '--confirm', 'acme']);
    await json(['restore', '--tenant', 'acme', '--from', String(backup.id), '--as', 'acme-copy']);
    await json(['restore', '--tenant', 'acme', '--from', String(backup.id), '--confirm', 'acme']);
    await json(['restore', '--undo', 'acme', '--confirm', 'acme']);
    await json(['keys', 'release']);

    expect(await json(['db', 'status'])).toMatchObject({schemaVersion: 1, clusters: [expect.objectContaining({running: true})]});
    expect(await json(['db', 'start'])).toMatchObject({schemaVersion: 1, clusters: [expect.objectContaining({started: false})]});
    await json(['db', 'init']);
    // An install under /tmp has no systemd unit (PrivateTmp would hide it): the refusal is an error envelope.
    expect(await json(['db', 'unit'], 1)).toMatchObject({schemaVersion: 1, error: expect.objectContaining({data: expect.any(Object)})});

    const ops = await json(['audit', 'tail', '--limit', '5']);
    expect(ops).toMatchObject({schemaVersion: 1, entries: expect.any(Array)});
    await json(['audit', 'tail', '--tenant', 'acme']);
    await json(['audit', 'verify']);
    const exported = path.join(work, 'ops.jsonl');
    await json(['audit', 'export', '--ops', '--format', 'jsonl', '--out', exported]);
    await json(['audit', 'verify-export', exported]);

    await json(['posture', '--record']);
    await json(['posture', 'diff', '--list']);
    await json(['status']);
  });

  it('preflight, render, bundle keygen, and a failure: the error envelope always has data', async () => {
    const preflight = await install.cli(['preflight', '--target', 'embedded', '--json']);
    expect([0, 3], preflight.stderr).toContain(preflight.code);
    await json(['render', '--target', 'k8s', '--out', path.join(work, 'rendered')]);
    await json(['bundle', 'keygen', '--out', path.join(work, 'keys')]);
    const failed = await json(['tenant', 'show', 'nosuch'], 1);
    expect(failed).toEqual({schemaVersion: 1, error: expect.objectContaining({kind: 'user', data: expect.any(Object)})});
    const usage = await json(['tenant', 'delete', 'acme', '--confirm', 'wrong'], 2);
    expect(usage).toMatchObject({schemaVersion: 1, error: {kind: 'usage', data: {}}});
  });

  it('each command above printed output that validated against its schema', () => {
    const expected = [
      'tenant:create', 'tenant:list', 'tenant:show', 'tenant:suspend', 'tenant:resume', 'tenant:rotate-credentials', 'tenant:credentials', 'tenant:delete', 'keys:release',
      'keys:status', 'keys:jwks', 'keys:rotate', 'certs:status', 'certs:export', 'config:validate', 'config:schema', 'config:init',
      'backup', 'backup:list', 'backup:verify', 'backup:prune', 'backup:rebuild-catalog', 'backup:decrypt', 'restore',
      'db:status', 'db:start', 'db:init', 'audit:tail', 'audit:verify', 'audit:export', 'audit:verify-export',
      'posture', 'posture:diff', 'status', 'render', 'bundle:keygen', 'quickstart',
    ];
    // quickstart ran with --json when the install was made.
    succeeded.add('quickstart');
    expect([...succeeded].sort()).toEqual([...expected].sort());
    for (const id of expected) expect(checkedContracts.has(id), `${id} validated`).toBe(true);
    expect(checkedContracts.has('error:db:unit') && checkedContracts.has('error:tenant:show')).toBe(true);
  });
});
