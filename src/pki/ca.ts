/**
 * The install's own CA: one self-signed certificate that may only issue end-entity certificates
 * (pathLen 0) for the install's domain, its internal service names and loopback.
 */

import {type KeyAlgorithm, generateKey} from './keys.js';
import {encodeNameConstraints, normaliseDnsName} from './names.js';
import {CA_VALIDITY_DAYS, CLOCK_SKEW_MS, DAY_MS, randomSerial, validityDays} from './profile.js';
import {x509} from './x509.js';

export interface CertAndKey {
  readonly certPem: string;
  /** PKCS#8 PEM. */
  readonly keyPem: string;
}

export interface CaOptions {
  /** The install's domain, e.g. `dforge.example.com`; it and every name below it are permitted. */
  readonly domain: string;
  /** Internal service names (`postgres`, `auth-db`, `svc.cluster.local`, ...), each permitted with the names below it. */
  readonly internalNames: readonly string[];
  /** Default `ecdsa-p256`. */
  readonly algorithm?: KeyAlgorithm;
  readonly now: Date;
  /** Default 3650. */
  readonly validityDays?: number;
}

/** Loopback only: services reach each other by name, so an IP SAN anywhere else is out of bounds. */
export const CA_PERMITTED_IP_RANGES = ['127.0.0.0/8', '::1/128'] as const;

const OID_NAME_CONSTRAINTS = '2.5.29.30';

export async function generateCa(o: CaOptions): Promise<CertAndKey> {
  const domain = normaliseDnsName(o.domain, 'the domain', {allowWildcard: false});
  const names = [...new Set([domain, ...o.internalNames.map((n) => normaliseDnsName(n, 'the internal name', {allowWildcard: false}))])];
  const days = validityDays(o.validityDays, CA_VALIDITY_DAYS);
  const key = await generateKey(o.algorithm ?? 'ecdsa-p256');
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{O: ['dforge']}, {CN: [`dforge CA ${domain}`]}],
    notBefore: new Date(o.now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(o.now.getTime() + days * DAY_MS),
    keys: key.pair,
    signingAlgorithm: key.signing,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(key.pair.publicKey),
      new x509.Extension(OID_NAME_CONSTRAINTS, true, encodeNameConstraints({dns: names, ip: CA_PERMITTED_IP_RANGES})),
    ],
  });
  return {certPem: cert.toString('pem'), keyPem: key.keyPem};
}
