/**
 * The CA certificate as a PKCS#12 trust-store bundle, for clients that import trust as .p12
 * (Java keystores, Windows, macOS Keychain). It holds the CA certificate and never a key.
 *
 * node-forge's PKCS#12 writer takes forge certificate objects, and forge cannot parse ECDSA
 * certificates, so the PFX is assembled here from forge's ASN.1 builder and its PKCS#12 key
 * derivation, with the certificate's DER carried through untouched. forge is loaded only when a
 * bundle is made.
 */

import {createHmac, randomBytes} from 'node:crypto';

import type {asn1 as forgeAsn1} from 'node-forge';

import {UserError} from '../errors.js';
import {basicConstraints, parseCertificate} from './certificate.js';

const OID = {
  data: '1.2.840.113549.1.7.1',
  certBag: '1.2.840.113549.1.12.10.1.3',
  x509Certificate: '1.2.840.113549.1.9.22.1',
  friendlyName: '1.2.840.113549.1.9.20',
  /** Oracle's trusted-key-usage attribute: the JDK loads a certificate with no key as a trusted entry only when it is present. */
  javaTrustedKeyUsage: '2.16.840.1.113894.746875.1.1',
  anyExtendedKeyUsage: '2.5.29.37.0',
  sha256: '2.16.840.1.101.3.4.2.1',
} as const;

/** OpenSSL 3's defaults for the integrity MAC: HMAC-SHA-256, 2048 iterations. */
const MAC_ITERATIONS = 2048;
const MAC_SALT_BYTES = 16;
/** RFC 7292 appendix B.3: the key-derivation ID that makes MAC keys. */
const MAC_KEY_ID = 3;

type Asn1 = forgeAsn1.Asn1;

export interface Pkcs12Options {
  /** Protects integrity only (nothing in the bundle is secret). Default empty. */
  readonly password?: string;
  /** The alias trust stores show. Default: the certificate's common name. */
  readonly friendlyName?: string;
}

export async function caToPkcs12(caCertPem: string, o: Pkcs12Options = {}): Promise<Buffer> {
  const ca = parseCertificate(caCertPem, 'the CA certificate');
  if (!basicConstraints(ca).ca) {
    throw new UserError(`${ca.asn.subject} is not a CA certificate; a trust store needs the CA`, {
      nextSteps: ['Pass the install CA\'s certificate, not a leaf\'s.'],
    });
  }
  const {default: forge} = await import('node-forge');
  const {asn1} = forge;
  const seq = (...items: Asn1[]) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, items);
  const set = (...items: Asn1[]) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, items);
  const oid = (id: string) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(id).getBytes());
  const octets = (bytes: string) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, bytes);
  const explicit0 = (item: Asn1) => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [item]);
  const der = (item: Asn1) => asn1.toDer(item).getBytes();
  const binary = (b: Buffer) => b.toString('binary');

  // PFX { version 3, authSafe: data { AuthenticatedSafe [ data { SafeContents [ CertBag ] } ] }, macData }
  const certBag = seq(
    oid(OID.certBag),
    explicit0(seq(oid(OID.x509Certificate), explicit0(octets(binary(ca.node.raw))))),
    set(
      seq(oid(OID.friendlyName), set(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BMPSTRING, false, o.friendlyName ?? ca.asn.subjectName.getField('CN')[0] ?? ca.asn.subject))),
      seq(oid(OID.javaTrustedKeyUsage), set(oid(OID.anyExtendedKeyUsage))),
    ),
  );
  // Certificates are public, so the SafeContents go in plain `data`, not password-encrypted.
  const authSafe = der(seq(seq(oid(OID.data), explicit0(octets(der(seq(certBag)))))));

  const salt = randomBytes(MAC_SALT_BYTES);
  const macKey = forge.pkcs12.generateKey(o.password ?? '', forge.util.createBuffer(binary(salt)), MAC_KEY_ID, MAC_ITERATIONS, 32, forge.md.sha256.create());
  const mac = createHmac('sha256', Buffer.from(macKey.getBytes(), 'binary')).update(Buffer.from(authSafe, 'binary')).digest();
  const pfx = seq(
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(3).getBytes()),
    seq(oid(OID.data), explicit0(octets(authSafe))),
    seq(
      seq(seq(oid(OID.sha256), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')), octets(binary(mac))),
      octets(binary(salt)),
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(MAC_ITERATIONS).getBytes()),
    ),
  );
  return Buffer.from(der(pfx), 'binary');
}
