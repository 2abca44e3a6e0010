import type {Readable} from 'node:stream';

/**
 * Where backups go: a local directory, or an S3-compatible bucket (s3-destination.ts). Both give a
 * streamed write that becomes visible only when complete, listing, and whole-object reads.
 */
export interface BackupDestination {
  readonly name: string;
  readonly region: string;
  /** Streams `source` to `location`; the object becomes visible under its name only once complete and durable. */
  put(location: string, source: Readable): Promise<{size: number}>;
  /** Writes a small object (a manifest) atomically. */
  putSmall(location: string, data: string): Promise<void>;
  get(location: string): Promise<Readable>;
  /** A small object (a manifest) as text; one over SMALL_OBJECT_LIMIT is refused unread, whoever planted it. */
  readSmall(location: string): Promise<string>;
  size(location: string): Promise<number>;
  /**
   * Locations under `prefix`, sorted: complete backups and manifests. With `everything`, a local
   * directory also lists what dforge itself never lists (a `.partial` upload, a hidden file). An S3
   * store lists its objects either way; an unfinished multipart upload is not an object, and
   * removeIncomplete is what clears those.
   */
  list(prefix: string, options?: {everything?: boolean}): Promise<string[]>;
  remove(location: string): Promise<void>;
  /** Removes in-progress uploads older than `olderThanMs` under `prefix` (left by a killed run). */
  removeIncomplete(prefix: string, olderThanMs: number): Promise<string[]>;
  /** A human reference: a path or URL. */
  describe(location: string): string;
  /** The location of a file given as a path, if it lies inside this destination. */
  locate(file: string): string | undefined;
  /** Where the objects physically live, asked of the live system (residency report --verify). */
  where(): Promise<DestinationPlacement>;
}

/** What a destination's storage says about itself: a block device, or a bucket and its location. */
export type DestinationPlacement =
  | {readonly kind: 'local'; readonly path: string; readonly device: string; readonly mountPoint: string | null}
  | {readonly kind: 's3'; readonly endpoint: string; readonly bucket: string; readonly location: string | null};

/** The most readSmall reads: a manifest is well under 1 KiB; anything near this is not one. */
export const SMALL_OBJECT_LIMIT = 64 * 1024;

/** The refusal of an object too large for readSmall. */
export const tooLargeToRead = (what: string, size: number): Error => new Error(`${what} is ${size} bytes, more than the ${SMALL_OBJECT_LIMIT} a manifest can be; not read`);
