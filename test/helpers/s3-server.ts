import {createHash, createHmac, randomBytes, timingSafeEqual} from 'node:crypto';
import {promises as fs} from 'node:fs';
import {createRequire} from 'node:module';
import os from 'node:os';
import path from 'node:path';

export interface S3TestServer {
  readonly endpoint: string;
  readonly bucket: string;
  /** A random key pair made for this server: a request signed with any other secret is refused. */
  readonly credentials: {accessKeyId: string; secretAccessKey: string; region: string};
  /** The directory s3rver stores objects in. */
  readonly directory: string;
  /** Multipart uploads started and neither completed nor aborted, read from s3rver's store. */
  openUploads(): Promise<string[]>;
  stop(): Promise<void>;
}

interface KoaContext {
  method: string;
  path: string;
  originalUrl: string;
  querystring: string;
  query: Record<string, string | undefined>;
  headers: Record<string, string | string[] | undefined>;
  status: number;
  type: string;
  body: unknown;
}
type Middleware = (ctx: KoaContext, next: () => Promise<void>) => Promise<void>;

// s3rver ships no types and is CommonJS; the surface used here is small.
const require = createRequire(import.meta.url);
const S3rver = require('s3rver') as new (options: Record<string, unknown>) => {middleware: Middleware[]; run(): Promise<{port: number}>; close(): Promise<void>};
/** s3rver's own error: thrown from a middleware, s3rver's context.onerror renders it as the S3 XML error with its status. */
const S3Error = require('s3rver/lib/models/error') as new (code: string, message: string, detail?: Record<string, unknown>) => Error;
const AWSAccount = require('s3rver/lib/models/account') as {DUMMY_ACCOUNT: {createKeyPair(id: string, secret: string): void; revokeAccessKey(id: string): void}};

/**
 * A real S3-protocol server (s3rver) on a free loopback port, over a temp directory, with one
 * bucket and one random key pair. What s3rver 3.7.1 lacks is added in front of its router, and
 * only that:
 *  - SigV4 verification: s3rver checks only that the access key id exists ("V4 calculation is
 *    unimplemented"), so a wrong secret would pass. Every request signed in the Authorization
 *    header is recomputed here with the secret of its key id (the payload hash as the client
 *    declared it in x-amz-content-sha256) and refused with SignatureDoesNotMatch (403) on a
 *    mismatch; an unknown key id (s3rver's S3RVER included) is refused with InvalidAccessKeyId;
 *    presigned (query-signed) requests, which dforge never makes, are refused rather than let
 *    through unverified;
 *  - AbortMultipartUpload and ListMultipartUploads, over s3rver's own upload store, so aborting
 *    and sweeping stale uploads run against the same state the server completes uploads from.
 *    They sit behind the verification and answer only signed requests.
 */
