import {z} from 'zod';

import {VerificationError} from '../errors.js';

/**
 * The signed manifest of an offline bundle, `bundle.json`, and the index of a split bundle,
 * `<bundle>.parts.json`. docs/formats.md ("Offline bundle") is the byte-level specification;
 * this module is its one definition in code. Writers (create.ts) build these objects, readers
 * (verify.ts and everything that acts on a bundle) parse the signed bytes with parseBundleManifest
 * and trust nothing else.
 */

export const BUNDLE_FORMAT = 1;

/** Entry names in the outer tar. Every other entry is a blob, an SBOM or a template. */
export const BUNDLE_JSON = 'bundle.json';
export const BUNDLE_SIGNATURE = 'bundle.json.sig';
export const OCI_LAYOUT = 'oci/oci-layout';
export const OCI_INDEX = 'oci/index.json';
export const EXECUTABLE = 'dforge';
export const TEMPLATES_PREFIX = 'templates/';
export const SBOM_PREFIX = 'sbom/';
export const BLOBS_PREFIX = 'oci/blobs/sha256/';

/** Caps a reader enforces before trusting anything: a hostile archive cannot exhaust memory. */
export const LIMITS = {
  /** bundle.json and parts.json are read whole. */
  manifestBytes: 16 * 1024 * 1024,
  entries: 100_000,
  /** Path depth under templates/. */
  depth: 16,
  pathBytes: 255,
  /** Everything except blobs and the executable (templates, SBOMs, the OCI index). */
  smallEntryBytes: 32 * 1024 * 1024,
} as const;

export const MEDIA_TYPES = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  /** Layers as the engine exports them: uncompressed, so the digest is the engine's diff id. */
  layer: 'application/vnd.oci.image.layer.v1.tar',
  cyclonedx: 'application/vnd.cyclonedx+json',
} as const;

const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, 'a lowercase hex SHA-256');
export const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/, 'a sha256:<64 hex> digest');
const descriptor = z.object({digest: digestSchema, size: z.number().int().nonnegative()}).strict();

/** What each entry is; a reader acts on an entry only through its kind. */
export const ENTRY_KINDS = ['oci-layout', 'oci-index', 'blob', 'sbom', 'template', 'executable'] as const;
export type EntryKind = (typeof ENTRY_KINDS)[number];

const entrySchema = z
  .object({
    path: z.string().min(1).max(LIMITS.pathBytes),
    kind: z.enum(ENTRY_KINDS),
    size: z.number().int().nonnegative(),
    sha256: sha256Hex,
    /** Octal permission bits as written: 0644, or 0755 for the executable. Never setuid or setgid. */
    mode: z.union([z.literal(0o644), z.literal(0o755)]),
  })
  .strict();
export type BundleEntry = z.infer<typeof entrySchema>;

const imageSchema = z
  .object({
    /** The reference the image is loaded and pushed as, e.g. dforge/app:1.4.2. */
    ref: z.string().min(1).max(255),
    /** The OCI manifest the bundle generated for it: its digest is what registries and k8s pin. */
    manifest: descriptor,
    /** The engine's image config, byte-identical: its digest is the engine's image id. */
    config: descriptor,
    layers: z.array(descriptor).max(512),
    /** sbom/<file> when the image has a dpkg database. */
    sbom: z.string().optional(),
  })
  .strict();
export type BundleImage = z.infer<typeof imageSchema>;

export const bundleManifestSchema = z
  .object({
    format: z.literal(BUNDLE_FORMAT),
    kind: z.literal('dforge-bundle'),
    dforgeVersion: z.string().min(1),
    release: z.string().min(1),
    createdAt: z.string().datetime(),
    /** Who signed bundle.json: the SHA-256 of the Ed25519 public key's DER (SPKI), as audit exports name theirs; null when unsigned. */
    signer: z.object({algorithm: z.literal('Ed25519'), publicKeySha256: sha256Hex}).strict().nullable(),
    images: z.array(imageSchema).max(256),
    /** A delta bundle (--since): the base it was cut against and the blobs it leaves out. */
    base: z
      .object({release: z.string().min(1), bundleJsonSha256: sha256Hex, omittedBlobs: z.array(digestSchema)})
      .strict()
      .optional(),
    /** Every entry of the tar except bundle.json and bundle.json.sig, in tar order. */
    entries: z.array(entrySchema).max(LIMITS.entries),
  })
  .strict();
export type BundleManifest = z.infer<typeof bundleManifestSchema>;

/** `<bundle>.parts.json` next to the parts of a split bundle, signed as `<bundle>.parts.json.sig`. */
export const partsIndexSchema = z
  .object({
    format: z.literal(BUNDLE_FORMAT),
    kind: z.literal('dforge-bundle-parts'),
    /** Binds the parts to one bundle.json. */
    bundleJsonSha256: sha256Hex,
    signer: z.object({algorithm: z.literal('Ed25519'), publicKeySha256: sha256Hex}).strict().nullable(),
    parts: z.array(z.object({name: z.string().regex(/^[^/\\\0]+\.[0-9]{3}$/), size: z.number().int().positive(), sha256: sha256Hex}).strict()).min(1).max(999),
  })
  .strict();
export type PartsIndex = z.infer<typeof partsIndexSchema>;

export const blobPath = (digest: string): string => `${BLOBS_PREFIX}${digest.slice('sha256:'.length)}`;
export const partName = (bundleFile: string, index: number): string => `${bundleFile}.${String(index + 1).padStart(3, '0')}`;
export const partsIndexFile = (bundleFile: string): string => `${bundleFile}.parts.json`;

/** The exact bytes written for a manifest: JSON with two-space indentation and a final newline. */
export const serializeManifest = (value: BundleManifest | PartsIndex): Buffer => Buffer.from(`${JSON.stringify(value, null, 2)}\n`);

/**
 * Parses signed bytes. Call only after the signature over these bytes has been checked (or
 * unsigned was explicitly allowed): a manifest that does not parse is tampering, exit 6.
 */
export function parseBundleManifest(bytes: Buffer, where: string): BundleManifest {
  return parseWith(bundleManifestSchema, bytes, where);
}

export function parsePartsIndex(bytes: Buffer, where: string): PartsIndex {
  return parseWith(partsIndexSchema, bytes, where);
}

function parseWith<T>(schema: z.ZodType<T>, bytes: Buffer, where: string): T {
  if (bytes.length > LIMITS.manifestBytes) throw malformed(where, `it is ${bytes.length} bytes, over the ${LIMITS.manifestBytes}-byte limit`);
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw malformed(where, `it is not JSON (${(err as Error).message})`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw malformed(where, `${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return parsed.data;
}

function malformed(where: string, why: string): VerificationError {
  return new VerificationError(`${where} is not a valid dforge bundle manifest: ${why}`, {
    nextSteps: ['Do not use this bundle. Get it again from whoever built it, and check it with: dforge bundle verify FILE --trusted-key PUB'],
    data: {reason: 'manifest', entry: where},
  });
}
