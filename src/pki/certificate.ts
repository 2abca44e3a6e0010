/**
 * A parsed certificate, seen through two parsers, each for what it does best: node:crypto's
 * X509Certificate (OpenSSL underneath) for signatures, issuance checks, fingerprints and the
 * public key, synchronously; @peculiar/x509 for the extensions node:crypto does not expose.
 */

import {X509Certificate as NodeCertificate} from 'node:crypto';

import {UserError} from '../errors.js';
import {type NameConstraints, commonNameAsDns, decodeNameConstraints} from './names.js';
import {x509} from './x509.js';

export interface Certificate {
  readonly pem: string;
  readonly node: NodeCertificate;
  readonly asn: x509.X509Certificate;
}

const OID_NAME_CONSTRAINTS = '2.5.29.30';
const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Every certificate in a PEM text, in order; at least one. */
export function parseCertificates(text: string, what: string): [Certificate, ...Certificate[]] {
  const blocks = text.match(PEM_BLOCK) ?? [];
  if (blocks.length === 0) {
    throw new UserError(`${what} contains no PEM certificate`, {
      nextSteps: ['Pass the certificate as PEM (-----BEGIN CERTIFICATE-----); convert DER with: openssl x509 -inform der -in CERT -out CERT.pem'],
    });
  }
  const certs = blocks.map((block, i): Certificate => {
    try {
      const node = new NodeCertificate(block);
      return {pem: node.toString(), node, asn: new x509.X509Certificate(node.raw)};
    } catch {
      throw new UserError(`certificate ${i + 1} in ${what} cannot be parsed`, {
        nextSteps: ['Check the file with: openssl x509 -noout -text -in FILE'],
      });
    }
  });
  return certs as [Certificate, ...Certificate[]];
}

/** Exactly one certificate. */
export function parseCertificate(text: string, what: string): Certificate {
  const certs = parseCertificates(text, what);
  if (certs.length !== 1) {
    throw new UserError(`${what} contains ${certs.length} certificates where one was expected`, {
      nextSteps: ['Pass a file that holds only that certificate.'],
    });
  }
  return certs[0];
}

/** The SANs by type; email and URI names too, since a CA's constraints bind them as well. */
export function subjectAltNames(cert: Certificate): {dns: string[]; ip: string[]; email: string[]; uri: string[]} {
  const out = {dns: [] as string[], ip: [] as string[], email: [] as string[], uri: [] as string[]};
  for (const name of cert.asn.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? []) {
    if (name.type === 'dns') out.dns.push(name.value);
    else if (name.type === 'ip') out.ip.push(name.value);
    else if (name.type === 'email') out.email.push(name.value);
    else if (name.type === 'url') out.uri.push(name.value);
  }
  return out;
}

/** The names a CA's name constraints apply to: the SANs, plus a host-name-like common name when there is no DNS SAN. */
export function constrainedNames(cert: Certificate): {dns: string[]; ip: string[]; email: string[]; uri: string[]} {
  const sans = subjectAltNames(cert);
  return {...sans, dns: [...sans.dns, ...commonNameAsDns(cert.asn.subjectName.getField('CN')[0], sans.dns)]};
}

export function basicConstraints(cert: Certificate): {ca: boolean; pathLength: number | null} {
  const ext = cert.asn.getExtension(x509.BasicConstraintsExtension);
  return {ca: ext?.ca ?? false, pathLength: ext?.ca && ext.pathLength !== undefined ? ext.pathLength : null};
}

/** The keyUsage bits, or null when the extension is absent (which allows every usage). */
export function keyUsage(cert: Certificate): number | null {
  return cert.asn.getExtension(x509.KeyUsagesExtension)?.usages ?? null;
}

const ekuNames: Record<string, string> = {
  [x509.ExtendedKeyUsage.serverAuth]: 'serverAuth',
  [x509.ExtendedKeyUsage.clientAuth]: 'clientAuth',
  [x509.ExtendedKeyUsage.codeSigning]: 'codeSigning',
  [x509.ExtendedKeyUsage.emailProtection]: 'emailProtection',
  [x509.ExtendedKeyUsage.timeStamping]: 'timeStamping',
  [x509.ExtendedKeyUsage.ocspSigning]: 'ocspSigning',
};

/** Extended key usages by name (OIDs for unknown ones), or null when the extension is absent. */
export function extendedKeyUsage(cert: Certificate): string[] | null {
  const ext = cert.asn.getExtension(x509.ExtendedKeyUsageExtension);
  return ext ? ext.usages.map((u) => String(u)).map((oid) => ekuNames[oid] ?? oid) : null;
}

export function nameConstraints(cert: Certificate, what: string): NameConstraints | null {
  const ext = cert.asn.getExtension(OID_NAME_CONSTRAINTS);
  if (!ext) return null;
  try {
    return decodeNameConstraints(new Uint8Array(ext.value));
  } catch {
    throw new UserError(`the name constraints of ${what} cannot be parsed`, {
      nextSteps: ['Check the certificate with: openssl x509 -noout -text -in FILE'],
    });
  }
}

/** Subject equals issuer and the certificate's own key verifies its signature. */
export function isSelfSigned(cert: Certificate): boolean {
  return cert.node.checkIssued(cert.node) && cert.node.verify(cert.node.publicKey);
}

/** Why `cert` is outside its validity window at `now`, or null when it is inside. */
export function validityProblem(cert: Certificate, now: Date): string | null {
  if (now < cert.asn.notBefore) return `${cert.asn.subject} is not valid before ${cert.asn.notBefore.toISOString()}`;
  if (now > cert.asn.notAfter) return `${cert.asn.subject} expired on ${cert.asn.notAfter.toISOString()}`;
  return null;
}
