import {createHash, verify as cryptoVerify, type Hash, type KeyObject} from 'node:crypto';
import {createReadStream} from 'node:fs';
import path from 'node:path';
import {buffer} from 'node:stream/consumers';

import {UserError, VerificationError} from '../errors.js';
import {publicKeySha256} from '../pki/ed25519.js';
import type {InstallDir} from '../state/install-dir.js';
import {byteProgress} from '../ui/bytes.js';
import {collisionKey, entryNameProblem, locateEntries, type LocatedEntry} from './entries.js';
import {BLOBS_PREFIX, BUNDLE_JSON, BUNDLE_SIGNATURE, EXECUTABLE, LIMITS, MEDIA_TYPES, OCI_INDEX, OCI_LAYOUT, SBOM_PREFIX, TEMPLATES_PREFIX, blobPath, parseBundleManifest, type BundleManifest, type EntryKind} from './manifest.js';
import {openBundleSource, readRange, type BundleSource} from './source.js';
import {BLOCK, decodeEntryHeader, paddedSize} from './tar-blocks.js';
import {bundleTrustFrom, configuredTrustedKeyFiles, recordUnsignedAllowed, type BundleTrust, type UnsignedAudit} from './trust.js';
import type {VerifiedBundle} from './verified-bundle.js';

const GET_AGAIN = 'Do not use this bundle. Get it again from whoever built it, and check it with: dforge bundle verify FILE --trusted-key PUB';
const SIGNATURE_BYTES = 64;

const tamper = (message: string, data: Record<string, unknown>, nextSteps: string[] = [GET_AGAIN]): VerificationError => new VerificationError(message, {nextSteps, data});

interface ReadEntry {
  path: string;
  size: number;
  mode: number;
  sha256: string;
}

/**
 * One streaming pass over the whole bundle: part sizes and hashes, every tar header, every entry's
 * hash, then bundle.json's signature and the cross-checks. Memory holds only bundle.json, its
 * signature and the list of entries read; small JSON blobs are read again by offset afterwards.
 */
export async function verifyBundle(source: BundleSource, trust: BundleTrust, options: {progress?: (done: number, total: number) => void} = {}): Promise<VerifiedBundle> {
  const partsIndex = source.partsIndex;
  if (partsIndex !== undefined) checkSignature(partsIndex.bytes, partsIndex.signature, trust, path.basename(`${source.file}.parts.json`));
  const parser = new TarPass();
  let done = 0;
  for (const [i, part] of source.parts.entries()) {
    const expected = partsIndex?.index.parts[i];
    const name = expected?.name ?? path.basename(part.path);
    if (expected !== undefined && expected.size !== part.size) throw tamper(`part ${name} is ${part.size} bytes; the signed parts index says ${expected.size}`, {reason: 'part', part: name}, [`Copy ${name} again from the original medium, then run dforge bundle verify again.`, GET_AGAIN]);
    const hash = createHash('sha256');
    // In a split bundle a damaged or misplaced part shows up first as a bad header; the rest of
    // the part is still hashed so the error names the part, the cause, rather than the symptom.
    let failure: unknown;
    for await (const chunk of createReadStream(part.path, {highWaterMark: 1024 * 1024}) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      done += chunk.length;
      options.progress?.(done, source.totalBytes);
      if (failure !== undefined) continue;
      try {
        parser.write(chunk);
      } catch (err) {
        if (expected === undefined) throw err;
        failure = err;
      }
    }
    const partIntact = expected === undefined || hash.digest('hex') === expected.sha256;
    if (partIntact && failure !== undefined) throw failure;
    if (!partIntact) throw tamper(`part ${name} does not match the sha256 in the signed parts index (parts out of order or damaged)`, {reason: 'part', part: name}, [`Copy ${name} again from the original medium, then run dforge bundle verify again.`, GET_AGAIN]);
  }
  const {entries, manifestBytes, signature} = parser.finish();

  const manifestSha256 = createHash('sha256').update(manifestBytes).digest('hex');
  if (partsIndex !== undefined && partsIndex.index.bundleJsonSha256 !== manifestSha256) throw tamper(`the parts index belongs to another bundle.json (sha256 ${partsIndex.index.bundleJsonSha256}, this one is ${manifestSha256})`, {reason: 'parts', entry: BUNDLE_JSON});
  const signer = checkSignature(manifestBytes, signature, trust, BUNDLE_JSON);
  const manifest = parseBundleManifest(manifestBytes, BUNDLE_JSON);
  if ((manifest.signer?.publicKeySha256 ?? null) !== (signer?.publicKeySha256 ?? null)) throw tamper(`bundle.json names signer ${manifest.signer?.publicKeySha256 ?? 'none'} but was signed by ${signer?.publicKeySha256 ?? 'no one'}`, {reason: 'signer', entry: BUNDLE_JSON});
  if (partsIndex !== undefined && (partsIndex.index.signer?.publicKeySha256 ?? null) !== (signer?.publicKeySha256 ?? null)) throw tamper('the parts index and bundle.json name different signers', {reason: 'signer', entry: BUNDLE_JSON});

  compareEntries(entries, manifest);
  const verifiedSoFar: VerifiedBundle = {source, manifest, manifestSha256, signer, bytes: source.totalBytes};
  await crossCheckImages(verifiedSoFar);
  return verifiedSoFar;
}

