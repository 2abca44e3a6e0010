import {BLOCK, decodeEntryHeader, paddedSize} from './tar-blocks.js';

/**
 * CycloneDX 1.5 SBOMs from the dpkg database inside an image's layers. The scanner reads a layer
 * tar as it streams into the bundle (no second read, no staging), keeping only
 * var/lib/dpkg/status, capped in size.
 */

const STATUS_PATH = 'var/lib/dpkg/status';
const STATUS_WHITEOUTS = new Set(['var/lib/dpkg/.wh.status', 'var/lib/dpkg/.wh..wh..opq', 'var/lib/.wh.dpkg', 'var/.wh.lib']);
/** A status file larger than this is not a real dpkg database; the image gets no SBOM. */
export const STATUS_MAX_BYTES = 32 * 1024 * 1024;
/** pax headers carry long names; anything larger is not a layer tar we understand. */
const PAX_MAX_BYTES = 1024 * 1024;

/** What a layer says about the dpkg database: replaced (bytes), deleted, or untouched. */
export type LayerStatus = {kind: 'status'; bytes: Buffer} | {kind: 'whiteout'} | {kind: 'none'};

/** Fed a layer tar chunk by chunk; never buffers more than one header, a pax record or the status file. */
export class DpkgStatusScanner {
  private header = Buffer.alloc(0);
  /** Bytes of the current entry's content (and padding) still to pass. */
  private remaining = 0;
  private contentLeft = 0;
  private capture: Buffer[] | undefined;
  private captureKind: 'status' | 'pax' | 'long' | undefined;
  private paxPath: string | undefined;
  private ended = false;
  private result: LayerStatus = {kind: 'none'};

  write(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && !this.ended) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.length - at);
        const contentTake = Math.min(take, this.contentLeft);
        if (this.capture && contentTake > 0) this.capture.push(chunk.subarray(at, at + contentTake));
        this.contentLeft -= contentTake;
        this.remaining -= take;
        at += take;
        if (this.remaining === 0) this.finishEntry();
        continue;
      }
      const need = BLOCK - this.header.length;
      this.header = Buffer.concat([this.header, chunk.subarray(at, at + need)]);
      at += Math.min(need, chunk.length - at);
      if (this.header.length === BLOCK) this.startEntry();
    }
  }

  /** The layer's verdict; a malformed layer tar yields 'none' (the SBOM is a convenience, integrity is checked by hash). */
  done(): LayerStatus {
    return this.result;
  }

  private startEntry(): void {
    const block = this.header;
    this.header = Buffer.alloc(0);
    const h = decodeEntryHeader(block);
    if (h.nullBlock || !h.cksumValid) {
      this.ended = true;
      return;
    }
    const name = normalise(this.paxPath ?? h.path);
    this.paxPath = undefined;
    this.contentLeft = h.size;
    this.remaining = paddedSize(h.size);
    this.capture = undefined;
    this.captureKind = undefined;
    if ((h.typeKey === 'x' || h.typeKey === 'L') && h.size <= PAX_MAX_BYTES) {
      this.capture = [];
      this.captureKind = h.typeKey === 'x' ? 'pax' : 'long';
    } else if (STATUS_WHITEOUTS.has(name)) {
      this.result = {kind: 'whiteout'};
    } else if (name === STATUS_PATH && (h.typeKey === '0' || h.typeKey === '') && h.size <= STATUS_MAX_BYTES) {
      this.capture = [];
      this.captureKind = 'status';
    }
    if (this.remaining === 0) this.finishEntry();
  }

  private finishEntry(): void {
    const bytes = this.capture ? Buffer.concat(this.capture) : undefined;
    this.capture = undefined;
    if (bytes === undefined) return;
    if (this.captureKind === 'long') {
      this.paxPath = bytes.toString('utf8').replace(/\0.*$/s, '');
    } else if (this.captureKind === 'pax') {
      this.paxPath = paxPathOf(bytes);
    } else if (this.captureKind === 'status') {
      this.result = {kind: 'status', bytes};
    }
    this.captureKind = undefined;
  }
}

function normalise(name: string): string {
  return name.replace(/^(\.\/)+/, '').replace(/^\/+/, '');
}

