import {isIP} from 'node:net';
import {PassThrough, Readable, Transform} from 'node:stream';
import {pipeline} from 'node:stream/promises';

import type {S3Client} from '@aws-sdk/client-s3';

import type {DestinationConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import {SMALL_OBJECT_LIMIT, tooLargeToRead, type BackupDestination, type DestinationPlacement} from './backup-destination.js';

export type S3DestinationConfig = Extract<DestinationConfig, {kind: 's3'}>;

/** What a destination's sealed credentials secret holds. */
export interface S3Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region?: string;
}

/** Reads a sealed secret by name (the install's SealedStore). */
export interface SecretReader {
  get(name: string): Promise<Buffer>;
}

/** The smallest part S3 accepts; parts are buffered one at a time per queue slot, never the whole file. */
const PART_SIZE = 5 * 1024 * 1024;
const QUEUE_SIZE = 2;

/** Validates the JSON a destination's credentials secret holds; the message never echoes the value. */
export function parseS3Credentials(raw: Buffer | string, what: string): S3Credentials {
  let value: unknown;
  try {
    value = JSON.parse(raw.toString());
  } catch {
    value = undefined;
  }
  const {accessKeyId, secretAccessKey, region} = (value ?? {}) as Record<string, unknown>;
  if (typeof accessKeyId === 'string' && accessKeyId && typeof secretAccessKey === 'string' && secretAccessKey && (region === undefined || (typeof region === 'string' && region))) {
    return {accessKeyId, secretAccessKey, ...(region === undefined ? {} : {region})};
  }
  throw new UserError(`${what} is not S3 credentials`, {
    nextSteps: ['Give a JSON object {"accessKeyId": "...", "secretAccessKey": "...", "region": "..."} (region optional) on stdin to: dforge backup credentials DESTINATION'],
  });
}

/**
 * A plain-http endpoint would carry the request signatures, object names and sizes in clear (the
 * objects themselves are encrypted end to end). Only loopback is exempt: a local test server or a
 * TLS-terminating sidecar on the same host.
 */
export function checkS3Endpoint(name: string, endpoint: string): URL {
  const url = new URL(endpoint);
  if (url.protocol === 'https:') return url;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  // An address, not a name that merely starts with 127. (127.0.0.1.nip.io resolves anywhere).
  const loopback = host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
  if (url.protocol === 'http:' && loopback && url.username === '' && url.password === '') return url;
  throw new UserError(`backup destination ${name}: endpoint ${url.origin} is not https`, {
    nextSteps: [`Use an https:// endpoint for ${name} in dforge.yaml: over plain http the signed requests, object names and sizes travel in clear (plain http is allowed only on loopback).`],
  });
}

/**
 * An S3-compatible bucket. Objects are written by multipart upload, which the store makes visible
 * only on CompleteMultipartUpload, so a killed or failed backup never leaves a partial object under
 * a backup's name; a failed upload is aborted. The SDK is imported when first used: most runs
 * never touch S3 and it is a large load.
 */
export class S3Destination implements BackupDestination {
  readonly name: string;
  private readonly prefix: string;
  private client?: Promise<S3Client>;

  constructor(
    readonly region: string,
    private readonly config: S3DestinationConfig,
    private readonly secrets: SecretReader | undefined,
  ) {
    this.name = config.name;
    const trimmed = config.prefix.replace(/^\/+|\/+$/g, '');
    this.prefix = trimmed ? `${trimmed}/` : '';
  }

  private key(location: string): string {
    const parts = location.split('/');
    if (location.startsWith('/') || parts.some((p) => p === '..' || p === '.')) throw new UserError(`backup location ${location} escapes destination ${this.name}`);
    return `${this.prefix}${location}`;
  }

  describe(location: string): string {
    return `s3://${this.config.bucket}/${this.key(location)}`;
  }

  locate(file: string): string | undefined {
    const base = `s3://${this.config.bucket}/${this.prefix}`;
    if (!file.startsWith(base) || file.length === base.length) return undefined;
    const location = file.slice(base.length);
    return location.split('/').some((p) => p === '..' || p === '.' || p === '') ? undefined : location;
  }