/** Which signature outcome is a refusal (exit 1: the operator must decide) and which is tamper (exit 6). */
function checkSignature(bytes: Buffer, signature: Buffer | null, trust: BundleTrust, what: string): {publicKeySha256: string} | null {
  const claimed = claimedSigner(bytes);
  if (signature === null) {
    if (claimed !== null) throw tamper(`${what} names signer ${claimed} but its signature is missing`, {reason: 'signature', entry: `${what}.sig`});
    // A trusted key says the operator expects a signed bundle: an unsigned one is what stripping the signature looks like.
    if (trust.trustedKeys.length > 0) throw tamper(`${what} is unsigned, but a trusted key was given: this bundle is not the signed one you expect`, {reason: 'unsigned', entry: what});
    if (!trust.allowUnsigned) {
      throw new UserError(`${what} is unsigned: refused`, {
        nextSteps: ['Use a bundle signed with dforge bundle create --key, and pass its public key with --trusted-key.', 'Only if you know where this bundle came from: pass --allow-unsigned (it is written to the ops log).'],
        data: {reason: 'unsigned', entry: what},
      });
    }
    return null;
  }
  if (signature.length !== SIGNATURE_BYTES) throw tamper(`${what}.sig is ${signature.length} bytes, not a ${SIGNATURE_BYTES}-byte Ed25519 signature`, {reason: 'signature', entry: `${what}.sig`});
  if (trust.trustedKeys.length === 0) {
    throw new UserError(`${what} is signed by key ${claimed ?? '(unnamed)'}, but no trusted bundle key is configured`, {
      nextSteps: ['Pass the signer\'s public key: dforge bundle verify F --trusted-key bundle-signing.pub', 'Or list it in dforge.yaml under bundles.trustedKeys.', `Check that the key you pass has this fingerprint: ${claimed ?? '(unnamed)'} (openssl pkey -pubin -in KEY -outform DER | sha256sum).`],
      data: {reason: 'no-trusted-key', signer: claimed},
    });
  }
  const match = trust.trustedKeys.find((k: KeyObject) => publicKeySha256(k) === claimed);
  if (match === undefined) {
    const trusted = trust.trustedKeys.map((k) => publicKeySha256(k));
    throw tamper(`${what} is signed by key ${claimed ?? '(unnamed)'}, which is not a trusted key (trusted: ${trusted.join(', ')})`, {reason: 'untrusted-signer', entry: what, signer: claimed, trusted}, ['Pass the right public key with --trusted-key, or get the bundle from whoever holds the trusted key.', GET_AGAIN]);
  }
  if (!cryptoVerify(null, bytes, match, signature)) throw tamper(`the signature over ${what} does not verify with trusted key ${claimed}: ${what} or its signature was changed`, {reason: 'signature', entry: what});
  return {publicKeySha256: claimed!};
}

/** The signer the bytes claim, read only to pick a key and to name it in messages; the signature decides. */
function claimedSigner(bytes: Buffer): string | null {
  try {
    const value = JSON.parse(bytes.toString('utf8')) as {signer?: {publicKeySha256?: unknown} | null};
    const fp = value.signer?.publicKeySha256;
    return typeof fp === 'string' && /^[0-9a-f]{64}$/.test(fp) ? fp : null;
  } catch {
    return null;
  }
}

