/**
 * Certification path checks, done the way a TLS client will do them, so `certs import` and
 * `certs status` refuse what PostgreSQL clients and browsers would refuse: each issuer is a CA
 * allowed to sign certificates, is named by its child and verifies the child's signature, is
 * inside its validity window, and respects its path length and name constraints.
 */

import {type Certificate, basicConstraints, constrainedNames, isSelfSigned, keyUsage, nameConstraints, subjectAltNames, validityProblem} from './certificate.js';
import {namesOutside} from './names.js';
import {x509} from './x509.js';

const MAX_DEPTH = 8;

/** Why `issuer` cannot have issued `child`, or null when it did. */
function linkProblem(child: Certificate, issuer: Certificate): string | null {
  const from = issuer.asn.subject;
  if (!basicConstraints(issuer).ca) return `${from} is not a CA certificate (basicConstraints CA:TRUE is missing)`;
  const usage = keyUsage(issuer);
  if (usage !== null && (usage & x509.KeyUsageFlags.keyCertSign) === 0) return `the key usage of ${from} does not allow signing certificates`;
  if (child.asn.issuer !== from) return `${child.asn.subject} names ${child.asn.issuer} as its issuer, not ${from}`;
  if (!child.node.checkIssued(issuer.node)) return `the authority key identifier of ${child.asn.subject} does not match the key of ${from}`;
  if (!child.node.verify(issuer.node.publicKey)) return `the signature on ${child.asn.subject} does not verify with the key of ${from}`;
  return null;
}

/**
 * Why the path (leaf first, trust anchor last) is not valid at `now`, or null when it is.
 * Self-issued intermediates do not count towards a path length, as in RFC 5280 §6.1.4.
 */
function pathProblem(path: readonly Certificate[], now: Date): string | null {
  for (const cert of path) {
    const problem = validityProblem(cert, now);
    if (problem) return problem;
  }
  for (let i = 1; i < path.length; i++) {
    const issuer = path[i]!;
    const link = linkProblem(path[i - 1]!, issuer);
    if (link) return link;
    const below = path.slice(0, i);
    const intermediates = below.slice(1).filter((c) => c.asn.subject !== c.asn.issuer).length;
    const {pathLength} = basicConstraints(issuer);
    if (pathLength !== null && intermediates > pathLength) {
      return `${issuer.asn.subject} allows ${pathLength} intermediate CA(s) below it, the chain has ${intermediates}`;
    }
    const constraints = nameConstraints(issuer, issuer.asn.subject);
    if (constraints) {
      for (const [depth, cert] of below.entries()) {
        if (cert.node.raw.equals(issuer.node.raw)) continue; // a CA checked against itself is not bound by its own constraints
        // Like OpenSSL, hold a common name to the constraints only on the leaf.
        const outside = namesOutside(constraints, depth === 0 ? constrainedNames(cert) : subjectAltNames(cert));
        if (outside.length > 0) {
          return `${outside.join(', ')} in ${cert.asn.subject} is outside the names ${issuer.asn.subject} may certify (permitted: ${[...constraints.permitted.dns, ...constraints.permitted.ip].join(', ') || 'none'})`;
        }
      }
    }
  }
  return null;
}

export type ChainResult =
  | {
      /** Leaf first, trust anchor last. */
      readonly path: readonly Certificate[];
      /** A CA the caller passed as trusted, or a self-signed root that came with the leaf. */
      readonly anchor: 'trusted-ca' | 'included-root';
    }
  | {readonly problem: string};

/**
 * Builds and checks the path from `leaf` to a trust anchor. With `trusted` CAs the path must end
 * at one of them; without, it must end at a self-signed root included among `bundled`. Among
 * several candidate issuers (a renewed or cross-signed CA) the first one that links and is valid
 * now wins.
 */
export function buildChain(leaf: Certificate, bundled: readonly Certificate[], trusted: readonly Certificate[], now: Date): ChainResult {
  const isTrusted = (c: Certificate): boolean => trusted.some((t) => t.node.raw.equals(c.node.raw));
  const pool = [...trusted, ...bundled];
  const path: Certificate[] = [leaf];
  for (;;) {
    const current = path[path.length - 1]!;
    const candidates = pool.filter((c) => c.asn.subject === current.asn.issuer && !path.includes(c));
    const links = candidates.filter((c) => linkProblem(current, c) === null);
    const issuer = links.find((c) => validityProblem(c, now) === null) ?? links[0];
    if (!issuer) {
      if (candidates[0]) return {problem: linkProblem(current, candidates[0])!};
      if (current.asn.subject === current.asn.issuer) return {problem: `it ends at ${current.asn.subject}, which is self-signed and not among the trusted CAs`};
      return {problem: `the issuer of ${current.asn.subject} (${current.asn.issuer}) is neither in the certificate file nor among the trusted CAs`};
    }
    path.push(issuer);
    const anchor = isTrusted(issuer) ? 'trusted-ca' : trusted.length === 0 && isSelfSigned(issuer) ? 'included-root' : undefined;
    if (anchor) {
      const problem = pathProblem(path, now);
      return problem ? {problem} : {path, anchor};
    }
    if (path.length > MAX_DEPTH) return {problem: `it is longer than ${MAX_DEPTH} certificates`};
  }
}
