import {createHash} from 'node:crypto';
import {Readable} from 'node:stream';

import type Docker from 'dockerode';

import {UserError, VerificationError} from '../errors.js';
import {openVerifiedEntry, locateEntries, type LocatedEntry} from './entries.js';
import {blobPath, type BundleImage} from './manifest.js';
import {END_OF_ARCHIVE, encodeEntryHeader, paddedSize} from './tar-blocks.js';
import type {VerifiedBundle} from './verified-bundle.js';

/**
 * `bundle load`: streams a verified bundle's images into the Docker engine, then checks that the
 * engine's image id of every reference is the config digest the signed manifest names.
 *
 * Docker 20.10 loads the legacy `docker save` format only, so the bundle's OCI blobs are re-framed
 * on the fly as such a tar per image (manifest.json last, blobs under their OCI paths) and piped
 * into `POST /images/load`; nothing is staged on disk by dforge. Each blob comes through
 * openVerifiedEntry, which withholds the last bytes of anything changed since verification: the
 * engine reads a whole archive before it imports anything, so a changed blob aborts that image's
 * load with nothing of it loaded (images before it stay, verified and whole). Layers whose chain
 * the engine already has are left out of the tar (the engine does not open them), which is what
 * makes a delta bundle loadable and a re-load cheap.
 */

export interface LoadedImage {
  readonly ref: string;
  readonly imageId: string;
  /** Layers sent to the engine; the others were already there. */
  readonly layersSent: number;
  readonly layersPresent: number;
}

export interface LoadResult {
  readonly release: string;
  readonly images: LoadedImage[];
  readonly bytesSent: number;
}

export interface LoadOptions {
  /** Only these references (default: every image of the bundle). */
  readonly refs?: readonly string[];
  readonly progress?: (done: number, total: number) => void;
}

/** One image's share of a load: the layers the engine lacks when its turn comes. */
export interface ImageLoadPlan {
  readonly image: BundleImage;
  readonly send: ReadonlyArray<{digest: string; size: number}>;
  readonly presentCount: number;
  /** Bytes this image sends: its config and the layers in `send`. */
  readonly bytes: number;
}

/**
 * What a load sends, image by image: a layer shared by several images goes with the first, and a
 * layer the engine already has (by chain id) goes with none. `present` is the engine's chains
 * (engineLayerChains). preflight --bundle sizes the engine's disk from the same plan.
 */
export function planLoad(verified: VerifiedBundle, present: ReadonlySet<string>, refs?: readonly string[]): ImageLoadPlan[] {
  const have = new Set(present);
  const omitted = new Set(verified.manifest.base?.omittedBlobs ?? []);
  return selectImages(verified.manifest.images, refs).map((image) => {
    const chains = chainIds(image.layers.map((l) => l.digest));
    const send = image.layers.filter((_, i) => !have.has(chains[i]!));
    for (const layer of send) {
      if (omitted.has(layer.digest)) {
        throw new UserError(`${image.ref} needs layer ${layer.digest}, which this delta bundle leaves out (its base is release ${verified.manifest.base!.release}) and the engine does not have`, {
          nextSteps: [`Load the base bundle first (dforge bundle load <release ${verified.manifest.base!.release} bundle>), then this one.`],
          data: {image: image.ref, layer: layer.digest},
        });
      }
    }
    for (const chain of chains) have.add(chain);
    return {image, send, presentCount: image.layers.length - send.length, bytes: image.config.size + send.reduce((n, l) => n + l.size, 0)};
  });
}

