import {createCipheriv, createDecipheriv, createHash, createHmac, createSecretKey, hkdfSync, randomBytes, timingSafeEqual, type KeyObject} from 'node:crypto';
import {Transform, type TransformCallback} from 'node:stream';

import type {OpsLogHead} from '../audit/ops-log.js';
import {VerificationError} from '../errors.js';
import {dataKeyId} from '../secrets/data-keys.js';
import {KEY_BYTES, keyCheckValue, readHeader, unwrap, wrap, type RandomSource, type WrappingKey} from '../secrets/envelope.js';
import {MASTER_KEY_ID} from '../secrets/master-key.js';

/**
 * The encrypted backup format (docs/formats.md, "Backup file").
 *
 * Header: magic, version, a JSON description (tenant, region, cluster, PostgreSQL version,
 * creation time, backup id, wrapping key id and version, chunk size), the per-backup file key
 * wrapped by the tenant data key (or the master key for control backups), and an HMAC over all of
 * it with a key derived from the file key. Body: the STREAM construction (as in age): AES-256-GCM
 * chunks of CHUNK_SIZE plaintext bytes, nonce = 11-byte big-endian counter || 1 byte that is 1 on
 * the final chunk only, under a payload key derived from the file key and the header's hash. So a
 * flipped bit, an edited header, swapped or dropped chunks, truncation (at a chunk boundary too)
 * and a wrong key all fail authentication.
 */

const MAGIC = Buffer.from('DFBACKUP');
const FORMAT_VERSION = 1;
export const CHUNK_SIZE = 64 * 1024;
const TAG_BYTES = 16;
const MAC_BYTES = 32;

export interface BackupHeader {
  readonly kind: 'tenant' | 'control';
  readonly backupId: string;
  readonly tenant: string;
  readonly region: string;
  readonly cluster: string;
  readonly pgVersion: string;
  readonly createdAt: string;
  readonly keyId: string;
  readonly keyVersion: number;
  readonly chunkSize: number;
  /**
   * Control backups: the ops log's head when the dump began. Authenticated with the rest of the
   * header, it is a second anchor of the log outside dforge_control: restore --control
   * re-anchors to it (docs/formats.md, "Ops log").
   */
  readonly opsLogHead?: OpsLogHead;
}

export interface ParsedHeader {
  readonly header: BackupHeader;
  /** Bytes the header occupies at the start of the file. */
  readonly length: number;
  readonly raw: Buffer;
  readonly wrappedFileKey: Buffer;
  readonly mac: Buffer;
}

const fileKeyContext = (backupId: string): string => `backup-file-key:${backupId}`;

function deriveKeys(fileKey: Buffer, headerWithoutMac: Buffer): {macKey: Buffer; payloadKey: Buffer} {
  const salt = createHash('sha256').update(headerWithoutMac).digest();
  return {
    macKey: Buffer.from(hkdfSync('sha256', fileKey, Buffer.alloc(0), 'dforge backup header', 32)),
    payloadKey: Buffer.from(hkdfSync('sha256', fileKey, salt, 'dforge backup payload', 32)),
  };
}

/**
 * Who wraps the per-backup file key: a tenant data key (wrapped locally), or the master key
 * service for control backups (which may be remote one day, hence the async functions).
 */
export interface FileKeyWrapper {
  readonly keyId: string;
  readonly keyVersion: number;
  /**
   * The key check value of the key this wrapper opens with, when known without unwrapping. A file
   * key whose blob carries another check value was edited (or comes from another install): that is
   * tampering, told apart from a genuinely wrong or missing key configured on this host.
   */
  readonly keyCheck?: Buffer;
  wrap(fileKey: Buffer, context: string): Promise<Buffer>;
  unwrap(wrapped: Buffer, context: string, what: string): Promise<Buffer>;
}

/** A data key as a file-key wrapper. */
export function dataKeyWrapper(key: WrappingKey, random: RandomSource = randomBytes): FileKeyWrapper {
  return {
    keyId: key.id,
    keyVersion: key.version,
    keyCheck: keyCheckValue(key.material),
    wrap: async (fileKey, context) => wrap(key, fileKey, context, random),
    unwrap: async (wrapped, context, what) => unwrap(key, wrapped, context, what),
  };
}