function expectedKind(name: string): EntryKind | null {
  if (name === OCI_LAYOUT) return 'oci-layout';
  if (name === OCI_INDEX) return 'oci-index';
  if (name === EXECUTABLE) return 'executable';
  if (name.startsWith(BLOBS_PREFIX)) return 'blob';
  if (name.startsWith(SBOM_PREFIX)) return 'sbom';
  if (name.startsWith(TEMPLATES_PREFIX)) return 'template';
  return null;
}

function compareEntries(read: readonly ReadEntry[], manifest: BundleManifest): void {
  const listed = manifest.entries;
  for (let i = 0; i < Math.max(read.length, listed.length); i++) {
    const got = read[i];
    const want = listed[i];
    if (got === undefined) throw tamper(`bundle entry ${want!.path} is listed in bundle.json but missing from the archive`, {reason: 'missing', entry: want!.path});
    if (want === undefined) throw tamper(`bundle entry ${got.path} is in the archive but not listed in bundle.json`, {reason: 'extra', entry: got.path});
    if (got.path !== want.path) throw tamper(`bundle entry ${i + 1} is ${got.path}, but bundle.json lists ${want.path} there (an entry was added, removed or moved)`, {reason: 'order', entry: got.path});
    if (got.size !== want.size) throw tamper(`bundle entry ${got.path} is ${got.size} bytes; bundle.json says ${want.size}`, {reason: 'size', entry: got.path});
    if (got.sha256 !== want.sha256) throw tamper(`bundle entry ${got.path} does not match its sha256 in bundle.json`, {reason: 'hash', entry: got.path});
    if (got.mode !== want.mode) throw tamper(`bundle entry ${got.path} has mode ${got.mode.toString(8)}; bundle.json says ${want.mode.toString(8)}`, {reason: 'mode', entry: got.path});
    if (expectedKind(want.path) !== want.kind) throw tamper(`bundle entry ${want.path} is listed as kind ${want.kind}, which its name does not allow`, {reason: 'kind', entry: want.path});
    if (want.kind === 'blob' && want.path !== blobPath(`sha256:${want.sha256}`)) throw tamper(`blob ${want.path} does not hash to its name (sha256 ${want.sha256})`, {reason: 'blob-digest', entry: want.path});
  }
}

async function readSmall(verified: VerifiedBundle, entry: LocatedEntry): Promise<unknown> {
  if (entry.size > LIMITS.smallEntryBytes) throw tamper(`bundle entry ${entry.path} is too large to be the JSON it should be (${entry.size} bytes)`, {reason: 'size', entry: entry.path});
  const bytes = await buffer(readRange(verified.source, entry.contentOffset, entry.size));
  // Read again after the pass: it must still be the bytes that were hashed.
  if (createHash('sha256').update(bytes).digest('hex') !== entry.sha256) throw tamper(`bundle entry ${entry.path} changed during verification`, {reason: 'entry-changed', entry: entry.path});
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw tamper(`bundle entry ${entry.path} is not JSON`, {reason: 'json', entry: entry.path});
  }
}