  private s3(): Promise<S3Client> {
    this.client ??= (async () => {
      const endpoint = checkS3Endpoint(this.name, this.config.endpoint);
      if (!this.secrets) throw new UserError(`backup destination ${this.name}: no access to the install's sealed secrets here`, {nextSteps: ['Run the command from the install directory (--dir).']});
      const secret = this.config.credentials.secret;
      const raw = await this.secrets.get(secret).catch((err: unknown) => {
        throw new UserError(`backup destination ${this.name}: its credentials (sealed secret ${secret}) cannot be read: ${err instanceof Error ? err.message : String(err)}`, {
          nextSteps: [`Seal them with: dforge backup credentials ${this.name} < credentials.json`],
        });
      });
      const credentials = parseS3Credentials(raw, `sealed secret ${secret} of destination ${this.name}`);
      const {S3Client} = await import('@aws-sdk/client-s3');
      return new S3Client({
        endpoint: endpoint.origin + endpoint.pathname.replace(/\/$/, ''),
        region: credentials.region ?? 'us-east-1',
        credentials: {accessKeyId: credentials.accessKeyId, secretAccessKey: credentials.secretAccessKey},
        // Virtual-hosted names need wildcard DNS that self-hosted stores rarely have; AWS takes both.
        forcePathStyle: !/\.amazonaws\.com$/.test(endpoint.hostname),
        maxAttempts: 3,
      });
    })();
    return this.client;
  }

  /** Runs an S3 call; a failure becomes a UserError naming the destination and the S3 code, never the SDK's text. */
  private async call<T>(what: string, fn: (client: S3Client, sdk: typeof import('@aws-sdk/client-s3')) => Promise<T>): Promise<T> {
    const client = await this.s3();
    const sdk = await import('@aws-sdk/client-s3');
    try {
      return await fn(client, sdk);
    } catch (err) {
      throw this.mapError(what, err);
    }
  }

  private mapError(what: string, err: unknown): Error {
    if (err instanceof UserError) return err;
    const e = err as {name?: string; code?: string; $metadata?: {httpStatusCode?: number}};
    const status = e.$metadata?.httpStatusCode;
    // An S3 answer carries its error code as the name; a failed connection only its errno code.
    const code = (status === undefined ? e.code : undefined) ?? e.name ?? 'Error';
    const where = `${this.config.endpoint} bucket ${this.config.bucket}`;
    const step: Record<string, string> = {
      InvalidAccessKeyId: `Seal the right access key again: dforge backup credentials ${this.name} < credentials.json`,
      SignatureDoesNotMatch: `Seal the secret key that belongs to the access key id again: dforge backup credentials ${this.name} < credentials.json`,
      AccessDenied: `Grant the key of ${this.name} s3:PutObject, GetObject, ListBucket, DeleteObject and the multipart actions on ${this.config.bucket}.`,
      NoSuchBucket: `Create bucket ${this.config.bucket} at ${this.config.endpoint}, or fix the bucket of ${this.name} in dforge.yaml.`,
      NoSuchKey: 'List backups with: dforge backup list',
      NotFound: 'List backups with: dforge backup list',
      ECONNREFUSED: `Check that ${this.config.endpoint} is up and reachable from this host.`,
      ENOTFOUND: `Check the endpoint host name of ${this.name} in dforge.yaml.`,
    };
    // The code alone does not tell an operator that the store refused the credentials, nor which half is wrong.
    const refused: Record<string, string> = {
      InvalidAccessKeyId: 'the store refused its credentials: it knows no such access key id',
      SignatureDoesNotMatch: 'the store refused its credentials: the secret key is not the one of the access key id',
    };
    return new UserError(`backup destination ${this.name} (${where}): ${what} failed: ${code}${status ? ` (HTTP ${status})` : ''}${refused[code] ? `; ${refused[code]}` : ''}`, {
      nextSteps: [step[code] ?? `Check ${this.name}'s endpoint, bucket and credentials; retry once the store answers.`],
    });
  }

