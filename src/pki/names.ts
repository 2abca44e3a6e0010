/**
 * Names a certificate may carry, and the CA's name constraints over them.
 *
 * The CA is name-constrained (RFC 5280 §4.2.1.10) to the install's domain, the internal service
 * names and loopback, so a stolen CA key cannot mint a certificate that clients trusting it would
 * accept for anything else. dforge checks the same rules before issuing, so an out-of-bounds leaf
 * is refused here rather than by every client later.
 */

import {BlockList, isIP} from 'node:net';

import {UserError} from '../errors.js';
import {Tag, decodeAll, encode} from './der.js';
import {x509} from './x509.js';

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** Lower-cased, without a trailing dot; `*` only as a whole leftmost label, and only if allowed. */
export function normaliseDnsName(name: string, what: string, o: {allowWildcard: boolean}): string {
  const n = name.trim().toLowerCase().replace(/\.$/, '');
  const labels = n.split('.');
  const wildcard = o.allowWildcard && labels[0] === '*' && labels.length >= 3;
  const valid = n.length > 0 && n.length <= 253 && labels.every((l, i) => (i === 0 && wildcard) || LABEL.test(l));
  if (!valid) {
    throw new UserError(`${what} ${JSON.stringify(name)} is not a valid DNS name`, {
      nextSteps: [
        'Use letters, digits and hyphens in dot-separated labels (e.g. dforge.example.com)' +
          (o.allowWildcard ? ', optionally with a leading "*." label (e.g. *.dforge.example.com).' : '.'),
      ],
    });
  }
  return n;
}

/** A single IPv4 or IPv6 address, without zone or IPv4-mapped forms (X.509 stores raw bytes). */
export function normaliseIp(address: string, what: string): string {
  const a = address.trim().toLowerCase();
  const family = isIP(a);
  if (family === 0 || (family === 6 && a.includes('.'))) {
    throw new UserError(`${what} ${JSON.stringify(address)} is not a plain IPv4 or IPv6 address`, {
      nextSteps: ['Write the address without a zone or prefix, e.g. 127.0.0.1 or ::1.'],
    });
  }
  return a;
}

/**
 * Whether a certificate with these DNS SANs is valid for `domain` the way browsers decide it
 * (RFC 6125): an exact match, or `*.parent` matching exactly one label left of `parent`.
 */
export function dnsNamesCover(sanDns: readonly string[], domain: string): boolean {
  const d = domain.toLowerCase();
  return sanDns.some((san) => {
    const s = san.toLowerCase();
    if (s === d) return true;
    if (!s.startsWith('*.')) return false;
    const dot = d.indexOf('.');
    return dot > 0 && d.slice(dot + 1) === s.slice(2);
  });
}

/**
 * OpenSSL also holds a leaf's common name to the DNS constraints when the leaf has no DNS SAN and
 * the common name looks like a host name (dot-separated letters, digits and hyphens), so such a
 * common name is one more name to check.
 */
export function commonNameAsDns(commonName: string | undefined, sanDns: readonly string[]): string[] {
  return commonName !== undefined && sanDns.length === 0 && /^[a-z0-9-]+(\.[a-z0-9-]+)+$/i.test(commonName) ? [commonName.toLowerCase()] : [];
}

export interface NameSubtrees {
  readonly dns: readonly string[];
  /** CIDR ranges, e.g. `127.0.0.1/32`, `::1/128`. */
  readonly ip: readonly string[];
  /** rfc822Name subtrees: a mailbox, a host, or `.domain`; the empty string is every address. */
  readonly email: readonly string[];
  /** uniformResourceIdentifier subtrees, by host: `host`, or `.domain`; the empty string is every URI. */
  readonly uri: readonly string[];
}

export interface NameConstraints {
  readonly permitted: NameSubtrees;
  readonly excluded: NameSubtrees;
}

const emptySubtrees = (): {dns: string[]; ip: string[]; email: string[]; uri: string[]} => ({dns: [], ip: [], email: [], uri: []});

/** The DER value of a NameConstraints extension: permitted subtrees, then excluded ones (either part left out when empty). */
export function encodeNameConstraints(constraints: NameConstraints): Uint8Array {
  const subtrees = (s: NameSubtrees): Uint8Array[] =>
    [
      ...s.dns.map((d) => new x509.GeneralName('dns', d)),
      ...s.ip.map((cidr) => new x509.GeneralName('ip', cidr)),
      ...s.email.map((e) => new x509.GeneralName('email', e)),
      ...s.uri.map((u) => new x509.GeneralName('url', u)),
    ].map((name) => encode(Tag.sequence, new Uint8Array(name.rawData)));
  const permitted = subtrees(constraints.permitted);
  const excluded = subtrees(constraints.excluded);
  return encode(Tag.sequence, ...(permitted.length > 0 ? [encode(Tag.context0, ...permitted)] : []), ...(excluded.length > 0 ? [encode(Tag.context1, ...excluded)] : []));
}

