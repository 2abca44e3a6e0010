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
/** What a compose install's CA permits besides the domain (src/certs/service-names.ts). */
const INTERNAL = ['dforge.internal', 'localhost'];
/** What a Kubernetes install in namespace `dforge` permits. */
const K8S_INTERNAL = ['dforge.svc', 'dforge.svc.cluster.local', 'localhost'];

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

  /** A leaf the CA key (by default the install CA's) signs through the openssl CLI, bypassing dforge's own refusal. */
  async function opensslLeaf(name: string, subj: string, san: string, signer = 'ca'): Promise<string> {
    await execFile('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file(`${name}.key`)]);
    await execFile('openssl', ['req', '-new', '-key', file(`${name}.key`), '-subj', subj, '-out', file(`${name}.csr`)]);
    await fs.writeFile(file(`${name}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\n`);
    await execFile('openssl', ['x509', '-req', '-in', file(`${name}.csr`), '-CA', file(`${signer}.pem`), '-CAkey', file(`${signer}.key`), '-set_serial', '7', '-days', '2', '-sha256', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`)]);
    return file(`${name}.pem`);
  }

  /** Another CA of the same shape, e.g. for a Kubernetes install or one made before the names moved under dforge.internal. */
  async function writeCa(name: string, internalNames: readonly string[]): Promise<CertAndKey> {
    const other = await generateCa({domain: DOMAIN, internalNames, algorithm, now: new Date()});
    await fs.writeFile(file(`${name}.pem`), other.certPem);
    await fs.writeFile(file(`${name}.key`), other.keyPem, {mode: 0o600});
    return other;
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
    const block = /X509v3 Name Constraints: critical\n\s+Permitted:\n((?:\s+(?:DNS|IP|email|URI):.*\n)+)/.exec(stdout);
    expect(block, stdout).not.toBeNull();
    expect(block![1]!.trim().split(/\n\s*/)).toEqual([
      `DNS:${DOMAIN}`,
      ...INTERNAL.map((n) => `DNS:${n}`),
      'IP:127.0.0.1/255.255.255.255',
      'IP:0:0:0:0:0:0:0:1/FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF',
      // Email and URI names only under the reserved host `invalid`, i.e. none that exist.
      'email:invalid',
      'URI:invalid',
    ]);
    expect(stdout).not.toContain('Excluded:');
    expect((await verify('-CAfile', caFile(), caFile())).ok).toBe(true);
  });

  it('issues a proxy leaf for the domain and extra names that openssl accepts for TLS servers', async () => {
    const now = new Date();
    const leaf = await writeLeaf('proxy', await issueLeaf(ca, {commonName: DOMAIN, dnsNames: [DOMAIN, `*.${DOMAIN}`, 'localhost'], usage: 'server', now}));
    for (const host of [DOMAIN, `tenant-a.${DOMAIN}`]) {
      const r = await verify('-CAfile', caFile(), '-purpose', 'sslserver', '-verify_hostname', host, leaf);
      expect(r, host).toEqual({ok: true, output: `${leaf}: OK\n`});
    }
    expect((await verify('-CAfile', caFile(), '-verify_hostname', 'other.example.com', leaf)).ok).toBe(false);
  });

  it('issues a postgres leaf for its names under dforge.internal, localhost and loopback', async () => {
    const leaf = await writeLeaf(
      'postgres',
      await issueLeaf(ca, {commonName: 'postgres.dforge.internal', dnsNames: ['postgres.dforge.internal', 'auth-db.dforge.internal', 'localhost'], ipAddresses: ['127.0.0.1', '::1'], usage: 'server', now: new Date()}),
    );
    for (const host of ['postgres.dforge.internal', 'auth-db.dforge.internal', 'localhost']) {
      expect((await verify('-CAfile', caFile(), '-purpose', 'sslserver', '-verify_hostname', host, leaf)).ok, host).toBe(true);
    }
    expect((await verify('-CAfile', caFile(), '-purpose', 'sslserver', '-verify_ip', '127.0.0.1', leaf)).ok).toBe(true);
    // The old bare name is no longer one the leaf answers to.
    expect((await verify('-CAfile', caFile(), '-purpose', 'sslserver', '-verify_hostname', 'postgres', leaf)).ok).toBe(false);
    const {stdout} = await execFile('openssl', ['x509', '-in', leaf, '-noout', '-ext', 'subjectAltName,extendedKeyUsage,basicConstraints']);
    expect(stdout).toContain('DNS:postgres.dforge.internal, DNS:auth-db.dforge.internal, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    expect(stdout).toContain('TLS Web Server Authentication');
    expect(stdout).toMatch(/Basic Constraints: critical\n\s+CA:FALSE/);
  });

  it('issues an internal-service client leaf that openssl accepts for TLS clients', async () => {
    const leaf = await writeLeaf('auth-client', await issueLeaf(ca, {commonName: 'auth.dforge.internal', dnsNames: ['auth.dforge.internal'], usage: 'client', now: new Date()}));
    expect(await verify('-CAfile', caFile(), '-purpose', 'sslclient', leaf)).toEqual({ok: true, output: `${leaf}: OK\n`});
    expect((await verify('-CAfile', caFile(), '-purpose', 'sslserver', leaf)).ok).toBe(false);
  });

  // Someone with the CA key (a stolen backup of secrets/ and the master key, or a compromised
  // host) signs what they like. The constraints are what every client still holds them to.
  it.each([
    ['a DNS name outside the domain', '/CN=evil.example.org', 'DNS:evil.example.org', 'permitted subtree violation'],
    ['a host under the public .app TLD', '/CN=evil.app', 'DNS:evil.app', 'permitted subtree violation'],
    ['a name below a bare service name', '/CN=x.app', 'DNS:x.app', 'permitted subtree violation'],
    ['the old bare service name', '/CN=postgres', 'DNS:postgres', 'permitted subtree violation'],
    ['a service in any Kubernetes namespace', '/CN=x', 'DNS:foo.kube-system.svc.cluster.local', 'permitted subtree violation'],
    ['an IP address outside loopback', '/CN=x', 'DNS:postgres.dforge.internal,IP:10.0.0.1', 'permitted subtree violation'],
    ['another loopback address than the leaves carry', '/CN=x', 'DNS:postgres.dforge.internal,IP:127.0.0.2', 'permitted subtree violation'],
    ['an email address', '/CN=x', 'DNS:postgres.dforge.internal,email:ceo@example.org', 'permitted subtree violation'],
    ['an email address inside the domain', '/CN=x', `DNS:postgres.dforge.internal,email:ops@${DOMAIN}`, 'permitted subtree violation'],
    ['a URI', '/CN=x', 'DNS:postgres.dforge.internal,URI:https://login.example.org/', 'permitted subtree violation'],
    ['a SPIFFE URI inside the domain', '/CN=x', `DNS:postgres.dforge.internal,URI:spiffe://${DOMAIN}/ns/x/sa/y`, 'permitted subtree violation'],
    ['a URI without a host', '/CN=x', 'DNS:postgres.dforge.internal,URI:urn:uuid:0a1b2c3d-0000-4000-8000-000000000000', 'unsupported'],
    ['an email address in the subject instead of a SAN', '/CN=x/emailAddress=ceo@example.org', 'DNS:postgres.dforge.internal', 'permitted subtree violation'],
  ])('makes openssl reject a leaf the CA key signs for %s', async (_what, subj, san, why) => {
    const leaf = await opensslLeaf(`outside-${Buffer.from(san).toString('hex').slice(0, 40)}`, subj, san);
    const r = await verify('-CAfile', caFile(), leaf);
    expect(r.ok, r.output).toBe(false);
    expect(r.output).toContain(why);
  });

  it('refuses in dforge, before signing, what openssl would reject', async () => {
    for (const dnsNames of [['evil.app'], ['x.app'], ['postgres'], ['foo.kube-system.svc.cluster.local']]) {
      await expect(issueLeaf(ca, {commonName: 'x', dnsNames, usage: 'server', now: new Date()}), dnsNames[0]).rejects.toThrow(/the CA may not certify/);
    }
    await expect(issueLeaf(ca, {commonName: 'x', dnsNames: ['postgres.dforge.internal'], ipAddresses: ['127.0.0.2'], usage: 'server', now: new Date()})).rejects.toThrow(/127\.0\.0\.2/);
  });

  it('a Kubernetes install\'s CA vouches for its own namespace only', async () => {
    const k8s = await writeCa('k8s-ca', K8S_INTERNAL);
    const leaf = await writeLeaf('k8s-postgres', await issueLeaf(k8s, {commonName: 'postgres.dforge.svc', dnsNames: ['postgres.dforge.svc', 'postgres.dforge.svc.cluster.local'], usage: 'server', now: new Date()}));
    for (const host of ['postgres.dforge.svc', 'postgres.dforge.svc.cluster.local']) {
      expect((await verify('-CAfile', file('k8s-ca.pem'), '-purpose', 'sslserver', '-verify_hostname', host, leaf)).ok, host).toBe(true);
    }
    for (const san of ['DNS:foo.other.svc.cluster.local', 'DNS:kubernetes.default.svc', 'DNS:foo.other.svc', 'DNS:postgres.dforge.internal']) {
      const forged = await opensslLeaf(`k8s-forged-${san.length}`, '/CN=x', san, 'k8s-ca');
      const r = await verify('-CAfile', file('k8s-ca.pem'), forged);
      expect(r.ok, san).toBe(false);
      expect(r.output).toContain('permitted subtree violation');
    }
  });

  it('shows why the old constraints had to go: a CA that permits bare `app` vouches for evil.app', async () => {
    await writeCa('legacy-ca', ['postgres', 'auth-db', 'auth', 'app', 'proxy', 'localhost', 'svc.cluster.local']);
    const forged = await opensslLeaf('legacy-evil', '/CN=evil.app', 'DNS:evil.app,DNS:foo.kube-system.svc.cluster.local', 'legacy-ca');
    expect(await verify('-CAfile', file('legacy-ca.pem'), '-verify_hostname', 'evil.app', forged)).toEqual({ok: true, output: `${forged}: OK\n`});
  });
});