/** oci/index.json and every image manifest blob must say what bundle.json's images say. */
async function crossCheckImages(verified: VerifiedBundle): Promise<void> {
  const {manifest} = verified;
  const located = new Map(locateEntries(manifest).map((e) => [e.path, e]));
  const omitted = new Set(manifest.base?.omittedBlobs ?? []);
  const need = (digest: string, what: string): LocatedEntry | undefined => {
    const entry = located.get(blobPath(digest));
    if (entry === undefined && !omitted.has(digest)) throw tamper(`${what} ${digest} is not in the bundle (and not omitted by a delta base)`, {reason: 'missing', entry: blobPath(digest)});
    return entry;
  };
  const indexEntry = located.get(OCI_INDEX);
  if (indexEntry === undefined) throw tamper('the bundle has no oci/index.json', {reason: 'missing', entry: OCI_INDEX});
  const index = (await readSmall(verified, indexEntry)) as {manifests?: Array<{digest?: unknown; size?: unknown; annotations?: Record<string, unknown>}>};
  const listed = Array.isArray(index.manifests) ? index.manifests : [];
  const wanted = manifest.images.map((i) => `${i.ref} ${i.manifest.digest} ${i.manifest.size}`).sort();
  const got = listed.map((m) => `${String(m.annotations?.['org.opencontainers.image.ref.name'])} ${String(m.digest)} ${String(m.size)}`).sort();
  if (JSON.stringify(wanted) !== JSON.stringify(got)) throw tamper('oci/index.json does not name the images bundle.json lists', {reason: 'oci-index', entry: OCI_INDEX});
  for (const image of manifest.images) {
    const entry = need(image.manifest.digest, `the manifest of ${image.ref}`);
    need(image.config.digest, `the config of ${image.ref}`);
    for (const layer of image.layers) need(layer.digest, `a layer of ${image.ref}`);
    if (image.sbom !== undefined && !located.has(image.sbom)) throw tamper(`the SBOM of ${image.ref} (${image.sbom}) is not in the bundle`, {reason: 'missing', entry: image.sbom});
    if (entry === undefined) continue;
    if (entry.size !== image.manifest.size) throw tamper(`the manifest blob of ${image.ref} is ${entry.size} bytes; bundle.json says ${image.manifest.size}`, {reason: 'image-manifest', entry: entry.path});
    const body = (await readSmall(verified, entry)) as {mediaType?: unknown; config?: {digest?: unknown; size?: unknown}; layers?: Array<{digest?: unknown; size?: unknown}>};
    const same =
      body.mediaType === MEDIA_TYPES.manifest &&
      body.config?.digest === image.config.digest &&
      body.config.size === image.config.size &&
      Array.isArray(body.layers) &&
      body.layers.length === image.layers.length &&
      body.layers.every((l, i) => l.digest === image.layers[i]!.digest && l.size === image.layers[i]!.size);
    if (!same) throw tamper(`the manifest blob of ${image.ref} (${entry.path}) does not agree with bundle.json's config and layers`, {reason: 'image-manifest', entry: entry.path});
  }
}

/**
 * The tar at block level, fed chunk by chunk: checks each header as it arrives and hashes content
 * without keeping it, except bundle.json and its signature.
 */
class TarPass {
  private offset = 0;
  private header = Buffer.alloc(0);
  private current: {path: string; size: number; mode: number; hash: Hash; left: number; pad: number; keep: Buffer[] | null} | null = null;
  private ended = false;
  private endedAt = 0;
  private readonly entries: ReadEntry[] = [];
  private readonly keys = new Set<string>();
  private manifestBytes: Buffer | null = null;
  private signature: Buffer | null = null;