/** Parses a NameConstraints extension value. Name forms other than DNS, IP, email and URI are ignored. */
export function decodeNameConstraints(value: Uint8Array): NameConstraints {
  const [outer] = decodeAll(value);
  if (outer?.tag !== Tag.sequence) throw new Error('NameConstraints is not a SEQUENCE');
  const permitted = emptySubtrees();
  const excluded = emptySubtrees();
  for (const part of decodeAll(outer.contents)) {
    const into = part.tag === Tag.context0 ? permitted : part.tag === Tag.context1 ? excluded : undefined;
    if (!into) continue;
    for (const subtree of decodeAll(part.contents)) {
      const [base] = decodeAll(subtree.contents);
      if (!base) throw new Error('GeneralSubtree without a base name');
      let name: x509.GeneralName;
      try {
        name = new x509.GeneralName(base.encoded);
      } catch {
        continue; // otherName, x400Address, ediPartyName: forms dforge never issues or checks
      }
      if (name.type === 'dns') into.dns.push(name.value.toLowerCase());
      else if (name.type === 'ip') into.ip.push(name.value);
      else if (name.type === 'email') into.email.push(name.value.toLowerCase());
      else if (name.type === 'url') into.uri.push(name.value.toLowerCase());
    }
  }
  return {permitted, excluded};
}

/** The same constraints, whatever the order of their subtrees. */
export function sameNameConstraints(a: NameConstraints, b: NameConstraints): boolean {
  const key = (s: NameSubtrees): string => JSON.stringify((['dns', 'ip', 'email', 'uri'] as const).map((k) => [...new Set(s[k].map((v) => v.toLowerCase()))].sort()));
  return key(a.permitted) === key(b.permitted) && key(a.excluded) === key(b.excluded);
}

/**
 * OpenSSL's reading of a DNS subtree: `example.com` covers itself and every name below it, and a
 * leading dot (`.example.com`) covers only the names below it.
 */
function dnsInSubtree(name: string, subtree: string): boolean {
  const s = subtree.toLowerCase();
  if (s === '') return true;
  if (s.startsWith('.')) return name.endsWith(s);
  return name === s || name.endsWith(`.${s}`);
}

function ipInSubtrees(address: string, cidrs: readonly string[]): boolean {
  const family = isIP(address) === 4 ? 'ipv4' : 'ipv6';
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [net, prefix] = cidr.split('/');
    const netFamily = isIP(net ?? '') === 4 ? 'ipv4' : 'ipv6';
    if (net && netFamily === family) list.addSubnet(net, Number(prefix), netFamily);
  }
  return list.check(address, family);
}

/** RFC 5280 §4.2.1.10 for rfc822Name: a mailbox exactly, a host exactly, or `.domain` for any host below it. */
function emailInSubtree(address: string, subtree: string): boolean {
  const s = subtree.toLowerCase();
  if (s === '') return true;
  if (s.includes('@')) return address === s;
  const host = address.slice(address.lastIndexOf('@') + 1);
  return s.startsWith('.') ? host.endsWith(s) : host === s;
}

/** RFC 5280 §4.2.1.10 for URIs: the constraint applies to the host part; a URI without a host matches no host subtree. */
function uriInSubtree(uri: string, subtree: string): boolean {
  const s = subtree.toLowerCase();
  if (s === '') return true;
  let host: string;
  try {
    host = new URL(uri).hostname.toLowerCase();
  } catch {
    return false;
  }
  if (host === '') return false;
  return s.startsWith('.') ? host.endsWith(s) : host === s;
}

/**
 * The names that the constraints do not allow: each name must lie in some permitted subtree of
 * its type (when the CA lists any of that type) and in no excluded subtree.
 */
export function namesOutside(constraints: NameConstraints, names: Partial<NameSubtrees> & Pick<NameSubtrees, 'dns' | 'ip'>): string[] {
  const {permitted, excluded} = constraints;
  const outside = (values: readonly string[], allowed: readonly string[], denied: readonly string[], inside: (name: string, subtree: string) => boolean): string[] =>
    values.filter((raw) => {
      const n = raw.toLowerCase();
      return (allowed.length > 0 && !allowed.some((s) => inside(n, s))) || denied.some((s) => inside(n, s));
    });
  const badIp = names.ip.filter(
    (a) => (permitted.ip.length > 0 && !ipInSubtrees(a, permitted.ip)) || (excluded.ip.length > 0 && ipInSubtrees(a, excluded.ip)),
  );
  return [
    ...outside(names.dns, permitted.dns, excluded.dns, dnsInSubtree),
    ...badIp,
    ...outside(names.email ?? [], permitted.email, excluded.email, emailInSubtree),
    ...outside(names.uri ?? [], permitted.uri, excluded.uri, uriInSubtree),
  ];
}
