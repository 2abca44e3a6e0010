import {execFile as execFileCb} from 'node:child_process';
import {X509Certificate} from 'node:crypto';
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

type RenewJson = {caReplaced?: {reason: string; previousFingerprint: string; fingerprint: string}; certificates: Array<{name: string; action: string; reason?: string; dnsNames: string[]}>};

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
    expect(postgres.report).toMatchObject({chainValid: true, keyType: 'ecdsa-p256', dnsNames: ['postgres.dforge.internal', 'auth-db.dforge.internal', 'localhost']});
    const renewed = JSON.parse((await cli('certs', 'renew', '--json')).stdout) as RenewJson;
    expect(renewed.caReplaced).toBeUndefined();
    expect(renewed.certificates.every((c) => c.action === 'kept')).toBe(true);
    const forced = JSON.parse((await cli('certs', 'renew', 'proxy', '--json')).stdout) as RenewJson;
    expect(forced.certificates).toEqual([expect.objectContaining({name: 'proxy', action: 'renewed'})]);
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
    const renew = JSON.parse((await cli('certs', 'renew', 'proxy', '--json')).stdout) as RenewJson;
    expect(renew.certificates).toEqual([expect.objectContaining({action: 'skipped-imported'})]);
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

describe('dforge certs renew, moving an install off an old-style CA', () => {
  /** What dforge stored before the internal names moved under dforge.internal: bare service names, all of svc.cluster.local, 127/8. */
  const OLD_INTERNAL = ['postgres', 'auth-db', 'auth', 'app', 'proxy', 'localhost', 'svc.cluster.local'];
  let dir: InstallDir & {cleanup(): Promise<void>};
  let scratch: string;
  const cli = (...args: string[]): Promise<CliResult> => runCli([...args, '--dir', dir.root]);
  const pkiFile = (name: string): string => path.join(dir.root, 'pki', name);
  const verify = async (...args: string[]): Promise<boolean> =>
    execFile('openssl', ['verify', ...args]).then(
      () => true,
      () => false,
    );
  let oldCaPem: string;
  let oldLeaves: Record<string, string>;

  beforeAll(async () => {
    dir = await tempInstall();
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-certs-move-'));
    expect((await cli('keys', 'init')).code).toBe(0);
    const {generateCa, issueLeaf} = await import('../../src/pki/index.js');
    const {saveCertificate} = await import('../../src/certs/store.js');
    const {sealed} = await openKeyServices(dir);
    const now = new Date();
    const ca = await generateCa({domain: 'dforge.example.test', internalNames: OLD_INTERNAL, ipRanges: ['127.0.0.0/8', '::1/128'], now});
    await saveCertificate(dir, sealed, 'ca', ca, 'internal');
    oldCaPem = ca.certPem;
    oldLeaves = {};
    const specs = [
      ['proxy', 'dforge.example.test', ['dforge.example.test'], []],
      ['postgres', 'postgres', ['postgres', 'auth-db', 'localhost'], ['127.0.0.1', '::1']],
      ['auth', 'auth', ['auth'], []],
      ['app', 'app', ['app'], []],
    ] as const;
    for (const [name, commonName, dnsNames, ipAddresses] of specs) {
      const leaf = await issueLeaf(ca, {commonName, dnsNames, ipAddresses, usage: 'server-client', now});
      await saveCertificate(dir, sealed, name, leaf, 'internal');
      oldLeaves[name] = leaf.certPem;
    }
  });
  afterAll(async () => {
    await dir.cleanup();
    await fs.rm(scratch, {recursive: true, force: true});
  });

  it('status warns and generate refuses to keep the old CA, changing nothing', async () => {
    const status = JSON.parse((await cli('certs', 'status', '--json')).stdout) as {warnings: string[]};
    expect(status.warnings.join('\n')).toMatch(/the CA's name constraints are not the ones this install needs: it permits postgres, auth-db, auth, app, proxy, svc\.cluster\.local.*run dforge certs renew/);
    const generate = await cli('certs', 'generate');
    expect(generate.code).toBe(1);
    expect(generate.stderr).toMatch(/generate never replaces a certificate/);
    expect(generate.stderr).toMatch(/dforge certs renew/);
    expect((await fs.readFile(pkiFile('ca.crt'), 'utf8')).trim()).toBe(oldCaPem.trim());
  });

  it('renew (even for one name) mints a new CA, re-issues every leaf under it, and says so', async () => {
    const r = await cli('certs', 'renew', 'postgres', '--json');
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as RenewJson;
    const oldFingerprint = new X509Certificate(oldCaPem).fingerprint256;
    expect(result.caReplaced).toMatchObject({previousFingerprint: oldFingerprint});
    expect(result.caReplaced!.reason).toMatch(/permits postgres, auth-db, auth, app, proxy, svc\.cluster\.local/);
    expect(result.caReplaced!.fingerprint).not.toBe(oldFingerprint);
    expect(result.certificates.map((c) => `${c.name}:${c.action}`)).toEqual(['ca:replaced', 'proxy:renewed', 'postgres:renewed', 'auth:renewed', 'app:renewed']);
    expect(result.certificates.find((c) => c.name === 'app')).toMatchObject({dnsNames: ['app.dforge.internal'], reason: expect.stringMatching(/not issued by the current CA/)});
    expect(r.stderr).toMatch(/warning: a new install CA replaced the old one/);
    expect(r.stderr).toMatch(/every client must now trust the new CA/);

    const newCa = pkiFile('ca.crt');
    expect(new X509Certificate(await fs.readFile(newCa)).fingerprint256).toBe(result.caReplaced!.fingerprint);
    // The trust store follows the CA.
    const {stdout: p12} = await execFile('openssl', ['pkcs12', '-in', pkiFile('ca.p12'), '-nokeys', '-passin', 'pass:']);
    expect(new X509Certificate(p12.slice(p12.indexOf('-----BEGIN'))).fingerprint256).toBe(result.caReplaced!.fingerprint);
    // The real leaves verify under the new CA for the names clients use; the old ones do not.
    for (const [leaf, host] of [['postgres', 'postgres.dforge.internal'], ['postgres', 'auth-db.dforge.internal'], ['postgres', 'localhost'], ['auth', 'auth.dforge.internal'], ['app', 'app.dforge.internal'], ['proxy', 'dforge.example.test']] as const) {
      expect(await verify('-CAfile', newCa, '-verify_hostname', host, pkiFile(`${leaf}.crt`)), `${leaf} for ${host}`).toBe(true);
    }
    await fs.writeFile(path.join(scratch, 'old-app.crt'), oldLeaves.app!);
    expect(await verify('-CAfile', newCa, path.join(scratch, 'old-app.crt'))).toBe(false);
    expect((JSON.parse((await cli('certs', 'status', '--json')).stdout) as {warnings: string[]}).warnings).toEqual([]);
  });

  it('the new CA key, in an attacker\'s hands, signs nothing a client would accept outside the install', async () => {
    const {sealed} = await openKeyServices(dir);
    const key = path.join(scratch, 'stolen-ca.key');
    await fs.writeFile(key, await sealed.get('pki/ca.key'), {mode: 0o600});
    const f = (n: string): string => path.join(scratch, n);
    await execFile('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', f('forged.key')]);
    await execFile('openssl', ['req', '-new', '-key', f('forged.key'), '-subj', '/CN=forged', '-out', f('forged.csr')]);
    for (const san of ['DNS:evil.app', 'DNS:x.app', 'DNS:app', 'DNS:foo.kube-system.svc.cluster.local', 'DNS:app.dforge.internal,email:ceo@dforge.example.test', 'DNS:app.dforge.internal,URI:https://dforge.example.test/']) {
      await fs.writeFile(f('forged.ext'), `basicConstraints=critical,CA:FALSE\nsubjectAltName=${san}\n`);
      await execFile('openssl', ['x509', '-req', '-in', f('forged.csr'), '-CA', pkiFile('ca.crt'), '-CAkey', key, '-set_serial', '9', '-days', '1', '-extfile', f('forged.ext'), '-out', f('forged.crt')]);
      const r = await execFile('openssl', ['verify', '-CAfile', pkiFile('ca.crt'), f('forged.crt')]).then(
        () => 'accepted',
        (err: {stdout?: string; stderr?: string}) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
      );
      expect(r, san).toMatch(/permitted subtree violation/);
    }
  });

  it('a leaf still under the old CA (a run killed mid-move) is re-issued by the next renew; then nothing changes', async () => {
    await fs.writeFile(pkiFile('auth.crt'), oldLeaves.auth!);
    const again = JSON.parse((await cli('certs', 'renew', '--json')).stdout) as RenewJson;
    expect(again.caReplaced).toBeUndefined();
    expect(again.certificates.map((c) => `${c.name}:${c.action}`)).toEqual(['proxy:kept', 'postgres:kept', 'auth:renewed', 'app:kept']);
    expect(again.certificates.find((c) => c.name === 'auth')!.reason).toMatch(/not issued by the current CA/);
    const quiet = JSON.parse((await cli('certs', 'renew', '--json')).stdout) as RenewJson;
    expect(quiet.certificates.every((c) => c.action === 'kept')).toBe(true);
  });
});
