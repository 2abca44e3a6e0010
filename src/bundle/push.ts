import {createHash} from 'node:crypto';
import {buffer} from 'node:stream/consumers';

import {UserError, VerificationError} from '../errors.js';
import {locateEntries, openVerifiedEntry} from './entries.js';
import {blobPath, MEDIA_TYPES, type BundleImage} from './manifest.js';
import {imageManifestBytes} from './oci.js';
import {openPushJournal, pushBlobJournaled} from './push-journal.js';
import type {BlobOutcome, RegistryClient} from './registry-client.js';
import type {VerifiedBundle} from './verified-bundle.js';

/**
 * `bundle push`: a verified bundle's images into a private registry. Every blob goes through the
 * journal (HEAD first, then a mount from a repository this push already filled, then an upload
 * streamed from the bundle through openVerifiedEntry), so a second push sends nothing and a
 * killed one resumes. Manifests go last, once every blob they name is there, and each is read
 * back: the digest the registry serves must be the one the signed bundle names, which is what a
 * Kubernetes install pins (`registry/repo@sha256:…`).
 */

export interface PushedImage {
  readonly ref: string;
  /** Where it now is, by digest: HOST/repo@sha256:… */
  readonly pinned: string;
  readonly tag: string;
}

export interface PushResult {
  readonly registry: string;
  readonly images: PushedImage[];
  readonly blobs: {readonly uploaded: number; readonly mounted: number; readonly present: number};
  readonly bytesUploaded: number;
  readonly journal: string;
}

export async function pushBundle(
  client: RegistryClient,
  verified: VerifiedBundle,
  options: {journalDir: string; onBlob?: (digest: string, outcome: BlobOutcome) => void},
): Promise<PushResult> {
  await client.ping();
  const journal = await openPushJournal({dir: options.journalDir, registryHost: client.host, bundleSha256: verified.manifestSha256});
  const located = new Map(locateEntries(verified.manifest).map((e) => [e.path, e]));
  const counts = {uploaded: 0, mounted: 0, present: 0};
  let bytesUploaded = 0;
  const omitted = new Set(verified.manifest.base?.omittedBlobs ?? []);

  for (const image of verified.manifest.images) {
    const {repo} = repositoryOf(image.ref);
    for (const descriptor of [image.config, ...image.layers]) {
      const entry = located.get(blobPath(descriptor.digest));
      if (!entry) {
        // A delta bundle leaves out what its base carried: the registry must have it already.
        if (omitted.has(descriptor.digest) && (await client.hasBlob(repo, descriptor.digest))) {
          counts.present++;
          continue;
        }
        throw missingBaseBlob(image, descriptor.digest, verified);
      }
      const outcome = await pushBlobJournaled(client, journal, {repo, digest: descriptor.digest, size: entry.size, open: () => openVerifiedEntry(verified, entry)});
      counts[outcome]++;
      if (outcome === 'uploaded') bytesUploaded += entry.size;
      options.onBlob?.(descriptor.digest, outcome);
    }
  }

  const images: PushedImage[] = [];
  for (const image of verified.manifest.images) {
    const {repo, tag} = repositoryOf(image.ref);
    const entry = located.get(blobPath(image.manifest.digest));
    const bytes = entry ? await buffer(openVerifiedEntry(verified, entry)) : rebuiltManifest(image);
    if (journal.manifest(repo, tag) !== image.manifest.digest) {
      await client.putManifest(repo, tag, bytes, MEDIA_TYPES.manifest);
      await journal.recordManifest(repo, tag, image.manifest.digest);
    }
    const served = await client.manifestDigest(repo, tag);
    if (served !== image.manifest.digest) {
      throw new VerificationError(`the registry serves ${client.host}/${repo}:${tag} as ${served}, not the bundle's ${image.manifest.digest}`, {
        nextSteps: ['Someone else pushed to that tag, or the registry changed the manifest. Nothing pins it yet: push again, and check who writes to that repository.'],
        data: {reason: 'manifest-digest', image: image.ref, expected: image.manifest.digest, actual: served},
      });
    }
    images.push({ref: image.ref, tag, pinned: `${client.host}/${repo}@${image.manifest.digest}`});
  }
  await journal.remove();
  return {registry: client.host, images, blobs: counts, bytesUploaded, journal: journal.file};
}

/**
 * The repository and tag an image goes to in the private registry: its reference without any
 * registry host it named (dforge/app:1.4.2 and registry.example/dforge/app:1.4.2 both become
 * dforge/app, tag 1.4.2).
 */
export function repositoryOf(ref: string): {repo: string; tag: string} {
  const at = ref.indexOf('@');
  const withoutDigest = at === -1 ? ref : ref.slice(0, at);
  const colon = withoutDigest.lastIndexOf(':');
  const hasTag = colon > withoutDigest.lastIndexOf('/');
  const name = hasTag ? withoutDigest.slice(0, colon) : withoutDigest;
  const tag = hasTag ? withoutDigest.slice(colon + 1) : 'latest';
  const parts = name.split('/');
  // A first component with a dot or a port, or "localhost", is a registry host (Docker's rule).
  if (parts.length > 1 && (/[.:]/.test(parts[0]!) || parts[0] === 'localhost')) parts.shift();
  return {repo: parts.join('/'), tag};
}

function missingBaseBlob(image: BundleImage, digest: string, verified: VerifiedBundle): UserError {
  // verifyBundle already proved every blob an image names is in the bundle or left out by its base.
  const base = verified.manifest.base!;
  return new UserError(`${image.ref} needs blob ${digest}, which this delta bundle leaves out and the registry does not have`, {
    nextSteps: [`Push the base bundle (release ${base.release}) first, then this delta.`],
    data: {image: image.ref, blob: digest},
  });
}

/**
 * A delta bundle leaves out the manifest of an image its base already had; the manifest is
 * generated deterministically (oci.ts), so it is made again and must hash to the signed digest.
 */
function rebuiltManifest(image: BundleImage): Buffer {
  const bytes = imageManifestBytes(image.config, image.layers);
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (digest !== image.manifest.digest) {
    throw new VerificationError(`the manifest of ${image.ref} is not in this delta bundle, and the one made again from its signed config and layers is ${digest}, not the signed ${image.manifest.digest}`, {
      nextSteps: ['Push the base bundle (which carries it) first, or get a full bundle from whoever built this one.'],
      data: {reason: 'manifest-digest', image: image.ref},
    });
  }
  return bytes;
}
