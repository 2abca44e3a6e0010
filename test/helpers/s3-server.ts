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

/** A real S3-protocol server (s3rver) on a free loopback port, over a temp directory, with one bucket. */
export async function startS3Server(bucket = 'dforge-backups'): Promise<S3TestServer> {
  const directory = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-s3-'));
  const server = new S3rver({address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{name: bucket}]});
  const address = (await server.run()) as {port: number};
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    bucket,
    credentials: {accessKeyId: ACCESS_KEY_ID, secretAccessKey: SECRET_ACCESS_KEY, region: 'us-east-1'},
    directory,
    async openUploads() {
      const uploads = path.join(directory, bucket, '._S3rver_uploads');
      return fs.readdir(uploads).catch(() => []);
    },
    async stop() {
      await server.close();
      await fs.rm(directory, {recursive: true, force: true});
    },
  };
}
