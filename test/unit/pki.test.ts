import {execFile as execFileCb, spawnSync} from 'node:child_process';
import {X509Certificate} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {UserError, VerificationError} from '../../src/errors.js';
import {type CertAndKey, caToPkcs12, checkImport, generateCa, inspectCertificate, issueLeaf} from '../../src/pki/index.js';
import {x509} from '../../src/pki/x509.js';

const execFile = promisify(execFileCb);
// The JDK is optional here: it shows the bundle works as a Java trust store where it is installed.
const hasKeytool = spawnSync('keytool', ['-help'], {stdio: 'ignore'}).error === undefined;
const DAY = 86_400_000;
const NOW = new Date('2030-01-15T12:00:00Z');
const INTERNAL = ['dforge.internal', 'localhost'];

let dir: string;
let ca: CertAndKey;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-pki-'));
  ca = await generateCa({domain: 'example.com', internalNames: INTERNAL, now: NOW});
});
afterAll(async () => {
  await fs.rm(dir, {recursive: true, force: true});
});

const file = (name: string): string => path.join(dir, name);
const openssl = async (...args: string[]): Promise<string> => (await execFile('openssl', args)).stdout;
const read = (name: string): Promise<string> => fs.readFile(file(name), 'utf8');

/** The rejection of `promise`, so its type, message and next steps can all be checked. */
async function rejection(promise: Promise<unknown>): Promise<Error & {nextSteps?: readonly string[]}> {
  try {
    await promise;
  } catch (err) {
    return err as Error & {nextSteps?: readonly string[]};
  }
  throw new Error('expected a rejection');
}

function extension(pem: string, oid: string): x509.Extension {
  const ext = new x509.X509Certificate(pem).getExtension(oid);
  if (!ext) throw new Error(`no extension ${oid}`);
  return ext;
}