export async function loadBundle(docker: Docker, verified: VerifiedBundle, options: LoadOptions = {}): Promise<LoadResult> {
  const plan = planLoad(verified, await engineLayerChains(docker), options.refs);
  const located = new Map(locateEntries(verified.manifest).map((e) => [e.path, e]));
  const total = plan.reduce((n, p) => n + p.bytes, 0);
  let bytesSent = 0;
  const loaded: LoadedImage[] = [];
  // One archive per image: the engine stages an archive whole under its data-root before it
  // imports, so its extra space is one image's new layers at a time, never the whole bundle.
  for (const step of plan) {
    const {image} = step;
    // An image the engine already holds under the signed id needs nothing sent (and a delta
    // bundle does not even carry its config): the engine's id is the sha256 of the config.
    const existing = await docker.getImage(image.config.digest).inspect().catch(() => undefined);
    if (existing?.Id === image.config.digest) {
      if (!(existing.RepoTags ?? []).includes(image.ref)) await docker.getImage(image.config.digest).tag(splitRef(image.ref));
      loaded.push({ref: image.ref, imageId: existing.Id, layersSent: 0, layersPresent: image.layers.length});
      continue;
    }
    const blobs = [image.config.digest, ...step.send.map((l) => l.digest)].map((digest) => [digest, entryOf(located, digest, image.ref)] as const);
    let producerError: unknown;
    const mtime = new Date(verified.manifest.createdAt);
    async function* archive(): AsyncGenerator<Buffer> {
      try {
        for (const [digest, entry] of blobs) {
          yield encodeEntryHeader({path: blobPath(digest), size: entry.size, mode: 0o644, mtime});
          for await (const chunk of openVerifiedEntry(verified, entry) as AsyncIterable<Buffer>) {
            bytesSent += chunk.length;
            options.progress?.(bytesSent, total);
            yield chunk;
          }
          yield Buffer.alloc(paddedSize(entry.size) - entry.size);
        }
        const manifest = Buffer.from(JSON.stringify([{Config: blobPath(image.config.digest), RepoTags: [image.ref], Layers: image.layers.map((l) => blobPath(l.digest))}]));
        yield encodeEntryHeader({path: 'manifest.json', size: manifest.length, mode: 0o644, mtime});
        yield Buffer.concat([manifest, Buffer.alloc(paddedSize(manifest.length) - manifest.length), END_OF_ARCHIVE]);
      } catch (err) {
        // The request body breaks off, and the engine discards the whole archive.
        producerError = err;
        throw err;
      }
    }
    try {
      await sendToEngine(docker, Readable.from(archive()));
    } catch (err) {
      throw producerError ?? err;
    }
    if (producerError) throw producerError;

    const info = await docker.getImage(image.ref).inspect().catch(() => undefined);
    if (info?.Id !== image.config.digest) {
      throw new VerificationError(`after loading, ${image.ref} in the engine is ${info?.Id ?? 'missing'}, not the bundle's ${image.config.digest}`, {
        nextSteps: ['Do not run this image. Check who else writes to this engine (docker events), remove the tag (docker rmi), then load the bundle again.'],
        data: {reason: 'image-id', image: image.ref, expected: image.config.digest, actual: info?.Id ?? null},
      });
    }
    loaded.push({ref: image.ref, imageId: info.Id, layersSent: step.send.length, layersPresent: step.presentCount});
  }
  return {release: verified.manifest.release, images: loaded, bytesSent};
}

/** docker tag's repo and tag of a name:tag reference (a colon after the last slash is the tag). */
function splitRef(ref: string): {repo: string; tag: string} {
  const colon = ref.lastIndexOf(':');
  return colon > ref.lastIndexOf('/') ? {repo: ref.slice(0, colon), tag: ref.slice(colon + 1)} : {repo: ref, tag: 'latest'};
}

function selectImages(images: readonly BundleImage[], refs: readonly string[] | undefined): BundleImage[] {
  if (!refs) return [...images];
  return refs.map((ref) => {
    const image = images.find((i) => i.ref === ref);
    if (!image) {
      throw new UserError(`the bundle has no image ${ref}`, {
        nextSteps: [`It holds: ${images.map((i) => i.ref).join(', ')}. Build a bundle with that image (dforge bundle create --images FILE), or change the image in dforge.yaml.`],
        data: {image: ref},
      });
    }
    return image;
  });
}

function entryOf(located: Map<string, LocatedEntry>, digest: string, ref: string): LocatedEntry {
  const entry = located.get(blobPath(digest));
  // verifyBundle checked that every blob an image names is in the bundle or omitted by its base.
  if (!entry) throw new UserError(`${ref} needs blob ${digest}, which the bundle does not carry`, {nextSteps: ['Load the base bundle this delta was cut against first.'], data: {image: ref, blob: digest}});
  return entry;
}

/** The OCI chain ids of a layer stack: the engine keys its layer store by them. */
export function chainIds(diffIds: readonly string[]): string[] {
  const chains: string[] = [];
  for (const diffId of diffIds) {
    const previous = chains.at(-1);
    chains.push(previous === undefined ? diffId : `sha256:${createHash('sha256').update(`${previous} ${diffId}`).digest('hex')}`);
  }
  return chains;
}

/** Every layer chain some image in the engine is built on. */
export async function engineLayerChains(docker: Docker): Promise<Set<string>> {
  const chains = new Set<string>();
  for (const summary of await docker.listImages({all: true})) {
    const info = await docker.getImage(summary.Id).inspect().catch(() => undefined);
    for (const chain of chainIds(info?.RootFS?.Layers ?? [])) chains.add(chain);
  }
  return chains;
}

async function sendToEngine(docker: Docker, archive: Readable): Promise<void> {
  const response = (await docker.loadImage(archive, {quiet: true})) as NodeJS.ReadableStream;
  // The engine answers with JSON messages; an error arrives as {"error": ...} in the body.
  let body = '';
  for await (const chunk of response as AsyncIterable<Buffer>) body += chunk.toString('utf8');
  const failure = body
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      try {
        return JSON.parse(line) as {error?: string; errorDetail?: {message?: string}};
      } catch {
        return {};
      }
    })
    .find((m) => m.error);
  if (failure) {
    throw new UserError(`the Docker engine refused the images: ${failure.errorDetail?.message ?? failure.error}`, {
      nextSteps: ['Nothing was loaded. Check free space under the engine\'s data-root (docker info), then run dforge bundle load again.'],
    });
  }
}