/** Builds the header for a new backup and the payload key its body is encrypted with. */
export async function createHeader(header: Omit<BackupHeader, 'keyId' | 'keyVersion' | 'chunkSize'>, wrapper: FileKeyWrapper, random: RandomSource = randomBytes): Promise<{bytes: Buffer; payloadKey: Buffer}> {
  const fileKey = random(KEY_BYTES);
  const full: BackupHeader = {...header, keyId: wrapper.keyId, keyVersion: wrapper.keyVersion, chunkSize: CHUNK_SIZE};
  const json = Buffer.from(JSON.stringify(full), 'utf8');
  const wrapped = await wrapper.wrap(fileKey, fileKeyContext(header.backupId));
  const jsonLength = Buffer.alloc(4);
  jsonLength.writeUInt32BE(json.length);
  const wrappedLength = Buffer.alloc(2);
  wrappedLength.writeUInt16BE(wrapped.length);
  const body = Buffer.concat([MAGIC, Buffer.from([FORMAT_VERSION]), jsonLength, json, wrappedLength, wrapped]);
  const {macKey, payloadKey} = deriveKeys(fileKey, body);
  return {bytes: Buffer.concat([body, createHmac('sha256', macKey).update(body).digest()]), payloadKey};
}

/** Parses the header without any key: what a backup is, and which key opens it. */
export function parseHeader(bytes: Buffer, what: string): ParsedHeader {
  const corrupt = (why: string): never => {
    throw new VerificationError(`${what} is not a valid dforge backup: ${why}`, {
      nextSteps: ['Use another backup; check it first with: dforge backup verify <id>'],
    });
  };
  if (bytes.length < 13 || !bytes.subarray(0, 8).equals(MAGIC)) corrupt('the header magic is missing');
  if (bytes[8] !== FORMAT_VERSION) corrupt(`unknown format version ${bytes[8]}`);
  const jsonLength = bytes.readUInt32BE(9);
  if (jsonLength > 64 * 1024 || bytes.length < 13 + jsonLength + 2) corrupt('the header is truncated');
  let header: BackupHeader;
  try {
    header = JSON.parse(bytes.subarray(13, 13 + jsonLength).toString('utf8')) as BackupHeader;
  } catch {
    return corrupt('the header description is not readable');
  }
  const invalid = invalidField(header);
  if (invalid) corrupt(`its header field ${invalid} is missing or malformed`);
  const wrappedLength = bytes.readUInt16BE(13 + jsonLength);
  const wrappedStart = 13 + jsonLength + 2;
  const macStart = wrappedStart + wrappedLength;
  if (bytes.length < macStart + MAC_BYTES) corrupt('the header is truncated');
  if (header.chunkSize !== CHUNK_SIZE) corrupt(`unsupported chunk size ${header.chunkSize}`);
  // Which key opens the file is read from unauthenticated bytes, so every copy of that choice must
  // agree before any key is looked up: one edited byte is then tampering, never "no such key".
  const expectedKeyId = header.kind === 'control' ? MASTER_KEY_ID : dataKeyId(header.tenant);
  if (header.keyId !== expectedKeyId) corrupt(`its header names key ${header.keyId} for a ${header.kind} backup of ${header.tenant}`);
  if (header.kind === 'control' && header.tenant !== CONTROL_OWNER) corrupt(`its header names owner ${header.tenant} for a control backup`);
  const wrapped = readHeader(bytes.subarray(wrappedStart, macStart), `the file key of ${what}`);
  if (wrapped.keyId !== header.keyId || wrapped.keyVersion !== header.keyVersion) {
    corrupt(`the header names ${header.keyId} v${header.keyVersion}, but its file key is wrapped by ${wrapped.keyId} v${wrapped.keyVersion}`);
  }
  return {
    header,
    length: macStart + MAC_BYTES,
    raw: bytes.subarray(0, macStart),
    wrappedFileKey: bytes.subarray(wrappedStart, macStart),
    mac: bytes.subarray(macStart, macStart + MAC_BYTES),
  };
}

