import {createHash} from 'node:crypto';
import {createReadStream, promises as fs} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import type Docker from 'dockerode';

import {BugError, UserError, VerificationError} from '../errors.js';
import {PACKAGED_TEMPLATES} from '../render/sources.js';
import {resolvedImages} from '../render/values.js';
import {byteProgress} from '../ui/bytes.js';
import {readDockerSave} from './engine-export.js';
import {
  BUNDLE_FORMAT,
  BUNDLE_JSON,
  BUNDLE_SIGNATURE,
  EXECUTABLE,
  OCI_INDEX,
  OCI_LAYOUT,
  SBOM_PREFIX,
  TEMPLATES_PREFIX,
  blobPath,
  parseBundleManifest,
  partsIndexFile,
  partName,
  serializeManifest,
  type BundleEntry,
  type BundleImage,
  type BundleManifest,
  type EntryKind,
  type PartsIndex,
} from './manifest.js';
import {OCI_LAYOUT_BYTES, imageIndexBytes, imageManifestBytes, type Descriptor} from './oci.js';
import {PartWriter, checkOutputsFree} from './part-writer.js';
import {DpkgStatusScanner, cycloneDxBytes, imageStatus, parseDpkgStatus, sbomFileName, type LayerStatus} from './sbom.js';
import {signBytes, type SigningKey} from './signing.js';
import {checkPartCount} from './size.js';
import {END_OF_ARCHIVE, encodeEntryHeader, paddedSize} from './tar-blocks.js';

/**
 * `dforge bundle create`: streams the images out of the engine in one export call straight into
 * the bundle (docs/formats.md "Offline bundle"), with no staging copy: a layer's header is
 * written with a placeholder name, the content is hashed as it passes, and the header is patched
 * (or the entry dropped, for a blob already stored) once its digest is known.
 */

/** dist-sea/dforge at the package root, as `npm run build:sea` writes it. */
export const PACKAGED_EXECUTABLE = fileURLToPath(new URL('../../dist-sea/dforge', import.meta.url));
/** The template targets a bundle carries, under the packaged templates/. */
const TEMPLATE_TARGETS = ['compose', 'k8s'] as const;
const PLACEHOLDER_DIGEST = `sha256:${'0'.repeat(64)}`;
const PROGRESS_INTERVAL_MS = 2000;
/** How much of a layer is gathered before one write to the bundle. */
const WRITE_BATCH_BYTES = 1024 * 1024;

export interface CreateOptions {
  readonly release: string;
  readonly images: readonly string[];
  /** undefined: unsigned (the command requires --unsigned for that). */
  readonly key: SigningKey | undefined;
  readonly out: string;
  /** Part size in bytes (a multiple of 512); undefined: one file. */
  readonly splitBytes?: number;
  /** bundle.json of the base bundle for a delta. */
  readonly since?: string;
  readonly executable: string;
  readonly force: boolean;
  readonly dforgeVersion: string;
  readonly now?: () => Date;
  readonly progress: (line: string) => void;
}

export interface CreatedImage {
  readonly ref: string;
  readonly manifestDigest: string;
  readonly configDigest: string;
  readonly layers: number;
  /** Config plus layers, uncompressed. */
  readonly bytes: number;
}

export interface CreateResult {
  readonly file?: string;
  readonly parts?: {readonly index: string; readonly files: string[]};
  /** Bytes of the bundle (all parts together). */
  readonly bytes: number;
  readonly release: string;
  readonly images: CreatedImage[];
  /** Layer and config bytes stored in this bundle, each blob once. */
  readonly uniqueBlobBytes: number;
  /** Layer and config bytes the images share with each other, stored once instead of per image. */
  readonly sharedBytesSaved: number;
  /** Bytes of blobs left out because the --since base holds them. */
  readonly omittedBytes: number;
  readonly signer: string | null;
  readonly durationMs: number;
}

/** The release's images: dforge/<service>:<release> for each image service, as dforge.yaml defaults them. */
export function releaseImages(release: string): string[] {
  return [...new Set(Object.values(resolvedImages({release, images: {}})))].sort();
}