/** pax records are "<len> key=value\n"; only `path` matters here. */
function paxPathOf(bytes: Buffer): string | undefined {
  let at = 0;
  let found: string | undefined;
  while (at < bytes.length) {
    const space = bytes.indexOf(0x20, at);
    if (space < 0) break;
    const len = Number(bytes.subarray(at, space).toString('ascii'));
    if (!Number.isInteger(len) || len <= 0) break;
    const record = bytes.subarray(space + 1, at + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (record.slice(0, eq) === 'path') found = record.slice(eq + 1);
    at += len;
  }
  return found;
}

/** The dpkg status of an image: the top-most layer that replaces or deletes it decides. */
export function imageStatus(layers: readonly LayerStatus[]): Buffer | undefined {
  for (let i = layers.length - 1; i >= 0; i--) {
    const l = layers[i]!;
    if (l.kind === 'status') return l.bytes;
    if (l.kind === 'whiteout') return undefined;
  }
  return undefined;
}

export interface DebPackage {
  readonly name: string;
  readonly version: string;
  readonly architecture: string;
  /** The source package (name only), when dpkg records one that differs from the binary's. */
  readonly source: string;
}

/** Installed packages from a dpkg status file (RFC 822-style stanzas, continuation lines start with a space). */
export function parseDpkgStatus(text: string): DebPackage[] {
  const packages: DebPackage[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const line of stanza.split('\n')) {
      if (line === '' || line.startsWith(' ') || line.startsWith('\t')) continue;
      const colon = line.indexOf(':');
      if (colon > 0) fields.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
    }
    const name = fields.get('package');
    const version = fields.get('version');
    if (!name || !version || !/\binstalled$/.test(fields.get('status') ?? '') || !(fields.get('status') ?? '').includes(' ok ')) continue;
    // "Source: name (version)" when the source version differs; only the name is recorded.
    const source = (fields.get('source') ?? name).split(' ')[0]!;
    packages.push({name, version, architecture: fields.get('architecture') ?? 'all', source});
  }
  return packages.sort((a, b) => cmp(a.name, b.name) || cmp(a.architecture, b.architecture) || cmp(a.version, b.version));
}

const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** The package URL of a Debian package (purl spec: version percent-encoded, so an epoch's ':' is %3A). */
export const debPurl = (p: DebPackage): string => `pkg:deb/debian/${encodeURIComponent(p.name)}@${encodeURIComponent(p.version)}?arch=${encodeURIComponent(p.architecture)}`;

/** CycloneDX 1.5 JSON, deterministic: same packages, same bytes (no serial number, the bundle's createdAt as timestamp). */
export function cycloneDxBytes(image: {ref: string; configDigest: string}, packages: readonly DebPackage[], createdAt: string): Buffer {
  const bom = {
    bomFormat: 'CycloneDX',
    specVersion: '1.5',
    version: 1,
    metadata: {
      timestamp: createdAt,
      tools: {components: [{type: 'application', name: 'dforge'}]},
      component: {type: 'container', name: image.ref, version: image.configDigest, 'bom-ref': image.configDigest},
    },
    components: packages.map((p) => ({
      type: 'library',
      'bom-ref': debPurl(p),
      name: p.name,
      version: p.version,
      purl: debPurl(p),
      properties: [{name: 'dforge:deb:source', value: p.source}],
    })),
  };
  return Buffer.from(`${JSON.stringify(bom, null, 2)}\n`);
}

/** Characters of the reference kept in an SBOM file name. */
const SBOM_REF_CHARS = 64;

/**
 * The file name of an image's SBOM under sbom/: the reference with every character outside
 * [A-Za-z0-9._-] replaced by '_', cut to 64 characters, then '-' and the first 12 hex digits of
 * the config digest. The reference part is for people; the digest part keeps names distinct
 * where references map to one name (a/b:1 and a_b:1, tags differing only in case, long
 * references cut alike). At most 86 bytes, so sbom/<name> fits a ustar header (name field 100,
 * split at the slash) and LIMITS.pathBytes.
 */
export const sbomFileName = (ref: string, configDigest: string): string =>
  `${ref.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, SBOM_REF_CHARS)}-${configDigest.replace(/^sha256:/, '').slice(0, 12)}.cdx.json`;
