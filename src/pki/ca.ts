/**
 * The install's own CA: one self-signed certificate that may only issue end-entity certificates
 * (pathLen 0) for the install's domain, its internal service names and loopback.
 *
 * A dNSName constraint covers the name and everything below it (RFC 5280 §4.2.1.10), so every
 * internal name must sit under a suffix that nobody else can register or route: `app` alone would
 * let the CA vouch for every host under the public `.app` top-level domain, and
 * `svc.cluster.local` for every namespace of any cluster that trusts it. And a name form with no
 * permitted subtree is unconstrained, so email and URI names are excluded outright.
 */

import {type KeyAlgorithm, generateKey} from './keys.js';
import {type NameConstraints, encodeNameConstraints, normaliseDnsName} from './names.js';
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
  /**
   * DNS subtrees for the internal names (`dforge.internal`, `<namespace>.svc.cluster.local`,
   * `localhost`, ...), each permitted with the names below it: never a bare service name.
   */
  readonly internalNames: readonly string[];
  /** Permitted IP ranges. Default: the loopback addresses the leaves carry (CA_PERMITTED_IP_RANGES). */
  readonly ipRanges?: readonly string[];
  /** Default `ecdsa-p256`. */
  readonly algorithm?: KeyAlgorithm;
  readonly now: Date;
  /** Default 3650. */
  readonly validityDays?: number;
}

/**
 * The two loopback addresses the leaves carry, and nothing else: services reach each other by
 * name, so an IP SAN anywhere else (a LAN or cloud address that some other host could hold) is
 * out of bounds.
 */
export const CA_PERMITTED_IP_RANGES = ['127.0.0.1/32', '::1/128'] as const;

/**
 * The one host every email and URI name must have: `invalid`, which RFC 6761 reserves so that it
 * never resolves or belongs to anyone. A name form with no permitted subtree is unconstrained,
 * and an empty excluded subtree does not close it everywhere (OpenSSL 3 matches an empty email or
 * URI base against nothing), so the form gets a permitted subtree nothing real can be under.
 */
export const CA_EMAIL_URI_HOST = 'invalid';

/** The constraints a CA for these names carries: the domain and the internal subtrees, the IP ranges, and no real email address or URI. */
export function caNameConstraints(o: Pick<CaOptions, 'domain' | 'internalNames' | 'ipRanges'>): NameConstraints {
  const domain = normaliseDnsName(o.domain, 'the domain', {allowWildcard: false});
  const dns = [...new Set([domain, ...o.internalNames.map((n) => normaliseDnsName(n, 'the internal name', {allowWildcard: false}))])];
  return {
    permitted: {dns, ip: [...(o.ipRanges ?? CA_PERMITTED_IP_RANGES)], email: [CA_EMAIL_URI_HOST], uri: [CA_EMAIL_URI_HOST]},
    excluded: {dns: [], ip: [], email: [], uri: []},
  };
}

const OID_NAME_CONSTRAINTS = '2.5.29.30';

export async function generateCa(o: CaOptions): Promise<CertAndKey> {
  const domain = normaliseDnsName(o.domain, 'the domain', {allowWildcard: false});
  const constraints = caNameConstraints(o);
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
      new x509.Extension(OID_NAME_CONSTRAINTS, true, encodeNameConstraints(constraints)),
    ],
  });
  return {certPem: cert.toString('pem'), keyPem: key.keyPem};
}
