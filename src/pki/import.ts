/**
 * Checks a certificate and key an operator brings (`certs import`), typically for the proxy under
 * a company or public CA, before dforge stores them: the key is the certificate's, the chain
 * verifies to a trusted CA, the names cover the install's domain, and it is valid now. Each
 * failure is its own typed error that says what to do.
 */

import {UserError, VerificationError} from '../errors.js';
import {parseCertificates, subjectAltNames, validityProblem} from './certificate.js';
import {buildChain} from './chain.js';
import {type CertificateReport, describeCertificate} from './inspect.js';
import {describeKey, readPrivateKey, samePublicKey} from './keys.js';
import {dnsNamesCover, normaliseDnsName} from './names.js';

export interface ImportOptions {
  /** PEM: the leaf first, optionally followed by its intermediates (and root). */
  readonly certPem: string;
  /** PEM private key: PKCS#8, SEC1 or PKCS#1. */
  readonly keyPem: string;
  /** PEM CA certificates to anchor the chain; when empty, the chain must end at a self-signed root included in certPem. */
  readonly trustedCaPems: readonly string[];
  readonly domain: string;
  readonly now: Date;
}

/** Safe to print and to return as `--json`: no key material. */
export interface ImportReport {
  readonly leaf: CertificateReport;
  /** Leaf first, anchor last. */
  readonly chain: readonly {subject: string; issuer: string; notAfter: string; sha256Fingerprint: string}[];
  readonly anchor: 'trusted-ca' | 'included-root';
}

export interface ImportResult {
  readonly report: ImportReport;
  /** The key as PKCS#8 PEM: secret, store it sealed and never print it. */
  readonly keyPem: string;
  /** What the server should present: the leaf and its intermediates, without the anchor. */
  readonly chainPem: string;
  /** The anchor that clients need to trust. */
  readonly caPem: string;
}

export async function checkImport(o: ImportOptions): Promise<ImportResult> {
  const [leaf, ...bundled] = parseCertificates(o.certPem, 'the certificate file');
  const key = readPrivateKey(o.keyPem, 'the private key');
  const trusted = o.trustedCaPems.flatMap((pem) => parseCertificates(pem, 'the trusted CA file'));
  const domain = normaliseDnsName(o.domain, 'the domain', {allowWildcard: false});

  if (!samePublicKey(key.keyObject, leaf.node.publicKey)) {
    throw new UserError(`the private key does not belong to the certificate for ${leaf.asn.subject}`, {
      data: {certificateKeyType: describeKey(leaf.node.publicKey), keyType: key.keyType},
      nextSteps: [
        'Pass the key the certificate was issued for. To compare, these two must print the same:',
        'openssl x509 -noout -pubkey -in CERT | openssl sha256   and   openssl pkey -pubout -in KEY | openssl sha256',
      ],
    });
  }
  const dates = validityProblem(leaf, o.now);
  if (dates) {
    throw new UserError(`the certificate is not usable now: ${dates}`, {
      nextSteps: ['Get a current certificate from your CA (and check this host\'s clock with: date -u).'],
    });
  }
  const {dns} = subjectAltNames(leaf);
  if (!dnsNamesCover(dns, domain)) {
    throw new UserError(`the certificate does not cover ${domain}: its DNS names are ${dns.join(', ') || 'none'}`, {
      nextSteps: [
        `Get a certificate whose subjectAltName includes ${domain}${domain.includes('.') ? ` or *.${domain.slice(domain.indexOf('.') + 1)}` : ''}.`,
        'Or, if the domain is wrong, correct it in dforge.yaml first.',
      ],
    });
  }
  const chain = buildChain(leaf, bundled, trusted, o.now);
  if ('problem' in chain) {
    throw new VerificationError(`the certificate chain does not verify: ${chain.problem}`, {
      nextSteps: [
        'Put the intermediate certificates after the leaf in the certificate file (leaf first, then each issuer).',
        'Pass the CA certificate that issued the chain as the trusted CA, or include its self-signed root at the end of the file.',
      ],
    });
  }
  const {path, anchor} = chain;
  return {
    report: {
      leaf: describeCertificate(leaf, o.now),
      chain: path.map((c) => ({
        subject: c.asn.subject,
        issuer: c.asn.issuer,
        notAfter: c.asn.notAfter.toISOString(),
        sha256Fingerprint: c.node.fingerprint256,
      })),
      anchor,
    },
    keyPem: key.pkcs8Pem,
    chainPem: path.slice(0, -1).map((c) => c.pem).join(''),
    caPem: path[path.length - 1]!.pem,
  };
}
