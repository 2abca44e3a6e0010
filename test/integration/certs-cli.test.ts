import {execFile as execFileCb} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {openKeyServices} from '../../src/keys/context.js';
import {runCli, type CliResult} from '../helpers/cli.js';
import {tempInstall} from '../helpers/install-fixture.js';
import type {InstallDir} from '../../src/state/install-dir.js';

const execFile = promisify(execFileCb);

describe('dforge certs, through the CLI', () => {
  let dir: InstallDir & {cleanup(): Promise<void>};
  let scratch: string;
  const outputs: string[] = [];
  const cli = async (...args: string[]): Promise<CliResult> => {
    const r = await runCli([...args, '--dir', dir.root]);
    outputs.push(r.stdout, r.stderr);
    return r;
  };
  beforeAll(async () => {
    dir = await tempInstall();
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-certs-'));
    expect((await cli('keys', 'init')).code).toBe(0);
  });
  afterAll(async () => {
    await dir.cleanup();
    await fs.rm(scratch, {recursive: true, force: true});
  });

  it('generate: a CA and four leaves that openssl verifies, with the constraints visible', async () => {
    const r = await cli('certs', 'generate', '--json');
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {caFile: string; certificates: Array<{name: string; action: string}>};
    expect(result.certificates.map((c) => `${c.name}:${c.action}`)).toEqual(['ca:created', 'proxy:created', 'postgres:created', 'auth:created', 'app:created']);
    for (const leaf of ['proxy', 'postgres', 'auth', 'app']) {
      const {stdout} = await execFile('openssl', ['verify', '-CAfile', result.caFile, path.join(dir.root, 'pki', `${leaf}.crt`)]);
      expect(stdout.trim()).toBe(`${path.join(dir.root, 'pki', `${leaf}.crt`)}: OK`);
    }
    const {stdout: text} = await execFile('openssl', ['x509', '-in', result.caFile, '-noout', '-text']);
    expect(text).toContain('CA:TRUE, pathlen:0');
    expect(text).toMatch(/X509v3 Name Constraints: critical\s+Permitted:\s+DNS:dforge\.example\.test/);
    // Private keys are sealed, never on disk in the clear.
    expect((await fs.readdir(path.join(dir.root, 'pki'))).filter((f) => f.endsWith('.key'))).toEqual([]);
    expect((await fs.stat(path.join(dir.secretsDir, 'pki', 'ca.key.sealed'))).mode & 0o777).toBe(0o600);
  });

  it('generate again keeps everything; status shows the chain and names; renew re-issues on request only', async () => {
    const again = JSON.parse((await cli('certs', 'generate', '--json')).stdout) as {certificates: Array<{action: string}>};
    expect(again.certificates.every((c) => c.action === 'kept')).toBe(true);
    const status = JSON.parse((await cli('certs', 'status', '--json')).stdout) as {certificates: Array<{name: string; report: {chainValid?: boolean; keyType: string; dnsNames: string[]; daysLeft: number}}>; warnings: string[]};
    expect(status.warnings).toEqual([]);
    const postgres = status.certificates.find((c) => c.name === 'postgres')!;
    expect(postgres.report).toMatchObject({chainValid: true, keyType: 'ecdsa-p256', dnsNames: ['postgres', 'auth-db', 'localhost']});
    const renewed = JSON.parse((await cli('certs', 'renew', '--json')).stdout) as Array<{name: string; action: string}>;
    expect(renewed.every((c) => c.action === 'kept')).toBe(true);
    const forced = JSON.parse((await cli('certs', 'renew', 'proxy', '--json')).stdout) as Array<{name: string; action: string}>;
    expect(forced).toEqual([expect.objectContaining({name: 'proxy', action: 'renewed'})]);
  });

  it('import: refuses a mismatched key and a SAN that misses the domain, each with the reason; accepts a good one', async () => {
    const f = (n: string): string => path.join(scratch, n);
    const openssl = (...args: string[]): Promise<unknown> => execFile('openssl', args);
    await openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('root.key'), '-out', f('root.crt'), '-days', '30', '-subj', '/CN=Corp Root', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
    const leaf = async (name: string, san: string): Promise<void> => {
      await openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=${name}`);
      await fs.writeFile(f(`${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\n`);
      await openssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('root.crt'), '-CAkey', f('root.key'), '-CAcreateserial', '-days', '20', '-extfile', f(`${name}.ext`), '-out', f(`${name}.crt`));
    };
    await leaf('good', 'DNS:dforge.example.test');
    await leaf('other', 'DNS:elsewhere.example.org');

    const mismatch = await cli('certs', 'import', '--cert', f('good.crt'), '--key', f('other.key'), '--ca', f('root.crt'));
    expect(mismatch.code).toBe(1);
    expect(mismatch.stderr).toMatch(/the private key does not belong to the certificate/);
    const wrongSan = await cli('certs', 'import', '--cert', f('other.crt'), '--key', f('other.key'), '--ca', f('root.crt'));
    expect(wrongSan.code).toBe(1);
    expect(wrongSan.stderr).toMatch(/dforge\.example\.test/);
    const untrusted = await cli('certs', 'import', '--cert', f('good.crt'), '--key', f('good.key'));
    expect(untrusted.code).not.toBe(0);
    expect(untrusted.stderr).toMatch(/chain|trust|issuer/i);

    const before = await fs.readFile(path.join(dir.root, 'pki', 'proxy.crt'), 'utf8');
    const ok = await cli('certs', 'import', '--cert', f('good.crt'), '--key', f('good.key'), '--ca', f('root.crt'), '--json');
    expect(ok.code, ok.stderr).toBe(0);
    expect(await fs.readFile(path.join(dir.root, 'pki', 'proxy.crt'), 'utf8')).not.toBe(before);
    const renew = JSON.parse((await cli('certs', 'renew', 'proxy', '--json')).stdout) as Array<{action: string}>;
    expect(renew).toEqual([expect.objectContaining({action: 'skipped-imported'})]);
  });

  it('export: the CA as PKCS#12 (certificate only) that openssl reads', async () => {
    const out = path.join(scratch, 'ca.p12');
    expect((await cli('certs', 'export', '--format', 'p12', '--out', out)).code).toBe(0);
    const {stdout} = await execFile('openssl', ['pkcs12', '-in', out, '-nokeys', '-passin', 'pass:']);
    expect(stdout).toContain('BEGIN CERTIFICATE');
    expect(stdout).not.toContain('PRIVATE KEY');
  });

  it('no command printed a private key, a sealed secret or master key material', async () => {
    const services = await openKeyServices(dir);
    const secrets: string[] = [];
    for (const name of await services.sealed.list()) {
      for (const line of (await services.sealed.get(name)).toString('utf8').split('\n')) if (line.length > 20 && !line.startsWith('-----')) secrets.push(line);
    }
    for (const f of await fs.readdir(path.join(dir.secretsDir, 'master'))) if (f.endsWith('.key')) secrets.push((await fs.readFile(path.join(dir.secretsDir, 'master', f), 'utf8')).trim());
    expect(secrets.length).toBeGreaterThan(5);
    const all = outputs.join('\n');
    for (const s of secrets) expect(all.includes(s), 'a secret value appeared in command output').toBe(false);
  });
});