/** The owner name control backups carry in their `tenant` field. */
export const CONTROL_OWNER = '_control';

const TEXT_FIELDS = ['backupId', 'tenant', 'region', 'cluster', 'pgVersion', 'createdAt', 'keyId'] as const;

/** The first field of a parsed header description that is absent or of the wrong shape. */
function invalidField(h: BackupHeader): string | undefined {
  if (typeof h !== 'object' || h === null) return 'description';
  if (h.kind !== 'tenant' && h.kind !== 'control') return 'kind';
  for (const f of TEXT_FIELDS) if (typeof h[f] !== 'string' || h[f].length === 0) return f;
  if (!/^\d+$/.test(h.pgVersion)) return 'pgVersion';
  if (Number.isNaN(Date.parse(h.createdAt))) return 'createdAt';
  if (!Number.isSafeInteger(h.keyVersion) || h.keyVersion < 1) return 'keyVersion';
  if (typeof h.chunkSize !== 'number') return 'chunkSize';
  if (h.opsLogHead !== undefined) {
    const head = h.opsLogHead as Partial<OpsLogHead> | null;
    if (h.kind !== 'control' || typeof head !== 'object' || head === null) return 'opsLogHead';
    if (!Number.isSafeInteger(head.seq) || typeof head.mac !== 'string' || !(head.keyId === null || typeof head.keyId === 'string')) return 'opsLogHead';
  }
  return undefined;
}

/**
 * Unwraps the file key and authenticates the header; returns the payload key. Only after this may
 * anything be decided on the header's fields. Every failure caused by the file's bytes is a
 * VerificationError; a key this host cannot load (not configured, retired) stays the key's error.
 */
export async function openHeader(parsed: ParsedHeader, wrapper: FileKeyWrapper, what: string): Promise<Buffer> {
  const needed = readHeader(parsed.wrappedFileKey, `the file key of ${what}`);
  if (needed.keyId !== wrapper.keyId || needed.keyVersion !== wrapper.keyVersion) {
    throw new VerificationError(`${what}: its file key is wrapped by ${needed.keyId} v${needed.keyVersion}, not by ${wrapper.keyId} v${wrapper.keyVersion}`, {
      nextSteps: ['The file was edited, or belongs to another tenant or install; use another backup.'],
    });
  }
  if (wrapper.keyCheck && !timingSafeEqual(needed.keyCheck, wrapper.keyCheck)) {
    throw new VerificationError(`${what}: its file key was wrapped by a different ${needed.keyId} v${needed.keyVersion} than this install's (the file was edited, or comes from another install)`, {
      nextSteps: ['Nothing was read from it. Use another backup (dforge backup list).'],
    });
  }
  const fileKey = await wrapper.unwrap(parsed.wrappedFileKey, fileKeyContext(parsed.header.backupId), `the file key of ${what}`);
  const {macKey, payloadKey} = deriveKeys(fileKey, parsed.raw);
  if (!timingSafeEqual(createHmac('sha256', macKey).update(parsed.raw).digest(), parsed.mac)) {
    throw new VerificationError(`${what}: the header failed authentication (it was edited)`, {nextSteps: ['Use another backup.']});
  }
  return payloadKey;
}

function nonce(counter: bigint, final: boolean): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(counter, 3);
  n[11] = final ? 1 : 0;
  return n;
}

/** Readable side buffering of the encoder: the file is written in batches of about this size. */
const OUTPUT_HIGH_WATER_MARK = 1024 * 1024;

/**
 * Encodes a plaintext stream as a backup file: the header, then STREAM chunks. Input is copied into
 * one reusable 64 KiB buffer rather than concatenated, and ciphertext and tag are pushed as they
 * come, so memory stays at a few chunks and the garbage collector has little to do. It hashes what
 * it emits, which is the file, for the manifest.
 *
 * `sourceComplete` gates the final chunk: its flag says "nothing was cut off here", so it is sealed
 * only once the producer (pg_dump) has exited successfully. If the producer fails, so does the
 * stream, and no complete-looking file is ever written.
 */
