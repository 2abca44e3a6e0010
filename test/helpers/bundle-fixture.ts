import {createHash, generateKeyPairSync, randomBytes, sign, type KeyObject} from 'node:crypto';
import {createWriteStream, promises as fs} from 'node:fs';
import path from 'node:path';
import {once} from 'node:events';

import {Header, type HeaderData} from 'tar';

import {BUNDLE_FORMAT, BUNDLE_JSON, BUNDLE_SIGNATURE, EXECUTABLE, MEDIA_TYPES, OCI_INDEX, OCI_LAYOUT, blobPath, partName, partsIndexFile, serializeManifest, type BundleEntry, type BundleImage, type BundleManifest, type PartsIndex} from '../../src/bundle/manifest.js';
import {BLOCK, END_OF_ARCHIVE, encodeEntryHeader, paddedSize} from '../../src/bundle/tar-blocks.js';
import {publicKeySha256} from '../../src/pki/ed25519.js';

/**
 * Real bundles, byte for byte as docs/formats.md describes, built from in-memory content, so the
 * reader is tested against the format rather than against the writer under test elsewhere.
 */

export type Content = Buffer | {size: number; chunks: () => Iterable<Buffer>};

export interface FixtureEntry {
  path: string;
  kind: BundleEntry['kind'];
  content: Content;
  mode?: 0o644 | 0o755;
  /** What the tar header says instead of the manifest entry: hostile archives. */
  header?: {path?: string; type?: NonNullable<HeaderData['type']>; mode?: number; linkpath?: string};
  /** In the tar but not in bundle.json: an entry smuggled in on the way. */
  unlisted?: boolean;
}

export interface SigningKey {
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicKeyFile: string;
  fingerprint: string;
}

export async function signingKey(dir: string, name = 'bundle-signing'): Promise<SigningKey> {
  const {privateKey, publicKey} = generateKeyPairSync('ed25519');
  const publicKeyFile = path.join(dir, `${name}.pub`);
  await fs.writeFile(publicKeyFile, publicKey.export({type: 'spki', format: 'pem'}));
  return {privateKey, publicKey, publicKeyFile, fingerprint: publicKeySha256(publicKey)};
}

export interface FixtureOptions {
  dir: string;
  name?: string;
  key?: SigningKey | null;
  /** Layer contents per image; an identical Buffer in two images is one shared blob. */
  images?: Array<{ref: string; layers: Content[]; sbomComponents?: number}>;
  templates?: Record<string, string>;
  executable?: Buffer | null;
  /** Entries added after the templates, listed in bundle.json. */
  extra?: FixtureEntry[];
  /** Split into parts of this many bytes (a multiple of 512). */
  split?: number;
}

export interface Fixture {
  file: string;
  manifest: BundleManifest;
  manifestBytes: Buffer;
  /** Where each entry's header starts, by path (bundle.json and its signature included). */
  headerOffsets: Map<string, number>;
  parts: string[];
}

const size = (c: Content): number => (Buffer.isBuffer(c) ? c.length : c.size);
const chunksOf = (c: Content): Iterable<Buffer> => (Buffer.isBuffer(c) ? [c] : c.chunks());
function sha256(c: Content): string {
  const h = createHash('sha256');
  for (const chunk of chunksOf(c)) h.update(chunk);
  return h.digest('hex');
}

/** A large layer without holding it in memory: the same random MiB repeated, with a counter. */
export function bigLayer(bytes: number): Content {
  const unit = randomBytes(1024 * 1024);
  return {
    size: bytes,
    *chunks() {
      for (let done = 0, i = 0; done < bytes; i++) {
        const chunk = Buffer.from(unit.subarray(0, Math.min(unit.length, bytes - done)));
        chunk.writeUInt32BE(i, 0);
        done += chunk.length;
        yield chunk;
      }
    },
  };
}

export const defaultImages = (): NonNullable<FixtureOptions['images']> => {
  const shared = randomBytes(3000);
  return [
    {ref: 'dforge/app:1.4.2', layers: [shared, randomBytes(5000)], sbomComponents: 3},
    {ref: 'dforge/proxy:1.4.2', layers: [shared, randomBytes(700)]},
  ];
};

