/**
 * End-entity certificates issued by the install CA: for the proxy and PostgreSQL (server), for
 * services that authenticate to them (client), or both. Refuses anything the CA's own constraints
 * would make clients reject, so a bad request fails here with a reason instead of in a handshake.
 */

import {UserError} from '../errors.js';
import type {CertAndKey} from './ca.js';
import {basicConstraints, nameConstraints, parseCertificate} from './certificate.js';
import {type KeyAlgorithm, generateKey, importSigningKey, leafAlgorithmFor, readPrivateKey, samePublicKey} from './keys.js';
import {commonNameAsDns, namesOutside, normaliseDnsName, normaliseIp} from './names.js';
import {CLOCK_SKEW_MS, DAY_MS, LEAF_VALIDITY_DAYS, randomSerial, validityDays} from './profile.js';
import {x509} from './x509.js';

export type LeafUsage = 'server' | 'client' | 'server-client';

export interface LeafOptions {
  readonly commonName: string;
  readonly dnsNames: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly usage: LeafUsage;
  /** Default: the CA's family (`rsa-3072` under an RSA CA, otherwise `ecdsa-p256`). */
  readonly algorithm?: KeyAlgorithm;
  readonly now: Date;
  /** Default 397; never past the CA's own notAfter. */
  readonly validityDays?: number;
}

const ekus: Record<LeafUsage, x509.ExtendedKeyUsage[]> = {
  server: [x509.ExtendedKeyUsage.serverAuth],
  client: [x509.ExtendedKeyUsage.clientAuth],
  'server-client': [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth],
};

export async function issueLeaf(ca: CertAndKey, o: LeafOptions): Promise<CertAndKey> {
  const caCert = parseCertificate(ca.certPem, 'the CA certificate');
  const caKey = readPrivateKey(ca.keyPem, 'the CA key');
  if (!basicConstraints(caCert).ca) {
    throw new UserError(`${caCert.asn.subject} is not a CA certificate`, {nextSteps: ['Pass the install CA\'s certificate and key, not a leaf\'s.']});
  }
  if (!samePublicKey(caKey.keyObject, caCert.node.publicKey)) {
    throw new UserError(`the CA key does not belong to ${caCert.asn.subject}`, {
      nextSteps: ['Restore the CA certificate and key as a pair, or generate a new CA with: dforge certs generate'],
    });
  }

  const commonName = o.commonName.trim();
  if (commonName === '' || commonName.length > 64) {
    throw new UserError(`the common name must be 1 to 64 characters (got ${commonName.length})`, {
      nextSteps: ['Use the certificate\'s primary DNS name as its common name.'],
    });
  }
  const dns = [...new Set(o.dnsNames.map((n) => normaliseDnsName(n, 'the DNS name', {allowWildcard: true})))];
  const ip = [...new Set((o.ipAddresses ?? []).map((a) => normaliseIp(a, 'the IP address')))];
  if (dns.length === 0 && ip.length === 0) {
    throw new UserError(`the certificate for ${commonName} needs at least one DNS name or IP address`, {
      nextSteps: ['Pass the names clients connect to: TLS clients check the subjectAltName, not the common name.'],
    });
  }
  const constraints = nameConstraints(caCert, caCert.asn.subject);
  const outside = constraints ? namesOutside(constraints, {dns: [...dns, ...commonNameAsDns(commonName, dns)], ip}) : [];
  if (constraints && outside.length > 0) {
    throw new UserError(`the CA may not certify ${outside.join(', ')}: clients would reject the certificate`, {
      data: {permitted: constraints.permitted},
      nextSteps: [
        `Use names the CA permits: ${[...constraints.permitted.dns, ...constraints.permitted.ip].join(', ')}.`,
        'To cover other names, add them to the configuration and generate a new CA (dforge certs generate).',
      ],
    });
  }

  const days = validityDays(o.validityDays, LEAF_VALIDITY_DAYS);
  const caNotBefore = caCert.asn.notBefore.getTime();
  const caNotAfter = caCert.asn.notAfter.getTime();
  const now = o.now.getTime();
  if (now >= caNotAfter) {
    throw new UserError(`the CA expired on ${caCert.asn.notAfter.toISOString()}`, {nextSteps: ['Generate a new CA (dforge certs generate) and re-issue every certificate.']});
  }
  const notBefore = Math.max(now - CLOCK_SKEW_MS, caNotBefore);
  const notAfter = Math.min(now + days * DAY_MS, caNotAfter);

  const algorithm = o.algorithm ?? leafAlgorithmFor(caKey);
  const [key, signer] = await Promise.all([generateKey(algorithm), importSigningKey(caKey, 'the CA key')]);
  const caKeyId = caCert.asn.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  const keyUsage = x509.KeyUsageFlags.digitalSignature | (algorithm === 'rsa-3072' ? x509.KeyUsageFlags.keyEncipherment : 0);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{O: ['dforge']}, {CN: [commonName]}],
    issuer: caCert.asn.subjectName,
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    publicKey: key.pair.publicKey,
    signingKey: signer.key,
    signingAlgorithm: signer.signing,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(keyUsage, true),
      new x509.ExtendedKeyUsageExtension(ekus[o.usage], false),
      new x509.SubjectAlternativeNameExtension([...dns.map((value) => ({type: 'dns' as const, value})), ...ip.map((value) => ({type: 'ip' as const, value}))], false),
      await x509.SubjectKeyIdentifierExtension.create(key.pair.publicKey),
      // A CA without a subject key identifier leaves nothing for an authority key identifier to name.
      ...(caKeyId ? [new x509.AuthorityKeyIdentifierExtension(caKeyId, false)] : []),
    ],
  });
  return {certPem: cert.toString('pem'), keyPem: key.keyPem};
}