  write(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.ended) {
        // Only zero padding may follow the end-of-archive blocks.
        const rest = chunk.subarray(at);
        if (rest.some((b) => b !== 0)) throw tamper(`the bundle has data after the end of the archive (at byte ${this.offset})`, {reason: 'trailing', offset: this.offset});
        this.offset += rest.length;
        return;
      }
      const cur = this.current;
      if (cur === null) {
        const take = Math.min(BLOCK - this.header.length, chunk.length - at);
        this.header = Buffer.concat([this.header, chunk.subarray(at, at + take)]);
        at += take;
        this.offset += take;
        if (this.header.length === BLOCK) {
          const block = this.header;
          this.header = Buffer.alloc(0);
          this.startEntry(block);
        }
        continue;
      }
      if (cur.left > 0) {
        const take = Math.min(cur.left, chunk.length - at);
        const piece = chunk.subarray(at, at + take);
        cur.hash.update(piece);
        cur.keep?.push(Buffer.from(piece));
        cur.left -= take;
        at += take;
        this.offset += take;
      } else {
        const take = Math.min(cur.pad, chunk.length - at);
        cur.pad -= take;
        at += take;
        this.offset += take;
      }
      if (cur.left === 0 && cur.pad === 0) this.endEntry();
    }
  }

  private startEntry(block: Buffer): void {
    const headerOffset = this.offset - BLOCK;
    if (block.every((b) => b === 0)) {
      this.ended = true;
      this.endedAt = headerOffset;
      return;
    }
    let h: ReturnType<typeof decodeEntryHeader>;
    try {
      h = decodeEntryHeader(block);
    } catch (err) {
      throw tamper(`the tar header at byte ${headerOffset} cannot be read (${(err as Error).message})`, {reason: 'header', offset: headerOffset});
    }
    const name = h.path;
    const refuse = (why: string): VerificationError => tamper(`bundle entry ${JSON.stringify(name)} (header at byte ${headerOffset}) is refused: ${why}`, {reason: 'header', entry: name, offset: headerOffset});
    if (!h.cksumValid) throw refuse('its tar header checksum is wrong');
    if (h.typeKey !== '0') throw refuse(`it is not a regular file (tar type ${JSON.stringify(h.typeKey)}; links, devices, FIFOs, directories and pax headers are never in a bundle)`);
    const problem = entryNameProblem(name);
    if (problem !== null) throw refuse(problem);
    if ((h.mode & 0o6000) !== 0) throw refuse('it has the setuid or setgid bit');
    if (this.signature !== null) throw refuse('it comes after bundle.json.sig, which must be last');
    if (this.manifestBytes !== null && name !== BUNDLE_SIGNATURE) throw refuse('it comes after bundle.json, which must be last but for its signature');
    if (this.entries.length >= LIMITS.entries) throw refuse(`the bundle has more than ${LIMITS.entries} entries`);
    const key = collisionKey(name);
    if (this.keys.has(key)) throw refuse('another entry has the same name after Unicode normalisation or case folding');
    this.keys.add(key);
    const large = name.startsWith(BLOBS_PREFIX) || name === EXECUTABLE;
    const cap = name === BUNDLE_JSON ? LIMITS.manifestBytes : name === BUNDLE_SIGNATURE ? SIGNATURE_BYTES : large ? Number.MAX_SAFE_INTEGER : LIMITS.smallEntryBytes;
    if (h.size > cap) throw refuse(`it is ${h.size} bytes, over the ${cap}-byte limit for it`);
    const keep = name === BUNDLE_JSON || name === BUNDLE_SIGNATURE ? [] : null;
    this.current = {path: name, size: h.size, mode: h.mode & 0o7777, hash: createHash('sha256'), left: h.size, pad: paddedSize(h.size) - h.size, keep};
    if (h.size === 0) this.endEntry();
  }

  private endEntry(): void {
    const cur = this.current!;
    this.current = null;
    const sha256 = cur.hash.digest('hex');
    if (cur.path === BUNDLE_JSON) this.manifestBytes = Buffer.concat(cur.keep!);
    else if (cur.path === BUNDLE_SIGNATURE) this.signature = Buffer.concat(cur.keep!);
    else this.entries.push({path: cur.path, size: cur.size, mode: cur.mode, sha256});
  }

  finish(): {entries: ReadEntry[]; manifestBytes: Buffer; signature: Buffer | null} {
    if (this.current !== null || this.header.length > 0) throw tamper(`the bundle ends in the middle of ${this.current === null ? 'a header' : `entry ${this.current.path}`} (a part or the end is missing)`, {reason: 'truncated', entry: this.current?.path ?? null});
    if (!this.ended || this.offset - this.endedAt < 2 * BLOCK) throw tamper('the bundle has no end-of-archive blocks (the last part is missing or cut short)', {reason: 'truncated'});
    if (this.manifestBytes === null) throw tamper('the bundle has no bundle.json', {reason: 'missing', entry: BUNDLE_JSON});
    return {entries: this.entries, manifestBytes: this.manifestBytes, signature: this.signature};
  }
}

export interface BundleCheckOptions {
  trustedKeyFiles: readonly string[];
  allowUnsigned: boolean;
  installDir: InstallDir;
  /** One line of progress for stderr. */
  progress?: (line: string) => void;
}

export interface BundleCheck {
  verified: VerifiedBundle;
  /** Present when --allow-unsigned let an unsigned bundle through. */
  unsigned?: UnsignedAudit;
}

/** What `bundle verify` and `bundle inspect` share: trust from flags and dforge.yaml, the pass, and the audit of --allow-unsigned. */
export async function checkBundleFile(file: string, options: BundleCheckOptions): Promise<BundleCheck> {
  const trust = await bundleTrustFrom({trustedKeyFiles: options.trustedKeyFiles, configuredKeyFiles: await configuredTrustedKeyFiles(options.installDir), allowUnsigned: options.allowUnsigned});
  const source = await openBundleSource(file);
  const verified = await verifyBundle(source, trust, {progress: options.progress ? byteProgress('verify', options.progress) : undefined});
  if (verified.signer !== null) return {verified};
  const unsigned = await recordUnsignedAllowed(options.installDir, path.resolve(file), {release: verified.manifest.release, bundleJsonSha256: verified.manifestSha256});
  return {verified, unsigned};
}

