import {createHash} from 'node:crypto';
import {Readable} from 'node:stream';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {S3Destination, type S3DestinationConfig} from '../../src/backup/s3-destination.js';
import {UserError} from '../../src/errors.js';
import {startS3Server, type S3TestServer} from '../helpers/s3-server.js';

const MiB = 1024 * 1024;

/** A deterministic stream of `total` bytes in 1 MiB chunks; fails after `failAfter` bytes if given. */
function generated(total: number, failAfter?: number): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (failAfter !== undefined && sent >= failAfter) return this.destroy(new Error('source broke mid-stream'));
      if (sent >= total) return this.push(null);
      const chunk = Buffer.alloc(Math.min(MiB, total - sent), sent / MiB);
      sent += chunk.length;
      this.push(chunk);
    },
  });
}

async function sha(stream: Readable): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of stream) h.update(chunk as Buffer);
  return h.digest('hex');
}

describe('S3 destination against a real S3-protocol server', () => {
  let s3: S3TestServer;
  const secrets = (creds: object) => ({get: async () => Buffer.from(JSON.stringify(creds))});
  const config = (over: Partial<S3DestinationConfig> = {}): S3DestinationConfig => ({name: 'us-s3', kind: 's3', endpoint: s3.endpoint, bucket: s3.bucket, prefix: 'dforge', credentials: {secret: 'backup/us-s3'}, ...over});
  const destination = (over: Partial<S3DestinationConfig> = {}, creds: object = s3.credentials) => new S3Destination('us', config(over), secrets(creds));

  beforeAll(async () => {
    s3 = await startS3Server();
  });
  afterAll(async () => {
    await s3.stop();
  });

  it('refuses wrong credentials with the destination, the S3 code and what to do, and no secret', async () => {
    // A key id the store does not know (the wrong secret for the right id is the next test).
    const wrong = {accessKeyId: 'NOBODY', secretAccessKey: 'not-the-secret-9f3a', region: 'us-east-1'};
    const err = await destination({}, wrong).putSmall('acme/x.json', '{}').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    const e = err as UserError;
    expect(e.message).toContain('us-s3');
    expect(e.message).toContain('InvalidAccessKeyId');
    expect(e.nextSteps.join(' ')).toContain('dforge backup credentials us-s3');
    expect(`${e.message} ${e.nextSteps.join(' ')}`).not.toContain('not-the-secret-9f3a');
    // Nothing was written.
    expect(await destination().list('')).toEqual([]);
  });

  it('refuses the right access key id with a wrong secret: says the credentials were refused and how to fix them, writes nothing', async () => {
    const wrong = {...s3.credentials, secretAccessKey: 'not-the-secret-4c1d'};
    const refused = (err: unknown, what: string): void => {
      expect(err, what).toBeInstanceOf(UserError);
      const e = err as UserError;
      expect(e.message, what).toContain('us-s3');
      expect(e.message, what).toContain('SignatureDoesNotMatch (HTTP 403)');
      expect(e.message, what).toContain('refused its credentials');
      expect(e.message, what).toContain('secret key');
      expect(e.nextSteps.join(' '), what).toContain('dforge backup credentials us-s3 < credentials.json');
      expect(`${e.message} ${e.nextSteps.join(' ')}`, what).not.toContain('not-the-secret-4c1d');
      expect(`${e.message} ${e.nextSteps.join(' ')}`, what).not.toContain(s3.credentials.secretAccessKey);
    };
    const d = destination({}, wrong);
    refused(await d.putSmall('acme/x.json', '{}').catch((e: unknown) => e), 'putSmall');
    refused(await d.put('acme/x.dfb', generated(7 * MiB)).catch((e: unknown) => e), 'put');
    refused(await d.list('').catch((e: unknown) => e), 'list');
    refused(await d.removeIncomplete('', 0).catch((e: unknown) => e), 'removeIncomplete');
    // Nothing was written, not even an open multipart upload.
    expect(await destination().list('')).toEqual([]);
    expect(await destination({prefix: ''}).list('')).toEqual([]);
    expect(await s3.openUploads()).toEqual([]);
  });

  it('refuses a plain-http endpoint off loopback before any request is made', async () => {
    const err = await destination({endpoint: 'http://backup.example.net:9000'}).list('').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toContain('not https');
    expect((err as UserError).nextSteps.join(' ')).toContain('https://');
  });

  it('names the destination and the connection error when the endpoint does not answer', async () => {
    const err = await destination({endpoint: 'http://127.0.0.1:9'}).list('').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).message).toContain('us-s3');
    expect((err as UserError).message).toContain('ECONNREFUSED');
    expect((err as UserError).nextSteps.join(' ')).toContain('reachable');
  });

  it('refuses unreadable sealed credentials without echoing them', async () => {
    const err = await new S3Destination('us', config(), {get: async () => Buffer.from('{"accessKeyId":"AKIA-leak"}')}).list('').catch((e: unknown) => e);
    expect((err as UserError).message).toContain('not S3 credentials');
    expect((err as UserError).message).not.toContain('AKIA-leak');
  });

  it('round-trips small and streamed objects under the prefix, and says where it lives', async () => {
    const d = destination();
    await d.putSmall('acme/m.json', '{"a":1}');
    expect(await d.readSmall('acme/m.json')).toBe('{"a":1}');
    const {size} = await d.put('acme/b.dfb', generated(3 * MiB));
    expect(size).toBe(3 * MiB);
    expect(await d.size('acme/b.dfb')).toBe(3 * MiB);
    expect(await sha(await d.get('acme/b.dfb'))).toBe(await sha(generated(3 * MiB)));
    expect(await d.list('acme/')).toEqual(['acme/b.dfb', 'acme/m.json']);
    expect(d.describe('acme/b.dfb')).toBe(`s3://${s3.bucket}/dforge/acme/b.dfb`);
    expect(d.locate(`s3://${s3.bucket}/dforge/acme/b.dfb`)).toBe('acme/b.dfb');
    expect(d.locate(`s3://${s3.bucket}/other/acme/b.dfb`)).toBeUndefined();
    expect(d.locate(`s3://${s3.bucket}/dforge/../x`)).toBeUndefined();
    expect(() => d.describe('../escape')).toThrow(UserError);
    // Another prefix in the same bucket is another destination: it sees none of these.
    expect(await destination({prefix: 'elsewhere'}).list('')).toEqual([]);
    expect(await d.where()).toEqual({kind: 's3', endpoint: s3.endpoint, bucket: s3.bucket, location: null}); // s3rver, like AWS us-east-1, names no location constraint
    await d.remove('acme/b.dfb');
    await d.remove('acme/m.json');
    expect(await d.list('')).toEqual([]);
    const missing = await d.get('acme/b.dfb').catch((e: unknown) => e);
    expect((missing as UserError).message).toContain('NoSuchKey');
  });

  it('streams a file of more than two parts by multipart upload', async () => {
    const d = destination();
    const total = 13 * MiB;
    const {size} = await d.put('acme/big.dfb', generated(total));
    expect(size).toBe(total);
    expect(await d.size('acme/big.dfb')).toBe(total);
    expect(await sha(await d.get('acme/big.dfb'))).toBe(await sha(generated(total)));
    expect(await s3.openUploads()).toEqual([]);
    await d.remove('acme/big.dfb');
  });

  it('a source that fails mid-upload leaves no visible object', async () => {
    const d = destination();
    const err = await d.put('acme/broken.dfb', generated(20 * MiB, 11 * MiB)).catch((e: unknown) => e);
    expect((err as Error).message).toBe('source broke mid-stream');
    expect(await d.list('')).toEqual([]);
    const size = await d.size('acme/broken.dfb').catch((e: unknown) => e);
    expect(size).toBeInstanceOf(UserError);
    // Parts were uploaded before the failure; the upload was aborted, so none is left stored.
    expect(await s3.openUploads()).toEqual([]);
  });

  it('removeIncomplete aborts stale uploads under the prefix and leaves newer ones and others alone', async () => {
    const {S3Client, CreateMultipartUploadCommand} = await import('@aws-sdk/client-s3');
    const client = new S3Client({endpoint: s3.endpoint, region: 'us-east-1', credentials: s3.credentials, forcePathStyle: true});
    // What a killed backup leaves: uploads started and never completed nor aborted.
    await client.send(new CreateMultipartUploadCommand({Bucket: s3.bucket, Key: 'dforge/acme/killed.dfb'}));
    await client.send(new CreateMultipartUploadCommand({Bucket: s3.bucket, Key: 'dforge/globex/killed.dfb'}));
    await client.send(new CreateMultipartUploadCommand({Bucket: s3.bucket, Key: 'other/acme/theirs.dfb'}));
    client.destroy();
    const d = destination();
    expect(await d.removeIncomplete('acme/', 60 * 60 * 1000)).toEqual([]);
    expect(await s3.openUploads()).toHaveLength(3);
    expect(await d.removeIncomplete('acme/', 0)).toEqual(['acme/killed.dfb']);
    expect(await s3.openUploads()).toHaveLength(2);
    expect(await d.removeIncomplete('', 0)).toEqual(['globex/killed.dfb']);
    expect(await s3.openUploads()).toHaveLength(1);
  });
});
