import {MEDIA_TYPES} from './manifest.js';

/**
 * The OCI JSON the bundle generates (docs/formats.md "Offline bundle"): compact JSON with keys in
 * a fixed order, so the same image always gets the same manifest digest.
 */

export interface Descriptor {
  readonly digest: string;
  readonly size: number;
}

export const OCI_LAYOUT_BYTES = Buffer.from('{"imageLayoutVersion":"1.0.0"}');

/** The annotation skopeo and other OCI-layout tools select an image by (`oci:DIR:NAME`). */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

export function imageManifestBytes(config: Descriptor, layers: readonly Descriptor[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.manifest,
      config: {mediaType: MEDIA_TYPES.config, digest: config.digest, size: config.size},
      layers: layers.map((l) => ({mediaType: MEDIA_TYPES.layer, digest: l.digest, size: l.size})),
    }),
  );
}

export function imageIndexBytes(images: ReadonlyArray<{ref: string; manifest: Descriptor}>): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.index,
      manifests: images.map((i) => ({
        mediaType: MEDIA_TYPES.manifest,
        digest: i.manifest.digest,
        size: i.manifest.size,
        annotations: {[REF_NAME_ANNOTATION]: i.ref},
      })),
    }),
  );
}