export async function buildBundle(options: FixtureOptions): Promise<Fixture> {
  const createdAt = '2026-11-28T12:00:00.000Z';
  const entries: FixtureEntry[] = [{path: OCI_LAYOUT, kind: 'oci-layout', content: Buffer.from('{"imageLayoutVersion":"1.0.0"}')}];
  const blobs = new Map<string, Content>();
  const images: BundleImage[] = [];
  const sboms: FixtureEntry[] = [];
  const addBlob = (c: Content): {digest: string; size: number} => {
    const digest = `sha256:${sha256(c)}`;
    if (!blobs.has(digest)) {
      blobs.set(digest, c);
      entries.push({path: blobPath(digest), kind: 'blob', content: c});
    }
    return {digest, size: size(c)};
  };
  for (const image of options.images ?? defaultImages()) {
    const layers = image.layers.map(addBlob);
    const config = addBlob(Buffer.from(JSON.stringify({architecture: 'amd64', os: 'linux', rootfs: {type: 'layers', diff_ids: layers.map((l) => l.digest)}})));
    const manifestJson = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.manifest,
        config: {mediaType: MEDIA_TYPES.config, ...config},
        layers: layers.map((l) => ({mediaType: MEDIA_TYPES.layer, ...l})),
      }),
    );
    const manifest = addBlob(manifestJson);
    const entry: BundleImage = {ref: image.ref, manifest, config, layers};
    if (image.sbomComponents !== undefined) {
      const sbomPath = `sbom/${image.ref.replaceAll(/[/:]/g, '_')}.cdx.json`;
      entry.sbom = sbomPath;
      const components = Array.from({length: image.sbomComponents}, (_, i) => ({type: 'library', name: `pkg${i}`, version: '1.0'}));
      sboms.push({path: sbomPath, kind: 'sbom', content: Buffer.from(JSON.stringify({bomFormat: 'CycloneDX', specVersion: '1.5', components}))});
    }
    images.push(entry);
  }
  entries.push({
    path: OCI_INDEX,
    kind: 'oci-index',
    content: Buffer.from(JSON.stringify({schemaVersion: 2, mediaType: MEDIA_TYPES.index, manifests: images.map((i) => ({mediaType: MEDIA_TYPES.manifest, ...i.manifest, annotations: {'org.opencontainers.image.ref.name': i.ref}}))})),
  });
  entries.push(...sboms);
  const templates = options.templates ?? {'templates/compose/docker-compose.yml': 'services: {}\n', 'templates/k8s/app.yaml': 'kind: Deployment\n'};
  for (const [p, text] of Object.entries(templates).sort(([a], [b]) => (a < b ? -1 : 1))) entries.push({path: p, kind: 'template', content: Buffer.from(text)});
  if (options.executable !== null) entries.push({path: EXECUTABLE, kind: 'executable', content: options.executable ?? Buffer.from('#!/bin/sh\necho dforge\n'), mode: 0o755});
  entries.push(...(options.extra ?? []));

  const key = options.key === undefined ? null : options.key;
  const manifest: BundleManifest = {
    format: BUNDLE_FORMAT,
    kind: 'dforge-bundle',
    dforgeVersion: '0.9.0',
    release: '1.4.2',
    createdAt,
    signer: key === null ? null : {algorithm: 'Ed25519', publicKeySha256: key.fingerprint},
    images,
    entries: entries.filter((e) => e.unlisted !== true).map((e) => ({path: e.path, kind: e.kind, size: size(e.content), sha256: sha256(e.content), mode: e.mode ?? 0o644})),
  };
  const manifestBytes = serializeManifest(manifest);
  const tail: FixtureEntry[] = [{path: BUNDLE_JSON, kind: 'template', content: manifestBytes}];
  if (key !== null) tail.push({path: BUNDLE_SIGNATURE, kind: 'template', content: sign(null, manifestBytes, key.privateKey)});

  const file = path.join(options.dir, options.name ?? 'release.bundle');
  const out = createWriteStream(file);
  const headerOffsets = new Map<string, number>();
  let offset = 0;
  const put = async (buf: Buffer): Promise<void> => {
    offset += buf.length;
    if (!out.write(buf)) await once(out, 'drain');
  };
  for (const e of [...entries, ...tail]) {
    headerOffsets.set(e.path, offset);
    await put(e.header === undefined ? encodeEntryHeader({path: e.path, size: size(e.content), mode: e.mode ?? 0o644, mtime: new Date(createdAt)}) : rawHeader(e, size(e.content)));
    for (const chunk of chunksOf(e.content)) await put(chunk);
    await put(Buffer.alloc(paddedSize(size(e.content)) - size(e.content)));
  }
  await put(END_OF_ARCHIVE);
  out.end();
  await once(out, 'close');

  const parts: string[] = [];
  if (options.split !== undefined) parts.push(...(await splitBundle(file, options.split, manifestBytes, key)));
  return {file, manifest, manifestBytes, headerOffsets, parts};
}

/** A header the format never writes (links, devices, setuid, odd names), for hostile archives. */
function rawHeader(e: FixtureEntry, contentSize: number): Buffer {
  const type = e.header?.type ?? 'File';
  const block = Buffer.alloc(BLOCK);
  new Header({path: e.header?.path ?? e.path, mode: e.header?.mode ?? e.mode ?? 0o644, uid: 0, gid: 0, size: type === 'File' ? contentSize : 0, mtime: new Date(0), type, linkpath: e.header?.linkpath ?? ''}).encode(block, 0);
  return block;
}

async function splitBundle(file: string, partSize: number, manifestBytes: Buffer, key: SigningKey | null): Promise<string[]> {
  const whole = await fs.readFile(file);
  await fs.rm(file);
  const parts: PartsIndex['parts'] = [];
  const names: string[] = [];
  for (let i = 0, at = 0; at < whole.length; i++, at += partSize) {
    const bytes = whole.subarray(at, at + partSize);
    const name = partName(file, i);
    await fs.writeFile(name, bytes);
    names.push(name);
    parts.push({name: path.basename(name), size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex')});
  }
  const index: PartsIndex = {
    format: BUNDLE_FORMAT,
    kind: 'dforge-bundle-parts',
    bundleJsonSha256: createHash('sha256').update(manifestBytes).digest('hex'),
    signer: key === null ? null : {algorithm: 'Ed25519', publicKeySha256: key.fingerprint},
    parts,
  };
  const indexBytes = serializeManifest(index);
  await fs.writeFile(partsIndexFile(file), indexBytes);
  if (key !== null) await fs.writeFile(`${partsIndexFile(file)}.sig`, sign(null, indexBytes, key.privateKey));
  return names;
}

/** Flips one byte at an absolute offset of a file (a part, or the whole bundle). */
export async function flipByte(file: string, offset: number): Promise<void> {
  const handle = await fs.open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await handle.read(b, 0, 1, offset);
    b[0] = b[0]! ^ 0xff;
    await handle.write(b, 0, 1, offset);
  } finally {
    await handle.close();
  }
}

/** The offset of the first content byte of an entry. */
export const contentOffset = (fixture: Fixture, entryPath: string): number => fixture.headerOffsets.get(entryPath)! + BLOCK;
