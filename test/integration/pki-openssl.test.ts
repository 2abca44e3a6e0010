import {execFile as execFileCb} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {type CertAndKey, type KeyAlgorithm, generateCa, issueLeaf} from '../../src/pki/index.js';

// dforge's CA and leaves, judged by the openssl CLI: what PostgreSQL clients, the proxy and curl
// do with them is what OpenSSL's verifier does.

const execFile = promisify(execFileCb);
const DOMAIN = 'dforge.example.com';
const INTERNAL = ['postgres', 'auth-db', 'auth', 'app', 'proxy', 'localhost', 'svc.cluster.local'];

/** `openssl verify` as exit status plus its combined output. */
async function verify(...args: string[]): Promise<{ok: boolean; output: string}> {
  try {
    const {stdout, stderr} = await execFile('openssl', ['verify', ...args]);
    return {ok: true, output: stdout + stderr};
  } catch (err) {
    const e = err as {stdout?: string; stderr?: string};
    return {ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}`};
  }
}

describe.each<KeyAlgorithm>(['ecdsa-p256', 'rsa-3072'])('a %s PKI checked by openssl', (algorithm) => {
  let dir: string;
  let ca: CertAndKey;
  const file = (name: string): string => path.join(dir, name);
  const caFile = (): string => file('ca.pem');

  /** Writes a leaf's certificate and returns its path. */
  async function writeLeaf(name: string, leaf: CertAndKey): Promise<string> {
    await fs.writeFile(file(`${name}.pem`), leaf.certPem);
    await fs.writeFile(file(`${name}.key`), leaf.keyPem, {mode: 0o600});
    return file(`${name}.pem`);
  }

  /** A leaf the CA key signs through the openssl CLI, bypassing dforge's own refusal. */
  async function opensslLeaf(name: string, subj: string, san: string): Promise<string> {
    await execFile('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file(`${name}.key`)]);
    await execFile('openssl', ['req', '-new', '-key', file(`${name}.key`), '-subj', subj, '-out', file(`${name}.csr`)]);
    await fs.writeFile(file(`${name}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`);
    await execFile('openssl', ['x509', '-req', '-in', file(`${name}.csr`), '-CA', caFile(), '-CAkey', file('ca.key'), '-set_serial', '7', '-days', '2', '-sha256', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`)]);
    return file(`${name}.pem`);
  }

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), `dforge-pki-${algorithm}-`));
    ca = await generateCa({domain: DOMAIN, internalNames: INTERNAL, algorithm, now: new Date()});
    await fs.writeFile(caFile(), ca.certPem);
    await fs.writeFile(file('ca.key'), ca.keyPem, {mode: 0o600});
  });
  afterAll(async () => {
    await fs.rm(dir, {recursive: true, force: true});
  });

  it('shows a critical CA:TRUE, pathlen:0 and critical name constraints in openssl x509 -text', async () => {
    const {stdout} = await execFile('openssl', ['x509', '-in', caFile(), '-noout', '-text']);
    expect(stdout).toMatch(/X509v3 Basic Constraints: critical\n\s+CA:TRUE, pathlen:0\n/);
    expect(stdout).toMatch(/X509v3 Key Usage: critical\n\s+Certificate Sign, CRL Sign\n/);
    expect(stdout).toContain(algorithm === 'rsa-3072' ? 'Public-Key: (3072 bit)' : 'NIST CURVE: P-256');
    const block = /X509v3 Name Constraints: critical\n\s+Permitted:\n((?:\s+(?:DNS|IP):.*\n)+)/.exec(stdout);
    expect(block).not.toBeNull();
    expect(block![1]!.trim().split(/\n\s*/)).toEqual([
      `DNS:${DOMAIN}`,
      ...INTERNAL.map((n) => `DNS:${n}`),
      'IP:127.0.0.0/255.0.0.0',
      'IP:0:0:0:0:0:0:0:1/FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF',
    ]);
    expect((await verify('-CAfile', caFile(), caFile())).ok).toBe(true);
  });

  it('issues a proxy leaf for the domain and extra names that openssl accepts for TLS servers', async () => {
    const now = new Date();
    const leaf = await writeLeaf('proxy', await issueLeaf(ca, {commonName: DOMAIN, dnsNames: [DOMAIN, `*.${DOMAIN}`, 'proxy', 'localhost'], usage: 'server', now}));
    for (const host of [DOMAIN, `tenant-a.${DOMAIN}`, 'proxy']) {
      const r = await verify('-CAfile', caFile(), '-purpose', 'sslserver', '-verify_hostname', host, leaf);
      expect(r, host).toEqual({ok: true, output: `${leaf}: OK\n`});
    }
    expect((await verify('-CAfile', caFile(), '-verify_hostname', 'other.example.com', leaf)).ok).toBe(false);
  });

  it('issues a postgres leaf for postgres, localhost and 127.0.0.1', async () => {
    const leaf = await writeLeaf('postgres', await issueLeaf(ca, {commonName: 'postgres', dnsNames: ['postgres', 'localhost'], ipAddresses: ['127.0.0.1'], usage: 'server', now: new Date()}));
    expect((await verify('-CAfile', caFile(), '-purpose', 'sslserver', '-verify_hostname', 'postgres', leaf)).ok).toBe(true);
    expect((await verify('-CAfile', caFile(), '-purpose', 'sslserver', '-verify_ip', '127.0.0.1', leaf)).ok).toBe(true);
    const {stdout} = await execFile('openssl', ['x509', '-in', leaf, '-noout', '-ext', 'subjectAltName,extendedKeyUsage,basicConstraints']);
    expect(stdout).toContain('DNS:postgres, DNS:localhost, IP Address:127.0.0.1');
    expect(stdout).toContain('TLS Web Server Authentication');
    expect(stdout).toMatch(/Basic Constraints: critical\n\s+CA:FALSE/);
  });

  it('issues an internal-service client leaf that openssl accepts for TLS clients', async () => {
    const leaf = await writeLeaf('auth-client', await issueLeaf(ca, {commonName: 'auth', dnsNames: ['auth', 'auth.dforge.svc.cluster.local'], usage: 'client', now: new Date()}));
    expect(await verify('-CAfile', caFile(), '-purpose', 'sslclient', leaf)).toEqual({ok: true, output: `${leaf}: OK\n`});
    expect((await verify('-CAfile', caFile(), '-purpose', 'sslserver', leaf)).ok).toBe(false);
  });

  it.each([
    ['a DNS name outside the domain', '/CN=evil.example.org', 'DNS:evil.example.org'],
    ['an IP address outside loopback', '/CN=postgres', 'DNS:postgres,IP:10.0.0.1'],
  ])('makes openssl reject a leaf the CA key signs for %s', async (_what, subj, san) => {
    const leaf = await opensslLeaf(`outside-${san.length}`, subj, san);
    const r = await verify('-CAfile', caFile(), leaf);
    expect(r.ok).toBe(false);
    expect(r.output).toContain('permitted subtree violation');
  });
});