  async put(location: string, source: Readable): Promise<{size: number}> {
    const key = this.key(location);
    // The caller's producer (pg_dump, the encryptor) stops only when its stream is consumed or destroyed.
    const client = await this.s3().catch((err: unknown) => {
      source.destroy();
      throw err;
    });
    const {Upload} = await import('@aws-sdk/lib-storage');
    let size = 0;
    const counted = new PassThrough({highWaterMark: PART_SIZE});
    const counter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        size += chunk.length;
        done(null, chunk);
      },
    });
    // Only the source's own failure counts as one: when the store fails, the SDK destroys `counted`,
    // the pipeline rejects with an abort, and the store's error is the one the operator needs.
    let sourceError: unknown;
    source.once('error', (err: unknown) => {
      sourceError = err;
    });
    const feeding = pipeline(source, counter, counted).catch((err: unknown) => {
      // A source that fails must fail the upload too: the SDK would otherwise wait for more bytes.
      counted.destroy(err instanceof Error ? err : new Error(String(err)));
    });
    const upload = new Upload({client, params: {Bucket: this.config.bucket, Key: key, Body: counted}, partSize: PART_SIZE, queueSize: QUEUE_SIZE, leavePartsOnError: false});
    const [done] = await Promise.allSettled([upload.done(), feeding]);
    if (done.status === 'fulfilled' && sourceError === undefined) return {size};
    // Abort explicitly: the SDK aborts only some failures, and an open upload keeps its parts stored.
    await upload.abort().catch(() => undefined);
    // A completed object from a failed source cannot happen (the body errored first), but be sure.
    if (done.status === 'fulfilled') await this.remove(location);
    if (sourceError !== undefined) throw sourceError;
    throw this.mapError(`upload of ${location}`, done.status === 'rejected' ? done.reason : undefined);
  }

  async putSmall(location: string, data: string): Promise<void> {
    // One PUT is atomic on S3: the object is either the old one or the whole new one.
    await this.call(`write of ${location}`, (c, sdk) => c.send(new sdk.PutObjectCommand({Bucket: this.config.bucket, Key: this.key(location), Body: data})));
  }

  async get(location: string): Promise<Readable> {
    const out = await this.call(`read of ${location}`, (c, sdk) => c.send(new sdk.GetObjectCommand({Bucket: this.config.bucket, Key: this.key(location)})));
    if (!(out.Body instanceof Readable)) throw new UserError(`backup destination ${this.name}: read of ${location} returned no body`);
    return out.Body;
  }

  async readSmall(location: string): Promise<string> {
    const size = await this.size(location);
    if (size > SMALL_OBJECT_LIMIT) throw tooLargeToRead(this.describe(location), size);
    const body = await this.get(location);
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }

  async size(location: string): Promise<number> {
    const out = await this.call(`size of ${location}`, (c, sdk) => c.send(new sdk.HeadObjectCommand({Bucket: this.config.bucket, Key: this.key(location)})));
    return out.ContentLength ?? 0;
  }

  async list(prefix: string): Promise<string[]> {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.call('listing', (c, sdk) =>
        c.send(new sdk.ListObjectsV2Command({Bucket: this.config.bucket, Prefix: `${this.prefix}${prefix}`, ContinuationToken: token})),
      );
      for (const o of page.Contents ?? []) if (o.Key) out.push(o.Key.slice(this.prefix.length));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  }

  async remove(location: string): Promise<void> {
    await this.call(`removal of ${location}`, (c, sdk) => c.send(new sdk.DeleteObjectCommand({Bucket: this.config.bucket, Key: this.key(location)})));
  }

  async removeIncomplete(prefix: string, olderThanMs: number): Promise<string[]> {
    const removed: string[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      let page;
      try {
        const client = await this.s3();
        const sdk = await import('@aws-sdk/client-s3');
        page = await client.send(new sdk.ListMultipartUploadsCommand({Bucket: this.config.bucket, Prefix: `${this.prefix}${prefix}`, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker}));
      } catch (err) {
        // Stores without the listing (some S3-compatible servers) expire uploads by lifecycle rule
        // instead; an open upload is invisible and its parts are ciphertext, so skipping is safe.
        if ((err as {name?: string}).name === 'NotImplemented') return removed;
        throw this.mapError('listing of incomplete uploads', err);
      }
      for (const u of page.Uploads ?? []) {
        if (!u.Key || !u.UploadId || !u.Initiated || Date.now() - u.Initiated.getTime() < olderThanMs) continue;
        const {Key, UploadId} = u;
        await this.call(`abort of ${Key}`, (c, sdk) => c.send(new sdk.AbortMultipartUploadCommand({Bucket: this.config.bucket, Key, UploadId})));
        removed.push(Key.slice(this.prefix.length));
      }
      keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
      uploadIdMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
    } while (keyMarker);
    return removed;
  }

  async where(): Promise<DestinationPlacement> {
    const out = await this.call('bucket location', (c, sdk) => c.send(new sdk.GetBucketLocationCommand({Bucket: this.config.bucket})));
    return {kind: 's3', endpoint: this.config.endpoint, bucket: this.config.bucket, location: out.LocationConstraint || null};
  }
}
