/**
 * What `certs status` shows about one certificate: who it is for, how long it has left, when to
 * renew it, and (given its CA) whether a client would accept it now. Pure: the clock is an input.
 */

import {type Certificate, basicConstraints, extendedKeyUsage, nameConstraints, parseCertificates, subjectAltNames} from './certificate.js';
import {buildChain} from './chain.js';
import {describeKey} from './keys.js';
import type {NameConstraints} from './names.js';
import {DAY_MS, EXPIRY_WARNING_DAYS, RENEW_AFTER_FRACTION} from './profile.js';

export interface CertificateReport {
  readonly subject: string;
  readonly issuer: string;
  /** Upper-case hex, as `openssl x509 -serial` prints it. */
  readonly serialNumber: string;
  /** ISO 8601 timestamps. */
  readonly notBefore: string;
  readonly notAfter: string;
  /** notBefore + 2/3 of the lifetime. */
  readonly renewAt: string;
  readonly lifetimeDays: number;
  /** Whole days until notAfter; negative once expired. */
  readonly daysLeft: number;
  readonly renewDue: boolean;
  /** Less than 30 days left and not yet expired. */
  readonly expiresSoon: boolean;
  readonly expired: boolean;
  readonly notYetValid: boolean;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  /** `ecdsa-p256`, `rsa-3072`, ... */
  readonly keyType: string;
  readonly isCa: boolean;
  /** The CA's basicConstraints pathLen; null for leaves and unlimited CAs. */
  readonly pathLength: number | null;
  readonly nameConstraints: NameConstraints | null;
  /** serverAuth, clientAuth, ...; null when the certificate does not restrict its usage. */
  readonly extendedKeyUsage: readonly string[] | null;
  /** SHA-256 of the DER, colon-separated upper-case hex. */
  readonly sha256Fingerprint: string;
  /** Present when a CA was given: whether the chain leads to it and a client would accept it now. */
  readonly chainValid?: boolean;
  readonly chainError?: string;
}

/**
 * Inspects the first certificate in `certPem`; any that follow are taken as its intermediates.
 * With `caPem` (one or more CA certificates), also checks the chain up to one of them.
 */
export function inspectCertificate(certPem: string, o: {now: Date; caPem?: string}): CertificateReport {
  const [cert, ...intermediates] = parseCertificates(certPem, 'the certificate');
  const report = describeCertificate(cert, o.now);
  if (o.caPem === undefined) return report;
  const chain = buildChain(cert, intermediates, parseCertificates(o.caPem, 'the CA certificate'), o.now);
  return 'problem' in chain ? {...report, chainValid: false, chainError: chain.problem} : {...report, chainValid: true};
}

/** The report for an already parsed certificate, without a chain check. */
export function describeCertificate(cert: Certificate, now: Date): CertificateReport {
  const notBefore = cert.asn.notBefore.getTime();
  const notAfter = cert.asn.notAfter.getTime();
  const t = now.getTime();
  const lifetime = notAfter - notBefore;
  const renewAt = notBefore + Math.round(lifetime * RENEW_AFTER_FRACTION);
  const expired = t > notAfter;
  const {ca, pathLength} = basicConstraints(cert);
  const sans = subjectAltNames(cert);
  return {
    subject: cert.asn.subject,
    issuer: cert.asn.issuer,
    serialNumber: cert.node.serialNumber.toUpperCase(),
    notBefore: new Date(notBefore).toISOString(),
    notAfter: new Date(notAfter).toISOString(),
    renewAt: new Date(renewAt).toISOString(),
    lifetimeDays: Math.round(lifetime / DAY_MS),
    daysLeft: Math.floor((notAfter - t) / DAY_MS),
    renewDue: t >= renewAt,
    expiresSoon: !expired && notAfter - t < EXPIRY_WARNING_DAYS * DAY_MS,
    expired,
    notYetValid: t < notBefore,
    dnsNames: sans.dns,
    ipAddresses: sans.ip,
    keyType: describeKey(cert.node.publicKey),
    isCa: ca,
    pathLength,
    nameConstraints: nameConstraints(cert, cert.asn.subject),
    extendedKeyUsage: extendedKeyUsage(cert),
    sha256Fingerprint: cert.node.fingerprint256,
  };
}
