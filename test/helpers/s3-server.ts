import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// s3rver ships no types; the surface used here is small.
// @ts-expect-error -- untyped CommonJS module
import S3rver from 's3rver';

/** s3rver's built-in account: it verifies SigV4 signatures made with this key pair. */
const ACCESS_KEY_ID = 'S3RVER';
const SECRET_ACCESS_KEY = 'S3RVER';

export interface S3TestServer {
  readonly endpoint: string;
  readonly bucket: string;
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
  query: Record<string, string | undefined>;
  headers: Record<string, string | undefined>;
  status: number;
  type: string;
  body: unknown;
}

/**
 * A real S3-protocol server (s3rver) on a free loopback port, over a temp directory, with one
 * bucket. s3rver 3.7.1 has multipart upload but neither AbortMultipartUpload nor
 * ListMultipartUploads; both are added here over s3rver's own upload store, so aborting and
 * sweeping stale uploads run against the same state the server completes uploads from.
 */
export async function startS3Server(bucket = 'dforge-backups'): Promise<S3TestServer> {
  const directory = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-s3-'));
  const server = new S3rver({address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{name: bucket}]});
  const uploads = path.join(directory, bucket, '._S3rver_uploads');
  (server as {middleware: Array<(ctx: KoaContext, next: () => Promise<void>) => Promise<void>>}).middleware.unshift(async (ctx, next) => {
    const [, b, ...key] = ctx.path.split('/');
    const multipart = b === bucket && ((ctx.method === 'DELETE' && key.length > 0 && ctx.query.uploadId) || (ctx.method === 'GET' && key.filter(Boolean).length === 0 && 'uploads' in ctx.query));
    if (!multipart) return next();
    // The same key check s3rver makes (it verifies the access key id, not the SigV4 signature).
    if (!/Credential=S3RVER\//.test(ctx.headers.authorization ?? '')) {
      ctx.status = 403;
      ctx.type = 'application/xml';
      ctx.body = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code><Message>unknown key</Message></Error>';
      return;
    }
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
  });
  const address = (await server.run()) as {port: number};
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    bucket,
    credentials: {accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET_ACCESS_KEY, region: 'us-east-1'},
    directory,
    async openUploads() {
      return fs.readdir(uploads).catch(() => []);
    },
    async stop() {
      await server.close();
      await fs.rm(directory, {recursive: true, force: true});
    },
  };
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