/** A reference as `docker save` accepts it and names it in manifest.json: name[:tag], a tag required. */
const REF = /^[a-z0-9]+(?:[._-][a-z0-9]+|__)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[0-9]+)?(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

/**
 * `--images FILE`: one reference per line, `#` comments and blank lines ignored; a YAML list
 * (`- ref`) is read the same. Each reference needs an explicit tag.
 */
export async function readImageList(file: string): Promise<string[]> {
  const text = await fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read the image list ${file}: ${err.code ?? err.message}`, {nextSteps: ['Pass a text file with one image reference (name:tag) per line.']});
  });
  const refs: string[] = [];
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/#.*$/, '').trim().replace(/^-\s+/, '').replace(/^(['"])(.*)\1$/, '$2');
    if (line === '') continue;
    if (!REF.test(line)) {
      throw new UserError(`${file} line ${i + 1}: ${JSON.stringify(line.slice(0, 200))} is not an image reference with a tag`, {
        nextSteps: ['Write one reference per line, name:tag, e.g. dforge/app:1.4.2 (digests and tagless names are not accepted).'],
        data: {file, line: i + 1},
      });
    }
    refs.push(line);
  }
  if (refs.length === 0) throw new UserError(`${file} names no images`, {nextSteps: ['Write one reference per line, name:tag.']});
  return [...new Set(refs)];
}

/** --executable FILE, else dist-sea/dforge; the bundle is useless without the CLI in it. */
export async function resolveExecutable(flag: string | undefined): Promise<string> {
  const file = flag ?? PACKAGED_EXECUTABLE;
  const stat = await fs.stat(file).catch(() => undefined);
  if (!stat?.isFile()) {
    throw new UserError(`the dforge single executable ${file} does not exist`, {
      nextSteps: flag === undefined ? ['Build it with: npm run build:sea, or pass --executable FILE.'] : ['Pass the path of a built dforge executable to --executable.'],
    });
  }
  return file;
}

/** Every packaged template file under templates/compose and templates/k8s except READMEs, as bundle paths, sorted. */
export async function packagedTemplateFiles(root = PACKAGED_TEMPLATES): Promise<Array<{path: string; file: string}>> {
  const found: Array<{path: string; file: string}> = [];
  for (const target of TEMPLATE_TARGETS) {
    const entries = await fs.readdir(path.join(root, target), {recursive: true, withFileTypes: true});
    for (const e of entries) {
      if (!e.isFile() || /^readme/i.test(e.name)) continue;
      const file = path.join(e.parentPath, e.name);
      found.push({path: `${TEMPLATES_PREFIX}${path.relative(root, file).split(path.sep).join('/')}`, file});
    }
  }
  return found.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

interface Base {
  readonly release: string;
  readonly sha256: string;
  readonly blobs: ReadonlySet<string>;
}

async function readBase(file: string): Promise<Base> {
  const bytes = await fs.readFile(file).catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`cannot read the base bundle.json ${file}: ${err.code ?? err.message}`, {
      nextSteps: ['Pass the bundle.json of the bundle the target already has (extract it with: tar -xf OLD.bundle bundle.json).'],
    });
  });
  const manifest = parseBundleManifest(bytes, file);
  const blobs = new Set(manifest.entries.filter((e) => e.kind === 'blob').map((e) => `sha256:${e.sha256}`));
  return {release: manifest.release, sha256: sha256(bytes), blobs};
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

interface Inspected {
  readonly ref: string;
  readonly id: string;
  readonly diffIds: string[];
  readonly size: number;
}

async function inspectImages(docker: Docker, refs: readonly string[]): Promise<Inspected[]> {
  const result: Inspected[] = [];
  for (const ref of refs) {
    const info = await docker
      .getImage(ref)
      .inspect()
      .catch((err: {statusCode?: number}) => {
        if (err.statusCode === 404) {
          throw new UserError(`the image ${ref} is not in the Docker engine`, {
            nextSteps: [`Build it (docker build -t ${ref} …) or pull it (docker pull ${ref}) on this machine, then re-run.`, 'Or pass --images FILE listing the images to bundle.'],
            data: {image: ref},
          });
        }
        throw err;
      });
    result.push({ref, id: info.Id, diffIds: info.RootFS?.Layers ?? [], size: info.Size});
  }
  return result;
}

export async function createBundle(docker: Docker, options: CreateOptions): Promise<CreateResult> {
  const now = options.now ?? (() => new Date());
  const started = now();
  const createdAt = new Date(Math.floor(started.getTime() / 1000) * 1000);
  const split = options.splitBytes !== undefined;
  const outputs = split ? [partName(options.out, 0), partsIndexFile(options.out), `${partsIndexFile(options.out)}.sig`] : [options.out];
  await checkOutputsFree(outputs, options.force);
  const base = options.since === undefined ? undefined : await readBase(options.since);
  const inspected = await inspectImages(docker, options.images);
  const templates = await packagedTemplateFiles();
  const estimated = inspected.reduce((n, i) => n + i.size, 0);
  if (options.splitBytes !== undefined) checkPartCount(estimated + (await fs.stat(options.executable)).size, options.splitBytes);

  const writer = await PartWriter.open(options.out, options.splitBytes ?? Infinity);
  try {
    const entries: BundleEntry[] = [];
    const stored = new Set<string>();
    const omitted = new Set<string>();
    const blobSizes = new Map<string, number>();

    const writeFile = async (entryPath: string, bytes: Buffer): Promise<void> => {
      await writer.write(encodeEntryHeader({path: entryPath, size: bytes.length, mode: 0o644, mtime: createdAt}));
      await writer.write(bytes);
      await writer.write(Buffer.alloc(paddedSize(bytes.length) - bytes.length));
    };
    const writeEntry = async (entryPath: string, kind: EntryKind, bytes: Buffer): Promise<void> => {
      await writeFile(entryPath, bytes);
      entries.push({path: entryPath, kind, size: bytes.length, sha256: sha256(bytes), mode: 0o644});
    };
    /** A small blob (config, manifest) is written only if neither this bundle nor the base holds it. */
    const writeBlob = async (bytes: Buffer): Promise<Descriptor> => {
      const digest = `sha256:${sha256(bytes)}`;
      blobSizes.set(digest, bytes.length);
      if (base?.blobs.has(digest)) omitted.add(digest);
      else if (!stored.has(digest)) {
        await writeEntry(blobPath(digest), 'blob', bytes);
        stored.add(digest);
      }
      return {digest, size: bytes.length};
    };

    await writeEntry(OCI_LAYOUT, 'oci-layout', OCI_LAYOUT_BYTES);

    // --- blobs, in the order the engine exports them ---
    const layersByPath = new Map<string, Descriptor>();
    const links = new Map<string, string>();
    const configsByPath = new Map<string, Descriptor>();
    const layerStatus = new Map<string, LayerStatus>();
    let streamed = 0;
    const progress = byteProgress('bundle: from the engine', options.progress, {intervalMs: PROGRESS_INTERVAL_MS, estimatedTotal: true});
    // The estimate counts a shared base once per image; the last line gives the real total.
    const report = (final: boolean): void => progress(streamed, final ? streamed : Math.max(estimated, streamed));

    const exported = (await (docker as unknown as {getImages(o: {names: string[]}): Promise<NodeJS.ReadableStream>}).getImages({names: [...options.images]})) as AsyncIterable<Buffer>;
    const saved = await readDockerSave(exported, {
      layer: async (layerPath, size, content) => {
        const headerAt = writer.offset;
        await writer.write(encodeEntryHeader({path: blobPath(PLACEHOLDER_DIGEST), size, mode: 0o644, mtime: createdAt}));
        const hash = createHash('sha256');
        const scanner = new DpkgStatusScanner();
        // The engine's socket gives small chunks: they are gathered into large writes, and one
        // write is in flight while the next batch is read, so reading and writing overlap.
        let batch: Uint8Array[] = [];
        let batchBytes = 0;
        let inFlight: Promise<void> = Promise.resolve();
        const flush = async (): Promise<void> => {
          const data = Buffer.concat(batch);
          batch = [];
          batchBytes = 0;
          await inFlight;
          inFlight = writer.write(data);
          inFlight.catch(() => undefined); // awaited below; this only keeps it from being unhandled meanwhile
        };
        for await (const chunk of content) {
          hash.update(chunk);
          scanner.write(chunk);
          batch.push(chunk);
          batchBytes += chunk.length;
          if (batchBytes >= WRITE_BATCH_BYTES) await flush();
          streamed += chunk.length;
          report(false);
        }
        await flush();
        await inFlight;
        await writer.write(Buffer.alloc(paddedSize(size) - size));
        const hex = hash.digest('hex');
        const digest = `sha256:${hex}`;
        layersByPath.set(layerPath, {digest, size});
        blobSizes.set(digest, size);
        if (!layerStatus.has(digest)) layerStatus.set(digest, scanner.done());
        if (stored.has(digest) || base?.blobs.has(digest)) {
          // Stored already, here or in the base: drop the entry, header included (it may lie in an earlier part).
          if (!stored.has(digest)) omitted.add(digest);
          await writer.truncate(headerAt);
          return;
        }
        await writer.patch(headerAt, encodeEntryHeader({path: blobPath(digest), size, mode: 0o644, mtime: createdAt}));
        entries.push({path: blobPath(digest), kind: 'blob', size, sha256: hex, mode: 0o644});
        stored.add(digest);
      },
      config: async (configPath, bytes) => {
        configsByPath.set(configPath, await writeBlob(bytes));
      },
      layerLink: (linkPath, target) => {
        links.set(linkPath, path.posix.normalize(path.posix.join(path.posix.dirname(linkPath), target)));
      },
    });
    report(true);

    // --- per image: check against the engine, then generate the OCI manifest ---
    const images: BundleImage[] = [];
    const created: CreatedImage[] = [];
    const sboms: Array<{path: string; bytes: Buffer}> = [];
    const sbomByConfig = new Map<string, string>();
    for (const image of inspected) {
      const entry = saved.find((s) => (s.RepoTags ?? []).includes(image.ref));
      if (!entry) throw new BugError(`the engine's export has no entry for ${image.ref}`, {data: {image: image.ref}});
      const config = configsByPath.get(entry.Config);
      const layers = entry.Layers.map((l) => layersByPath.get(links.get(l) ?? l));
      if (!config || layers.some((l) => l === undefined)) throw new BugError(`the engine's export of ${image.ref} names files it did not contain`, {data: {image: image.ref}});
      const layerDescs = layers as Descriptor[];
      if (config.digest !== image.id || layerDescs.length !== image.diffIds.length || layerDescs.some((l, i) => l.digest !== image.diffIds[i])) {
        throw new VerificationError(`the engine exported ${image.ref} with different bytes than it reports (image id or layer diff ids do not match)`, {
          nextSteps: [`Check the engine's storage: docker image inspect ${image.ref}; rebuild or pull the image and re-run.`],
          data: {image: image.ref, reason: 'engine-export-mismatch'},
        });
      }
      const manifest = await writeBlob(imageManifestBytes(config, layerDescs));
      const status = imageStatus(layerDescs.map((l) => layerStatus.get(l.digest) ?? {kind: 'none'}));
      let sbom: string | undefined;
      if (status) {
        // One SBOM per config: images that share a config (two tags of one image) share its file.
        sbom = sbomByConfig.get(config.digest);
        if (sbom === undefined) {
          sbom = `${SBOM_PREFIX}${sbomFileName(image.ref, config.digest)}`;
          // Distinct configs whose first 12 hex digits agree would collide; no real set of images does that.
          if (sboms.some((s) => s.path.toLowerCase() === sbom!.toLowerCase())) throw new BugError(`two images map to the SBOM name ${sbom}`, {data: {image: image.ref, sbom}});
          sbomByConfig.set(config.digest, sbom);
          sboms.push({path: sbom, bytes: cycloneDxBytes({ref: image.ref, configDigest: config.digest}, parseDpkgStatus(status.toString('utf8')), createdAt.toISOString())});
        }
      }
      images.push({ref: image.ref, manifest, config, layers: layerDescs, ...(sbom === undefined ? {} : {sbom})});
      created.push({ref: image.ref, manifestDigest: manifest.digest, configDigest: config.digest, layers: layerDescs.length, bytes: config.size + layerDescs.reduce((n, l) => n + l.size, 0)});
    }

    await writeEntry(OCI_INDEX, 'oci-index', imageIndexBytes(images));
    for (const s of sboms) await writeEntry(s.path, 'sbom', s.bytes);
    for (const t of templates) await writeEntry(t.path, 'template', await fs.readFile(t.file));
    await writeExecutable(writer, entries, options.executable, createdAt);

    const manifest: BundleManifest = {
      format: BUNDLE_FORMAT,
      kind: 'dforge-bundle',
      dforgeVersion: options.dforgeVersion,
      release: options.release,
      createdAt: createdAt.toISOString(),
      signer: options.key ? {algorithm: 'Ed25519', publicKeySha256: options.key.fingerprint} : null,
      images,
      ...(base ? {base: {release: base.release, bundleJsonSha256: base.sha256, omittedBlobs: [...omitted].sort()}} : {}),
      entries,
    };
    const manifestBytes = serializeManifest(manifest);
    // bundle.json and its signature are the two entries not listed in entries.
    await writeFile(BUNDLE_JSON, manifestBytes);
    if (options.key) await writeFile(BUNDLE_SIGNATURE, signBytes(options.key, manifestBytes));
    await writer.write(END_OF_ARCHIVE);

    const bytes = writer.offset;
    const parts = await writer.close();
    let file: string | undefined;
    let partsResult: CreateResult['parts'];
    if (split) {
      const index: PartsIndex = {
        format: BUNDLE_FORMAT,
        kind: 'dforge-bundle-parts',
        bundleJsonSha256: sha256(manifestBytes),
        signer: manifest.signer,
        parts: await Promise.all(parts.map(async (p) => ({name: path.basename(p.file), size: p.size, sha256: await fileSha256(p.file)}))),
      };
      const indexBytes = serializeManifest(index);
      const indexName = path.basename(partsIndexFile(options.out));
      await writer.writeSide(indexName, indexBytes);
      if (options.key) await writer.writeSide(`${indexName}.sig`, signBytes(options.key, indexBytes));
      const dir = path.dirname(options.out);
      const names = [...parts.map((p) => path.basename(p.file)), indexName, ...(options.key ? [`${indexName}.sig`] : [])];
      // The index is renamed last: parts without their index are visibly unfinished.
      await writer.publish(
        names.map((n) => ({from: n, to: path.join(dir, n)})),
        options.force,
      );
      partsResult = {index: partsIndexFile(options.out), files: parts.map((p) => path.join(dir, path.basename(p.file)))};
    } else {
      await writer.publish([{from: writer.tempName(0), to: options.out}], options.force);
      file = options.out;
    }

    const distinct = new Map<string, number>();
    let perImage = 0;
    for (const i of images) {
      for (const d of [i.config, ...i.layers]) {
        distinct.set(d.digest, d.size);
        perImage += d.size;
      }
    }
    const distinctBytes = [...distinct.values()].reduce((n, s) => n + s, 0);
    const omittedBytes = [...omitted].reduce((n, d) => n + (blobSizes.get(d) ?? 0), 0);
    return {
      ...(file === undefined ? {} : {file}),
      ...(partsResult === undefined ? {} : {parts: partsResult}),
      bytes,
      release: options.release,
      images: created,
      uniqueBlobBytes: [...distinct].filter(([d]) => stored.has(d)).reduce((n, [, s]) => n + s, 0),
      sharedBytesSaved: perImage - distinctBytes,
      omittedBytes,
      signer: options.key?.fingerprint ?? null,
      durationMs: now().getTime() - started.getTime(),
    };
  } catch (err) {
    await writer.discard();
    throw err;
  }
}

async function writeExecutable(writer: PartWriter, entries: BundleEntry[], file: string, mtime: Date): Promise<void> {
  const {size} = await fs.stat(file);
  await writer.write(encodeEntryHeader({path: EXECUTABLE, size, mode: 0o755, mtime}));
  const hash = createHash('sha256');
  let read = 0;
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    read += chunk.length;
    if (read > size) break;
    hash.update(chunk);
    await writer.write(chunk);
  }
  if (read !== size) throw new UserError(`the executable ${file} changed while it was being bundled`, {nextSteps: ['Wait for the build to finish, then re-run.']});
  await writer.write(Buffer.alloc(paddedSize(size) - size));
  entries.push({path: EXECUTABLE, kind: 'executable', size, sha256: hash.digest('hex'), mode: 0o755});
}

async function fileSha256(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) hash.update(chunk);
  return hash.digest('hex');
}