describe('generateCa', () => {
  it('makes a self-signed, name-constrained ECDSA P-256 CA with pathLen 0 by default', () => {
    const r = inspectCertificate(ca.certPem, {now: NOW, caPem: ca.certPem});
    expect(r).toMatchObject({
      subject: 'O=dforge, CN=dforge CA example.com',
      issuer: 'O=dforge, CN=dforge CA example.com',
      keyType: 'ecdsa-p256',
      isCa: true,
      pathLength: 0,
      lifetimeDays: 3650,
      notBefore: new Date(NOW.getTime() - 5 * 60_000).toISOString(),
      notAfter: new Date(NOW.getTime() + 3650 * DAY).toISOString(),
      chainValid: true,
      nameConstraints: {
        permitted: {dns: ['example.com', ...INTERNAL], ip: ['127.0.0.1/32', '::1/128'], email: ['invalid'], uri: ['invalid']},
        excluded: {dns: [], ip: [], email: [], uri: []},
      },
    });
    expect(r.serialNumber).toMatch(/^[4-7][0-9A-F]{31}$/);
    expect(ca.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(extension(ca.certPem, '2.5.29.19').critical).toBe(true); // basicConstraints
    expect(extension(ca.certPem, '2.5.29.15').critical).toBe(true); // keyUsage
    expect(extension(ca.certPem, '2.5.29.30').critical).toBe(true); // nameConstraints
    expect(new x509.X509Certificate(ca.certPem).getExtension(x509.KeyUsagesExtension)?.usages).toBe(
      x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
    );
    expect(new x509.X509Certificate(ca.certPem).getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toMatch(/^[0-9a-f]{40}$/);
  });

  it('uses a fresh random serial for every certificate', async () => {
    const other = await generateCa({domain: 'example.com', internalNames: [], now: NOW});
    expect(new X509Certificate(other.certPem).serialNumber).not.toBe(new X509Certificate(ca.certPem).serialNumber);
  });

  it('makes an RSA 3072 CA on request, whose leaves default to RSA 3072 with keyEncipherment', async () => {
    const rsa = await generateCa({domain: 'example.com', internalNames: ['dforge.internal'], algorithm: 'rsa-3072', now: NOW, validityDays: 30});
    expect(inspectCertificate(rsa.certPem, {now: NOW})).toMatchObject({keyType: 'rsa-3072', lifetimeDays: 30});
    const leaf = await issueLeaf(rsa, {commonName: 'postgres', dnsNames: ['postgres.dforge.internal'], usage: 'server', now: NOW});
    expect(inspectCertificate(leaf.certPem, {now: NOW, caPem: rsa.certPem})).toMatchObject({keyType: 'rsa-3072', chainValid: true});
    expect(new x509.X509Certificate(leaf.certPem).getExtension(x509.KeyUsagesExtension)?.usages).toBe(
      x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
    );
  });

  it.each(['exa mple.com', '-bad.example.com', '*.example.com', ''])('refuses the domain %j', async (domain) => {
    expect(await rejection(generateCa({domain, internalNames: [], now: NOW}))).toBeInstanceOf(UserError);
  });
});

describe('issueLeaf', () => {
  it('requires at least one subjectAltName', async () => {
    const err = await rejection(issueLeaf(ca, {commonName: 'postgres', dnsNames: [], ipAddresses: [], usage: 'server', now: NOW}));
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toMatch(/needs at least one DNS name or IP address/);
    expect(err.nextSteps?.join(' ')).toMatch(/subjectAltName/);
  });

  it('issues a 397-day server leaf with SANs, CA:FALSE and the CA\'s key identifier', async () => {
    const leaf = await issueLeaf(ca, {commonName: 'Postgres', dnsNames: ['postgres.dforge.internal', 'LOCALHOST'], ipAddresses: ['127.0.0.1', '::1'], usage: 'server', now: NOW});
    const r = inspectCertificate(leaf.certPem, {now: NOW, caPem: ca.certPem});
    expect(r).toMatchObject({
      subject: 'O=dforge, CN=Postgres',
      issuer: 'O=dforge, CN=dforge CA example.com',
      dnsNames: ['postgres.dforge.internal', 'localhost'],
      ipAddresses: ['127.0.0.1', '::1'],
      keyType: 'ecdsa-p256',
      isCa: false,
      pathLength: null,
      nameConstraints: null,
      extendedKeyUsage: ['serverAuth'],
      lifetimeDays: 397,
      notAfter: new Date(NOW.getTime() + 397 * DAY).toISOString(),
      chainValid: true,
    });
    const cert = new x509.X509Certificate(leaf.certPem);
    const basic = cert.getExtension(x509.BasicConstraintsExtension);
    expect([basic?.ca, basic?.critical]).toEqual([false, true]);
    expect(cert.getExtension(x509.KeyUsagesExtension)?.usages).toBe(x509.KeyUsageFlags.digitalSignature);
    expect(cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId).toBe(
      new x509.X509Certificate(ca.certPem).getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
    );
    expect(leaf.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
  });

  it.each([
    ['client', ['clientAuth']],
    ['server-client', ['serverAuth', 'clientAuth']],
  ] as const)('sets the extended key usage for %s leaves', async (usage, expected) => {
    const leaf = await issueLeaf(ca, {commonName: 'auth', dnsNames: ['auth.dforge.internal'], usage, now: NOW});
    expect(inspectCertificate(leaf.certPem, {now: NOW}).extendedKeyUsage).toEqual(expected);
  });

  it('never outlives its CA', async () => {
    const shortCa = await generateCa({domain: 'example.com', internalNames: [], now: NOW, validityDays: 100});
    const leaf = await issueLeaf(shortCa, {commonName: 'example.com', dnsNames: ['example.com'], usage: 'server', now: new Date(NOW.getTime() + 10 * DAY)});
    expect(inspectCertificate(leaf.certPem, {now: NOW}).notAfter).toBe(inspectCertificate(shortCa.certPem, {now: NOW}).notAfter);
  });

  it.each([
    [{dnsNames: ['evil.example.org']}, 'evil.example.org'],
    [{dnsNames: ['example.com.evil.org']}, 'example.com.evil.org'],
    [{dnsNames: ['postgres.dforge.internal'], ipAddresses: ['10.0.0.1']}, '10.0.0.1'],
    // Loopback is permitted only as the two addresses the leaves carry.
    [{dnsNames: ['postgres.dforge.internal'], ipAddresses: ['127.0.0.2']}, '127.0.0.2'],
    // Bare service names, and the public TLDs they would have opened up.
    [{dnsNames: ['app']}, 'app'],
    [{dnsNames: ['evil.app']}, 'evil.app'],
    [{dnsNames: ['postgres.other.svc.cluster.local']}, 'postgres.other.svc.cluster.local'],
    [{dnsNames: ['dforge.internal.evil.org']}, 'dforge.internal.evil.org'],
    // No DNS SAN: OpenSSL then checks a host-name-like common name against the DNS constraints.
    [{commonName: 'db.example.org', dnsNames: [], ipAddresses: ['127.0.0.1']}, 'db.example.org'],
  ])('refuses names outside the CA\'s constraints: %j', async (names, bad) => {
    const err = await rejection(issueLeaf(ca, {commonName: 'x', ipAddresses: [], usage: 'server', now: NOW, ...names}));
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toBe(`the CA may not certify ${bad}: clients would reject the certificate`);
  });

  it('refuses an expired CA and a key that is not the CA\'s', async () => {
    const later = new Date(NOW.getTime() + 3651 * DAY);
    expect((await rejection(issueLeaf(ca, {commonName: 'app', dnsNames: ['app.dforge.internal'], usage: 'client', now: later}))).message).toMatch(/^the CA expired on /);
    const other = await generateCa({domain: 'example.com', internalNames: [], now: NOW});
    const err = await rejection(issueLeaf({certPem: ca.certPem, keyPem: other.keyPem}, {commonName: 'app', dnsNames: ['app.dforge.internal'], usage: 'client', now: NOW}));
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toBe('the CA key does not belong to O=dforge, CN=dforge CA example.com');
  });
});

describe('inspectCertificate', () => {
  let leaf: CertAndKey;
  let notBefore: number;
  let notAfter: number;
  beforeAll(async () => {
    leaf = await issueLeaf(ca, {commonName: 'proxy', dnsNames: ['proxy.dforge.internal'], usage: 'server', now: NOW, validityDays: 300});
    notBefore = NOW.getTime() - 5 * 60_000;
    notAfter = NOW.getTime() + 300 * DAY;
  });
  const at = (t: number) => inspectCertificate(leaf.certPem, {now: new Date(t)});

  it('puts renewal at two thirds of the lifetime', () => {
    const renewAt = notBefore + Math.round(((notAfter - notBefore) * 2) / 3);
    expect(at(NOW.getTime())).toMatchObject({renewAt: new Date(renewAt).toISOString(), renewDue: false, lifetimeDays: 300, daysLeft: 300});
    expect(at(renewAt - 1000).renewDue).toBe(false);
    expect(at(renewAt).renewDue).toBe(true);
  });

  it('warns under 30 days left, then reports expiry', () => {
    expect(at(notAfter - 31 * DAY)).toMatchObject({expiresSoon: false, expired: false, daysLeft: 31});
    expect(at(notAfter - 29 * DAY)).toMatchObject({expiresSoon: true, expired: false, daysLeft: 29});
    expect(at(notAfter + DAY)).toMatchObject({expiresSoon: false, expired: true, daysLeft: -1});
    expect(at(notBefore - 1000)).toMatchObject({notYetValid: true});
  });

  it('agrees with openssl on the fingerprint and serial', async () => {
    await fs.writeFile(file('inspect.pem'), leaf.certPem);
    const out = await openssl('x509', '-in', file('inspect.pem'), '-noout', '-fingerprint', '-sha256', '-serial');
    const r = at(NOW.getTime());
    expect(out).toContain(`=${r.sha256Fingerprint}\n`);
    expect(out).toContain(`serial=${r.serialNumber}\n`);
  });

  it('reports whether the given CA issued it and a client would accept it now', async () => {
    const other = await generateCa({domain: 'example.com', internalNames: ['proxy'], now: NOW});
    expect(inspectCertificate(leaf.certPem, {now: NOW, caPem: other.certPem})).toMatchObject({chainValid: false});
    expect(inspectCertificate(leaf.certPem, {now: NOW, caPem: other.certPem}).chainError).toMatch(/authority key identifier|signature/);
    expect(inspectCertificate(leaf.certPem, {now: new Date(notAfter + DAY), caPem: ca.certPem})).toMatchObject({
      chainValid: false,
      chainError: `O=dforge, CN=proxy expired on ${new Date(notAfter).toISOString()}`,
    });
    expect(inspectCertificate(leaf.certPem, {now: NOW})).not.toHaveProperty('chainValid');
  });
});

describe('checkImport', () => {
  // A foreign PKI made with the openssl CLI, as an operator's company CA would hand it over:
  // root (pathlen 1) -> intermediate (pathlen 0) -> leaf for www.example.com and *.example.com.
  let rootPem: string;
  let interPem: string;
  let leafPem: string;
  let sec1Key: string;
  const now = (): Date => new Date(Date.now() + 60_000);

  async function sign(name: string, o: {subj: string; issuer: string; days: number; ext: string; key?: string}): Promise<string> {
    const key = o.key ?? file(`${name}.key`);
    if (!o.key) await openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key);
    await openssl('req', '-new', '-key', key, '-subj', o.subj, '-out', file(`${name}.csr`));
    await fs.writeFile(file(`${name}.ext`), o.ext);
    await openssl('x509', '-req', '-in', file(`${name}.csr`), '-CA', file(`${o.issuer}.pem`), '-CAkey', file(`${o.issuer}.key`), '-set_serial', String(Date.now()), '-days', String(o.days), '-sha256', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`));
    return read(`${name}.pem`);
  }
  const caExt = (pathlen: number): string => `basicConstraints=critical,CA:TRUE,pathlen:${pathlen}\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n`;
  const leafExt = (san: string): string => `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\nauthorityKeyIdentifier=keyid\n`;

  beforeAll(async () => {
    await openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file('root.key'));
    await openssl('req', '-x509', '-new', '-key', file('root.key'), '-subj', '/O=Example Corp/CN=Example Root', '-days', '30', '-sha256',
      '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:1', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', file('root.pem'));
    rootPem = await read('root.pem');
    interPem = await sign('inter', {subj: '/O=Example Corp/CN=Example Issuing CA', issuer: 'root', days: 20, ext: caExt(0)});
    leafPem = await sign('leaf', {subj: '/CN=www.example.com', issuer: 'inter', days: 10, ext: leafExt('DNS:www.example.com,DNS:*.example.com')});
    sec1Key = await read('leaf.key');
  });

  it('accepts a leaf with its intermediate, anchored at a trusted root, and a SEC1 key', async () => {
    expect(sec1Key).toMatch(/^-----BEGIN EC PRIVATE KEY-----/);
    const r = await checkImport({certPem: leafPem + interPem, keyPem: sec1Key, trustedCaPems: [rootPem], domain: 'WWW.example.com', now: now()});
    expect(r.report.chain.map((c) => c.subject)).toEqual(['CN=www.example.com', 'O=Example Corp, CN=Example Issuing CA', 'O=Example Corp, CN=Example Root']);
    expect(r.report.anchor).toBe('trusted-ca');
    expect(r.report.leaf).toMatchObject({dnsNames: ['www.example.com', '*.example.com'], keyType: 'ecdsa-p256', daysLeft: 9});
    expect(JSON.stringify(r.report)).not.toMatch(/PRIVATE KEY/);
    expect(r.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    await fs.writeFile(file('normalised.key'), r.keyPem);
    expect(await openssl('pkey', '-in', file('normalised.key'), '-pubout')).toBe(await openssl('pkey', '-in', file('leaf.key'), '-pubout'));
    expect(new X509Certificate(r.caPem).fingerprint256).toBe(new X509Certificate(rootPem).fingerprint256);
    expect(r.chainPem.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
  });

  it('lets inspectCertificate follow a served chain (leaf, then intermediates) to the CA', () => {
    expect(inspectCertificate(leafPem + interPem, {now: now(), caPem: rootPem})).toMatchObject({subject: 'CN=www.example.com', chainValid: true});
    expect(inspectCertificate(leafPem, {now: now(), caPem: rootPem}).chainError).toBe(
      'the issuer of CN=www.example.com (O=Example Corp, CN=Example Issuing CA) is neither in the certificate file nor among the trusted CAs',
    );
  });

  it('accepts a chain that carries its own self-signed root when no CA is passed', async () => {
    const r = await checkImport({certPem: leafPem + interPem + rootPem, keyPem: sec1Key, trustedCaPems: [], domain: 'www.example.com', now: now()});
    expect(r.report.anchor).toBe('included-root');
    expect(r.report.chain).toHaveLength(3);
  });

  it('covers a domain through a one-label wildcard, and accepts a PKCS#1 RSA key', async () => {
    await openssl('genrsa', '-traditional', '-out', file('rsa.key'), '2048');
    const rsaPem = await sign('rsa', {subj: '/CN=example.com', issuer: 'inter', days: 10, ext: leafExt('DNS:*.example.com'), key: file('rsa.key')});
    const pkcs1 = await read('rsa.key');
    expect(pkcs1).toMatch(/^-----BEGIN RSA PRIVATE KEY-----/);
    const r = await checkImport({certPem: rsaPem + interPem, keyPem: pkcs1, trustedCaPems: [rootPem], domain: 'dforge.example.com', now: now()});
    expect(r.report.leaf.keyType).toBe('rsa-2048');
    expect(r.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    const err = await rejection(checkImport({certPem: rsaPem + interPem, keyPem: pkcs1, trustedCaPems: [rootPem], domain: 'a.dforge.example.com', now: now()}));
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toBe('the certificate does not cover a.dforge.example.com: its DNS names are *.example.com');
  });

  it('accepts a leaf from dforge\'s own CA', async () => {
    const own = await generateCa({domain: 'dforge.test', internalNames: [], now: new Date()});
    const leaf = await issueLeaf(own, {commonName: 'dforge.test', dnsNames: ['dforge.test'], usage: 'server', now: new Date()});
    const r = await checkImport({certPem: leaf.certPem, keyPem: leaf.keyPem, trustedCaPems: [own.certPem], domain: 'dforge.test', now: now()});
    expect(r.report.chain).toHaveLength(2);
  });

  it('rejects a key that is not the certificate\'s, without echoing the key', async () => {
    const err = await rejection(checkImport({certPem: leafPem + interPem, keyPem: await read('inter.key'), trustedCaPems: [rootPem], domain: 'www.example.com', now: now()}));
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toBe('the private key does not belong to the certificate for CN=www.example.com');
    expect(err.nextSteps?.join('\n')).toMatch(/openssl pkey -pubout/);
    const keyBody = (await read('inter.key')).split('\n')[1]!;
    expect(JSON.stringify((err as UserError).toJSON())).not.toContain(keyBody.slice(0, 20));
  });

  it('rejects an encrypted or unreadable key with a way out', async () => {
    await openssl('pkey', '-in', file('leaf.key'), '-aes256', '-passout', 'pass:secret-pass', '-out', file('enc.key'));
    const encrypted = await rejection(checkImport({certPem: leafPem + interPem, keyPem: await read('enc.key'), trustedCaPems: [rootPem], domain: 'www.example.com', now: now()}));
    expect(encrypted.message).toBe('the private key is encrypted with a passphrase');
    await openssl('ec', '-in', file('leaf.key'), '-aes256', '-passout', 'pass:secret-pass', '-out', file('enc-sec1.key'));
    const legacy = await rejection(checkImport({certPem: leafPem + interPem, keyPem: await read('enc-sec1.key'), trustedCaPems: [rootPem], domain: 'www.example.com', now: now()}));
    expect(legacy.message).toBe('the private key is encrypted with a passphrase');
    const garbage = await rejection(checkImport({certPem: leafPem, keyPem: 'not a key', trustedCaPems: [rootPem], domain: 'www.example.com', now: now()}));
    expect(garbage.message).toBe('the private key is not a readable PEM private key');
  });

  it('rejects a certificate whose names do not cover the domain', async () => {
    const err = await rejection(checkImport({certPem: leafPem + interPem, keyPem: sec1Key, trustedCaPems: [rootPem], domain: 'example.com', now: now()}));
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toBe('the certificate does not cover example.com: its DNS names are www.example.com, *.example.com');
    expect(err.nextSteps?.[0]).toMatch(/subjectAltName includes example.com/);
  });

  it('rejects an expired or not yet valid certificate', async () => {
    const expired = await rejection(checkImport({certPem: leafPem + interPem, keyPem: sec1Key, trustedCaPems: [rootPem], domain: 'www.example.com', now: new Date(Date.now() + 11 * DAY)}));
    expect(expired).toBeInstanceOf(UserError);
    expect(expired.message).toMatch(/^the certificate is not usable now: CN=www.example.com expired on /);
    const early = await rejection(checkImport({certPem: leafPem + interPem, keyPem: sec1Key, trustedCaPems: [rootPem], domain: 'www.example.com', now: new Date(Date.now() - DAY)}));
    expect(early.message).toMatch(/^the certificate is not usable now: CN=www.example.com is not valid before /);
  });

  describe('rejects a chain that does not verify', () => {
    const chainFailure = async (o: {certPem: string; trusted: string[]; now?: Date; domain?: string}): Promise<string> => {
      const err = await rejection(checkImport({certPem: o.certPem, keyPem: sec1Key, trustedCaPems: o.trusted, domain: o.domain ?? 'www.example.com', now: o.now ?? now()}));
      expect(err).toBeInstanceOf(VerificationError);
      expect(err.nextSteps?.join(' ')).toMatch(/intermediate certificates after the leaf/);
      return err.message.replace('the certificate chain does not verify: ', '');
    };

    it('when the intermediate is missing', async () => {
      expect(await chainFailure({certPem: leafPem, trusted: [rootPem]})).toBe(
        'the issuer of CN=www.example.com (O=Example Corp, CN=Example Issuing CA) is neither in the certificate file nor among the trusted CAs',
      );
    });

    it('when the root is not trusted, or nothing anchors it', async () => {
      expect(await chainFailure({certPem: leafPem + interPem + rootPem, trusted: [ca.certPem]})).toBe(
        'it ends at O=Example Corp, CN=Example Root, which is self-signed and not among the trusted CAs',
      );
      expect(await chainFailure({certPem: leafPem + interPem, trusted: []})).toMatch(/^the issuer of O=Example Corp, CN=Example Issuing CA .* is neither/);
    });

    it('when a signature does not verify', async () => {
      // Same subject as the real intermediate, different key: names link, the signature does not.
      await openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file('impostor.key'));
      await openssl('req', '-x509', '-new', '-key', file('impostor.key'), '-subj', '/O=Example Corp/CN=Example Issuing CA', '-days', '5',
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-addext', 'subjectKeyIdentifier=none', '-out', file('impostor.pem'));
      const leafNoAki = await sign('leaf-noaki', {subj: '/CN=www.example.com', issuer: 'inter', days: 5, ext: leafExt('DNS:www.example.com').replace('authorityKeyIdentifier=keyid\n', ''), key: file('leaf.key')});
      expect(await chainFailure({certPem: leafNoAki, trusted: [await read('impostor.pem')]})).toBe(
        'the signature on CN=www.example.com does not verify with the key of O=Example Corp, CN=Example Issuing CA',
      );
    });

    it('when an intermediate is not a CA', async () => {
      const notCa = await sign('notca', {subj: '/CN=Not A CA', issuer: 'root', days: 5, ext: 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyCertSign\n'});
      const leaf = await sign('under-notca', {subj: '/CN=www.example.com', issuer: 'notca', days: 5, ext: leafExt('DNS:www.example.com'), key: file('leaf.key')});
      expect(await chainFailure({certPem: leaf + notCa, trusted: [rootPem]})).toBe('CN=Not A CA is not a CA certificate (basicConstraints CA:TRUE is missing)');
    });

    it('when a CA\'s path length is exceeded', async () => {
      const sub = await sign('sub', {subj: '/CN=Sub CA', issuer: 'inter', days: 5, ext: caExt(0)});
      const leaf = await sign('under-sub', {subj: '/CN=www.example.com', issuer: 'sub', days: 5, ext: leafExt('DNS:www.example.com'), key: file('leaf.key')});
      expect(await chainFailure({certPem: leaf + sub + interPem, trusted: [rootPem]})).toBe(
        'O=Example Corp, CN=Example Issuing CA allows 0 intermediate CA(s) below it, the chain has 1',
      );
    });

    it('when an intermediate has expired', async () => {
      const shortInter = await sign('short-inter', {subj: '/CN=Short CA', issuer: 'root', days: 1, ext: caExt(0)});
      const leaf = await sign('under-short', {subj: '/CN=www.example.com', issuer: 'short-inter', days: 10, ext: leafExt('DNS:www.example.com'), key: file('leaf.key')});
      expect(await chainFailure({certPem: leaf + shortInter, trusted: [rootPem], now: new Date(Date.now() + 2 * DAY)})).toMatch(/^CN=Short CA expired on /);
    });

    it('when the leaf is outside the CA\'s name constraints', async () => {
      const own = await generateCa({domain: 'example.com', internalNames: [], now: new Date()});
      await fs.writeFile(file('own-ca.pem'), own.certPem);
      await fs.writeFile(file('own-ca.key'), own.keyPem);
      const evil = await sign('evil', {subj: '/CN=www.example.org', issuer: 'own-ca', days: 5, ext: leafExt('DNS:www.example.org'), key: file('leaf.key')});
      expect(await chainFailure({certPem: evil, trusted: [own.certPem], domain: 'www.example.org'})).toBe(
        'www.example.org in CN=www.example.org is outside the names O=dforge, CN=dforge CA example.com may certify (permitted: example.com, 127.0.0.1/32, ::1/128)',
      );
    });

    it('when the leaf carries an email address or a URI, which the CA holds to the reserved host `invalid`', async () => {
      for (const [san, bad] of [
        ['DNS:www.example.com,email:ceo@example.com', 'ceo@example.com'],
        ['DNS:www.example.com,URI:https://www.example.com/', 'https://www.example.com/'],
      ] as const) {
        const evil = await sign(`evil-${bad.length}`, {subj: '/CN=www.example.com', issuer: 'own-ca', days: 5, ext: leafExt(san), key: file('leaf.key')});
        expect(await chainFailure({certPem: evil, trusted: [(await read('own-ca.pem'))], domain: 'www.example.com'})).toMatch(new RegExp(`^${bad.replaceAll('.', '\\.')} in CN=www\\.example\\.com is outside the names`));
      }
    });
  });
});

describe('caToPkcs12', () => {
  it.each([['empty', ''], ['set', 'trust-store-pass']])('builds a trust bundle openssl reads with the %s password, holding only the CA', async (_label, password) => {
    const p12 = file(`ca-${password.length}.p12`);
    await fs.writeFile(p12, await caToPkcs12(ca.certPem, {password, friendlyName: 'dforge CA'}));
    const out = await openssl('pkcs12', '-in', p12, '-nokeys', '-passin', `pass:${password}`);
    expect(out.match(/-----BEGIN CERTIFICATE-----/g)).toHaveLength(1);
    expect(out).toContain('friendlyName: dforge CA');
    expect(new X509Certificate(out.slice(out.indexOf('-----BEGIN CERTIFICATE-----'))).fingerprint256).toBe(new X509Certificate(ca.certPem).fingerprint256);
    const info = (await execFile('openssl', ['pkcs12', '-in', p12, '-info', '-noout', '-passin', `pass:${password}`])).stderr;
    expect(info).toContain('Certificate bag');
    expect(info).not.toMatch(/Key ?bag/i);
    expect(await rejection(openssl('pkcs12', '-in', p12, '-nokeys', '-passin', 'pass:wrong-password'))).toBeInstanceOf(Error);
  });

  it.skipIf(!hasKeytool)('is loaded by the JDK as a trusted certificate entry', async () => {
    const p12 = file('java.p12');
    await fs.writeFile(p12, await caToPkcs12(ca.certPem, {password: 'changeit'}));
    const {stdout} = await execFile('keytool', ['-list', '-keystore', p12, '-storetype', 'PKCS12', '-storepass', 'changeit']);
    expect(stdout).toContain('Your keystore contains 1 entry');
    expect(stdout).toMatch(/^dforge ca example\.com, .*, trustedCertEntry,/m);
  });

  it('refuses a certificate that is not a CA', async () => {
    const leaf = await issueLeaf(ca, {commonName: 'app', dnsNames: ['app.dforge.internal'], usage: 'client', now: NOW});
    expect(await rejection(caToPkcs12(leaf.certPem))).toBeInstanceOf(UserError);
  });
});
