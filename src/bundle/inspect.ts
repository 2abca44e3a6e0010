import {buffer} from 'node:stream/consumers';

import {locateEntries, openVerifiedEntry} from './entries.js';
import {blobPath} from './manifest.js';
import type {UnsignedAudit} from './trust.js';
import type {VerifiedBundle} from './verified-bundle.js';

/**
 * What a bundle holds, read only from a verified bundle: inspect runs the same verification as
 * `bundle verify` (same trust, same refusals), so nothing it prints comes from unchecked bytes.
 */
export interface BundleInspection {
  file: string;
  release: string;
  dforgeVersion: string;
  createdAt: string;
  bundleJsonSha256: string;
  signer: {publicKeySha256: string} | null;
  bytes: number;
  images: Array<{ref: string; manifestDigest: string; size: number; layers: number; sbom: {file: string; components: number | null} | null}>;
  /** Sum over images of their layer sizes, less the bytes of the distinct layer blobs the bundle holds once. */
  sharedLayerSavings: number;
  base: {release: string; bundleJsonSha256: string; omittedBlobs: number} | null;
  unsigned?: UnsignedAudit;
}

/** SBOMs larger than this are counted as unknown rather than parsed. */
const SBOM_PARSE_BYTES = 8 * 1024 * 1024;

export async function inspectBundle(verified: VerifiedBundle, unsigned?: UnsignedAudit): Promise<BundleInspection> {
  const {manifest} = verified;
  const located = new Map(locateEntries(manifest).map((e) => [e.path, e]));
  const images: BundleInspection['images'] = [];
  for (const image of manifest.images) {
    let sbom: NonNullable<BundleInspection['images'][number]['sbom']> | null = null;
    const entry = image.sbom === undefined ? undefined : located.get(image.sbom);
    if (entry !== undefined) {
      let components: number | null = null;
      if (entry.size <= SBOM_PARSE_BYTES) {
        components = componentCount(await buffer(openVerifiedEntry(verified, entry)));
      }
      sbom = {file: entry.path, components};
    }
    images.push({ref: image.ref, manifestDigest: image.manifest.digest, size: image.config.size + image.layers.reduce((n, l) => n + l.size, 0), layers: image.layers.length, sbom});
  }
  const layerBytes = manifest.images.reduce((n, i) => n + i.layers.reduce((m, l) => m + l.size, 0), 0);
  const uniqueLayers = new Map(manifest.images.flatMap((i) => i.layers.map((l) => [l.digest, l.size] as const)));
  const held = [...uniqueLayers].filter(([digest]) => located.has(blobPath(digest))).reduce((n, [, size]) => n + size, 0);
  const omitted = [...uniqueLayers].filter(([digest]) => !located.has(blobPath(digest))).reduce((n, [, size]) => n + size, 0);
  return {
    file: verified.source.file,
    release: manifest.release,
    dforgeVersion: manifest.dforgeVersion,
    createdAt: manifest.createdAt,
    bundleJsonSha256: verified.manifestSha256,
    signer: verified.signer,
    bytes: verified.bytes,
    images,
    // Layers left out by a delta base are not savings from sharing: count them as neither.
    sharedLayerSavings: layerBytes - held - omitted,
    base: manifest.base === undefined ? null : {release: manifest.base.release, bundleJsonSha256: manifest.base.bundleJsonSha256, omittedBlobs: manifest.base.omittedBlobs.length},
    ...(unsigned === undefined ? {} : {unsigned}),
  };
}

/** CycloneDX's `components` array length; null when the signed SBOM is not the JSON it should be. */
function componentCount(bytes: Buffer): number | null {
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as {components?: unknown};
    return Array.isArray(parsed.components) ? parsed.components.length : 0;
  } catch {
    return null;
  }
}