export async function startS3Server(bucket = 'dforge-backups'): Promise<S3TestServer> {
  const credentials = {accessKeyId: `AKIA${randomBytes(8).toString('hex').toUpperCase()}`, secretAccessKey: randomBytes(30).toString('base64'), region: 'us-east-1'};
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(credentials.accessKeyId, credentials.secretAccessKey);
  const secrets = new Map([[credentials.accessKeyId, credentials.secretAccessKey]]);

  const directory = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-s3-'));
  const server = new S3rver({address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{name: bucket}]});
  const uploads = path.join(directory, bucket, '._S3rver_uploads');

  const verifySigV4: Middleware = async (ctx, next) => {
    if ('X-Amz-Algorithm' in ctx.query || 'Signature' in ctx.query) {
      throw new S3Error('AccessDenied', 'Presigned requests are not verified by this test server.');
    }
    const auth = ctx.headers.authorization;
    if (typeof auth !== 'string' || !auth.startsWith('AWS4-HMAC-SHA256 ')) return next();
    const fields = Object.fromEntries(auth.slice('AWS4-HMAC-SHA256 '.length).split(/,\s*/).map((f) => [f.slice(0, f.indexOf('=')), f.slice(f.indexOf('=') + 1)]));
    const [accessKeyId = '', date = '', region = '', service = ''] = String(fields.Credential ?? '').split('/');
    const secret = secrets.get(accessKeyId);
    if (secret === undefined) throw new S3Error('InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.', {AWSAccessKeyId: accessKeyId});
    const signed = String(fields.SignedHeaders ?? '').split(';');
    const header = (h: string): string => String(ctx.headers[h] ?? '').trim().replace(/\s+/g, ' ');
    const query = ctx.querystring
      .split('&')
      .filter(Boolean)
      .map((p) => (p.includes('=') ? [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)] : [p, '']).map((x) => encodeRfc3986(decodeURIComponent(x.replace(/\+/g, ' ')))))
      .map(([k, v]) => `${k}=${v}`)
      .sort()
      .join('&');
    // The path exactly as sent: S3 signs the encoded path without encoding it again.
    const canonical = [ctx.method, ctx.originalUrl.split('?')[0]!, query, ...signed.map((h) => `${h}:${header(h)}`), '', signed.join(';'), header('x-amz-content-sha256')].join('\n');
    const scope = `${date}/${region}/${service}/aws4_request`;
    const toSign = ['AWS4-HMAC-SHA256', header('x-amz-date'), scope, createHash('sha256').update(canonical).digest('hex')].join('\n');
    let key: Buffer = createHmac('sha256', `AWS4${secret}`).update(date).digest();
    for (const part of [region, service, 'aws4_request']) key = createHmac('sha256', key).update(part).digest();
    const expected = createHmac('sha256', key).update(toSign).digest();
    const provided = Buffer.from(String(fields.Signature ?? ''), 'hex');
    if (provided.length !== expected.length || !timingSafeEqual(provided, expected)) {
      throw new S3Error('SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.', {AWSAccessKeyId: accessKeyId, StringToSign: toSign});
    }
    return next();
  };

  const multipart: Middleware = async (ctx, next) => {
    const [, b, ...key] = ctx.path.split('/');
    const hit = b === bucket && ((ctx.method === 'DELETE' && key.length > 0 && ctx.query.uploadId) || (ctx.method === 'GET' && key.filter(Boolean).length === 0 && 'uploads' in ctx.query));
    if (!hit) return next();
    // verifySigV4 ran before: a request that gets here signed with Authorization is verified.
    if (!String(ctx.headers.authorization ?? '').startsWith('AWS4-HMAC-SHA256 ')) throw new S3Error('AccessDenied', 'Access Denied');
    if (ctx.method === 'DELETE') {
      await fs.rm(path.join(uploads, path.basename(ctx.query.uploadId!)), {recursive: true, force: true});
      ctx.status = 204;
      return;
    }
    const prefix = ctx.query.prefix ?? '';
    const rows: string[] = [];
    for (const id of (await fs.readdir(uploads).catch(() => [])).sort()) {
      const k = await fs.readFile(path.join(uploads, id, 'key'), 'utf8').catch(() => undefined);
      if (k === undefined || !k.startsWith(prefix)) continue;
      const initiated = (await fs.stat(path.join(uploads, id))).mtime.toISOString();
      rows.push(`<Upload><Key>${escapeXml(k)}</Key><UploadId>${escapeXml(id)}</UploadId><Initiated>${initiated}</Initiated></Upload>`);
    }
    ctx.status = 200;
    ctx.type = 'application/xml';
    ctx.body = `<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><Bucket>${bucket}</Bucket><IsTruncated>false</IsTruncated>${rows.join('')}</ListMultipartUploadsResult>`;
  };

  // Just before s3rver's router (its last middleware), so both see every request the router would.
  server.middleware.splice(server.middleware.length - 1, 0, verifySigV4, multipart);
  const address = await server.run();
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    bucket,
    credentials,
    directory,
    async openUploads() {
      return fs.readdir(uploads).catch(() => []);
    },
    async stop() {
      await server.close();
      AWSAccount.DUMMY_ACCOUNT.revokeAccessKey(credentials.accessKeyId);
      await fs.rm(directory, {recursive: true, force: true});
    },
  };
}

function encodeRfc3986(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