export class EncryptStream extends Transform {
  private readonly buffer = Buffer.allocUnsafe(CHUNK_SIZE);
  private filled = 0;
  private counter = 0n;
  private readonly hash = createHash('sha256');
  private emitted = 0;

  // Imported once: a raw key handed to every createCipheriv would be imported again per chunk.
  private readonly key: KeyObject;

  constructor(
    header: {readonly bytes: Buffer; readonly payloadKey: Buffer},
    private readonly sourceComplete: Promise<void> = Promise.resolve(),
  ) {
    super({readableHighWaterMark: OUTPUT_HIGH_WATER_MARK});
    this.key = createSecretKey(header.payloadKey);
    this.output(header.bytes);
  }

  /** SHA-256 (hex) and length of the file emitted so far: the whole file once the stream has ended. */
  digest(): {sha256: string; size: number} {
    return {sha256: this.hash.copy().digest('hex'), size: this.emitted};
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let offset = 0;
    while (offset < chunk.length) {
      // A full buffer is sealed as non-final only once more data is known to follow it.
      if (this.filled === CHUNK_SIZE) {
        this.seal(this.buffer, false);
        this.filled = 0;
      }
      const n = chunk.copy(this.buffer, this.filled, offset);
      this.filled += n;
      offset += n;
    }
    done();
  }

  override _flush(done: TransformCallback): void {
    this.sourceComplete.then(() => {
      try {
        this.seal(this.buffer.subarray(0, this.filled), true);
      } catch (err) {
        done(err as Error);
        return;
      }
      done();
    }, done);
  }

  private seal(plain: Buffer, final: boolean): void {
    const cipher = createCipheriv('aes-256-gcm', this.key, nonce(this.counter++, final));
    this.output(cipher.update(plain));
    cipher.final();
    this.output(cipher.getAuthTag());
  }

  private output(bytes: Buffer): void {
    this.hash.update(bytes);
    this.emitted += bytes.length;
    this.push(bytes);
  }
}

/**
 * Decrypts STREAM chunks. Each chunk is authenticated before its plaintext is pushed, and the last
 * one must carry the final flag, so truncation anywhere is an error, never a short restore.
 */
export class DecryptStream extends Transform {
  private readonly buffer = Buffer.allocUnsafe(CHUNK_SIZE + TAG_BYTES);
  private filled = 0;
  private counter = 0n;

  private readonly key: KeyObject;

  constructor(
    payloadKey: Buffer,
    private readonly what: string,
  ) {
    super();
    this.key = createSecretKey(payloadKey);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      let offset = 0;
      while (offset < chunk.length) {
        // A whole sealed chunk followed by more bytes cannot be the final one.
        if (this.filled === this.buffer.length) {
          this.push(this.open(this.buffer, false));
          this.filled = 0;
        }
        const n = chunk.copy(this.buffer, this.filled, offset);
        this.filled += n;
        offset += n;
      }
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      if (this.filled < TAG_BYTES) throw this.failure('it is truncated');
      this.push(this.open(this.buffer.subarray(0, this.filled), true));
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  private open(sealed: Buffer, final: boolean): Buffer {
    const decipher = createDecipheriv('aes-256-gcm', this.key, nonce(this.counter, final));
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    try {
      const plain = Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - TAG_BYTES)), decipher.final()]);
      this.counter++;
      return plain;
    } catch {
      throw this.failure(final ? `chunk ${this.counter} failed authentication, or the file was truncated or reordered` : `chunk ${this.counter} failed authentication`);
    }
  }

  private failure(why: string): VerificationError {
    return new VerificationError(`${this.what} failed verification: ${why}`, {
      nextSteps: ['The file was modified, truncated or damaged; nothing was restored from it. Use another backup (dforge backup list).'],
    });
  }
}
