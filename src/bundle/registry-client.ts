/**
 * A client for the OCI distribution API (Docker Registry HTTP API v2), for `bundle push` to a
 * private registry.
 *
 * Over node:https, not a registry library: the push needs a handful of calls, and owning the
 * transport is what lets us stream blobs (never buffer one), bound every wait (a stalled body
 * aborts the attempt, it does not hang), retry with a fresh body, and keep the password out of
 * every error. Only TLS: a registry credential never crosses the network in clear.
 */

import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import type {IncomingHttpHeaders, IncomingMessage} from 'node:http';
import https from 'node:https';
import type {Readable} from 'node:stream';
import {setTimeout as sleep} from 'node:timers/promises';

import {BugError, DforgeError, UserError, VerificationError} from '../errors.js';
import {digestSchema, MEDIA_TYPES} from './manifest.js';

export interface RegistryCredentials {
  readonly username: string;
  readonly password: string;
}

export const REGISTRY_ENV = {username: 'DFORGE_REGISTRY_USERNAME', password: 'DFORGE_REGISTRY_PASSWORD'} as const;

/**
 * The registry login, never from argv (it would show in ps and shell history): from `file`, one
 * line `USERNAME:PASSWORD` (the first colon splits; the password may hold more), private to its
 * owner; else from DFORGE_REGISTRY_USERNAME and DFORGE_REGISTRY_PASSWORD; else none (anonymous).
 */
export async function readRegistryCredentials(options: {file?: string; env?: NodeJS.ProcessEnv}): Promise<RegistryCredentials | undefined> {
  const env = options.env ?? process.env;
  if (options.file !== undefined) {
    const file = options.file;
    const st = await fs.stat(file).catch((err: NodeJS.ErrnoException) => {
      throw new UserError(`cannot read the registry credentials file ${file} (${err.code ?? err.message})`, {nextSteps: ['Check the path given for the registry credentials file.']});
    });
    if ((st.mode & 0o077) !== 0) {
      throw new UserError(`registry credentials file ${file} is readable by group or others`, {nextSteps: [`Run: chmod 600 ${file}`]});
    }
    const line = (await fs.readFile(file, 'utf8')).split(/\r?\n/)[0] ?? '';
    const colon = line.indexOf(':');
    if (colon <= 0 || colon === line.length - 1) {
      throw new UserError(`registry credentials file ${file} does not hold USERNAME:PASSWORD on its first line`, {nextSteps: [`Write one line USERNAME:PASSWORD into ${file} (mode 0600).`]});
    }
    return {username: line.slice(0, colon), password: line.slice(colon + 1)};
  }
  const username = env[REGISTRY_ENV.username];
  const password = env[REGISTRY_ENV.password];
  if (username && password) return {username, password};
  if (username || password) {
    throw new UserError(`only one of ${REGISTRY_ENV.username} and ${REGISTRY_ENV.password} is set`, {nextSteps: ['Set both, or neither for an anonymous registry.']});
  }
  return undefined;
}

export interface RegistryTimeouts {
  /** TCP connect plus TLS handshake. */
  readonly connectMs: number;
  /** From the end of the request body to the response headers, and between response chunks. */
  readonly responseMs: number;
  /** An upload attempt with no body bytes accepted for this long is aborted (and retried). */
  readonly stallMs: number;
}

export const DEFAULT_TIMEOUTS: RegistryTimeouts = {connectMs: 15_000, responseMs: 60_000, stallMs: 60_000};

export interface RetryPolicy {
  /** Attempts per blob upload, the first included. */
  readonly attempts: number;
  /** Delay before the second attempt; doubled for each later one. */
  readonly baseDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {attempts: 5, baseDelayMs: 1000};

/**
 * Progress of one blob. `bytes` is this blob's count of bytes the registry accepted and only ever
 * grows: a retried attempt re-sends from the start, but reports nothing until it passes what was
 * already reported, and says it is a retry through `retry` instead.
 */
export interface BlobProgress {
  readonly blob: string;
  readonly bytes: number;
  readonly total: number;
  /** The registry already had the blob (or mounted it): nothing was sent. */
  readonly skipped: boolean;
  readonly retry?: {readonly attempt: number; readonly reason: string};
}

export interface RegistryOptions {
  /** HOST[:PORT], as given to --registry. */
  readonly host: string;
  /** PEM of the CA to trust instead of the system CAs (--ca FILE). */
  readonly ca?: Buffer;
  readonly credentials?: RegistryCredentials;
  readonly timeouts?: Partial<RegistryTimeouts>;
  readonly retry?: Partial<RetryPolicy>;
  readonly onProgress?: (progress: BlobProgress) => void;
}

export type BlobOutcome = 'present' | 'mounted' | 'uploaded';

export interface RegistryClient {
  readonly host: string;
  /** GET /v2/: reachable, speaks TLS with a trusted certificate, and accepts the credentials. */
  ping(): Promise<void>;
  hasBlob(repo: string, digest: string): Promise<boolean>;
  /** Cross-repository mount; false when the registry opened an upload instead (it is cancelled). */
  mountBlob(repo: string, digest: string, fromRepo: string): Promise<boolean>;
  /** Monolithic upload; `open` is called again for every attempt, so it must give the blob from its start. */
  uploadBlob(repo: string, digest: string, size: number, open: () => Readable): Promise<void>;
  /** HEAD, then a mount from each of `mountFrom`, then an upload: whichever first makes the blob present. */
  ensureBlob(repo: string, digest: string, size: number, open: () => Readable, mountFrom?: readonly string[]): Promise<BlobOutcome>;
  /** PUT the manifest under a tag; returns its digest, checked against the bytes sent. */
  putManifest(repo: string, reference: string, bytes: Buffer, mediaType: string): Promise<string>;
  /** The digest of the manifest the registry serves for `reference`, computed from the bytes it returned. */
  manifestDigest(repo: string, reference: string): Promise<string>;
  close(): void;
}

// The grammar of the distribution spec: a repository name cannot carry a path, query or `..`.
const REPO = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const MANIFEST_MAX_BYTES = 4 * 1024 * 1024;
const ERROR_BODY_MAX_BYTES = 64 * 1024;
const MANIFEST_ACCEPT = [MEDIA_TYPES.manifest, MEDIA_TYPES.index, 'application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.docker.distribution.manifest.list.v2+json'].join(', ');

const sha256Of = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

/** Parses HOST[:PORT] into the registry's https origin; anything else (a scheme, a path, user info) is a usage mistake. */
function registryOrigin(host: string): URL {
  let url: URL | undefined;
  try {
    url = new URL(`https://${host}`);
  } catch {
    url = undefined;
  }
  if (!url || url.pathname !== '/' || url.search || url.hash || url.username || url.password || `${url.host}` !== host.toLowerCase().replace(/:443$/, '')) {
    throw new UserError(`--registry ${JSON.stringify(host)} is not HOST[:PORT]`, {
      nextSteps: ['Give the registry as HOST or HOST:PORT, e.g. --registry registry.internal:5000 (no https://, no path; credentials go in the credentials file, never in the host).'],
    });
  }
  return url;
}

function checkRepo(repo: string): void {
  if (!REPO.test(repo) || repo.length > 255) {
    throw new UserError(`${JSON.stringify(repo)} is not a valid registry repository name`, {
      nextSteps: ['Use lowercase letters, digits and . _ - separated by /, as the OCI distribution spec requires.'],
    });
  }
}

function checkDigest(digest: string): void {
  if (!digestSchema.safeParse(digest).success) throw new BugError(`registry client given ${JSON.stringify(digest)} as a digest`);
}

function checkReference(reference: string): void {
  if (!TAG.test(reference) && !digestSchema.safeParse(reference).success) {
    throw new UserError(`${JSON.stringify(reference)} is not a valid tag or digest`, {nextSteps: ['Tags are up to 128 of A-Z a-z 0-9 _ . - and do not start with . or -.']});
  }
}

interface Response {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** A failure worth another attempt: the connection broke, the registry restarted or was busy. */
class TransientError extends Error {}

const TLS_TRUST_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'CERT_UNTRUSTED',
]);

export function openRegistry(options: RegistryOptions): RegistryClient {
  const origin = registryOrigin(options.host);
  const host = origin.host;
  const timeouts: RegistryTimeouts = {...DEFAULT_TIMEOUTS, ...options.timeouts};
  const retry: RetryPolicy = {...DEFAULT_RETRY, ...options.retry};
  // `ca` replaces the system store rather than adding to it: with --ca, only that CA is trusted.
  const agent = new https.Agent({keepAlive: true, minVersion: 'TLSv1.2', ...(options.ca ? {ca: options.ca} : {})});
  const authorization = options.credentials
    ? `Basic ${Buffer.from(`${options.credentials.username}:${options.credentials.password}`, 'utf8').toString('base64')}`
    : undefined;

  /** Resolves a Location header, relative or absolute; the registry may not send us (and our password) elsewhere. */
  const resolve = (location: string | undefined, what: string): URL => {
    if (!location) throw new UserError(`registry ${host} answered ${what} without a Location header`, {nextSteps: ['Check that --registry names an OCI distribution registry.']});
    const url = new URL(location, origin);
    if (url.origin !== origin.origin) {
      throw new UserError(`registry ${host} sent the upload to ${url.origin}, another origin; dforge does not send registry credentials there`, {
        nextSteps: ['Configure the registry (or the proxy in front of it) to advertise its own https URL (e.g. distribution http.host / X-Forwarded-Proto).'],
      });
    }
    return url;
  };

  /** Turns a transport error into what the operator can act on; transient ones are retried by the caller. */
  const describeTransport = (err: unknown): Error => {
    if (err instanceof DforgeError || err instanceof TransientError) return err;
    const sys = err as NodeJS.ErrnoException;
    const code = sys?.code ?? '';
    if (TLS_TRUST_CODES.has(code)) {
      return new UserError(`the TLS certificate of registry ${host} is not signed by a trusted CA (${code})`, {
        nextSteps: [
          options.ca ? 'The --ca FILE given did not issue the registry certificate: pass the CA that did.' : 'Pass the CA that issued the registry certificate: --ca FILE (PEM).',
        ],
      });
    }
    if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
      return new UserError(`the TLS certificate of registry ${host} does not name ${origin.hostname}`, {
        nextSteps: ['Use the host name the certificate was issued for in --registry, or reissue the certificate with this name in its subjectAltName.'],
      });
    }
    if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
      return new UserError(`the TLS certificate of registry ${host} is not valid now (${code})`, {nextSteps: ['Renew the registry certificate, or check this machine\'s clock.']});
    }
    if (code === 'EPROTO' || code.startsWith('ERR_SSL_') || /wrong version number|packet length too long/i.test(sys?.message ?? '')) {
      return new UserError(`registry ${host} did not answer with TLS (${code || sys?.message})`, {
        nextSteps: ['Check the port: it must be the registry\'s HTTPS port. dforge never pushes over plain HTTP.'],
      });
    }
    if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') {
      return new UserError(`cannot resolve registry host ${origin.hostname}`, {nextSteps: ['Check the --registry name and this machine\'s DNS or /etc/hosts.']});
    }
    if (['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED', 'ERR_STREAM_PREMATURE_CLOSE'].includes(code)) {
      return new TransientError(`${code} talking to registry ${host}`);
    }
    return new TransientError(`talking to registry ${host}: ${sys?.message ?? String(err)}`);
  };

  /** Makes a transient failure final once retries are used up (or for calls that are not retried). */
  const final = (err: unknown): Error => {
    const described = describeTransport(err);
    if (!(described instanceof TransientError)) return described;
    return new UserError(`${described.message}`, {
      nextSteps: [`Check that the registry is running and reachable: curl --cacert CA https://${host}/v2/ ; then re-run (a push resumes where it stopped).`],
    });
  };

  interface SendOptions {
    readonly headers?: Record<string, string>;
    readonly body?: Buffer;
    /** A streamed body of exactly `length` bytes; `onBytes` is told each chunk the socket accepted. */
    readonly stream?: {readonly source: Readable; readonly length: number; readonly onBytes: (n: number) => void};
    readonly maxBody?: number;
  }

  const send = (method: string, url: URL, opts: SendOptions = {}): Promise<Response> =>
    new Promise<Response>((resolvePromise, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const headers: Record<string, string> = {...opts.headers};
      if (authorization) headers.Authorization = authorization;
      if (opts.body) headers['Content-Length'] = String(opts.body.length);
      if (opts.stream) headers['Content-Length'] = String(opts.stream.length);
      const req = https.request(url, {method, agent, headers});
      const fail = (err: unknown): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        opts.stream?.source.destroy();
        req.destroy();
        reject(err);
      };
      /** One deadline at a time: connect, then body progress, then the response. */
      const arm = (ms: number, why: () => Error): void => {
        clearTimeout(timer);
        timer = setTimeout(() => fail(why()), ms);
      };
      arm(timeouts.connectMs, () => new TransientError(`no connection to registry ${host} within ${timeouts.connectMs / 1000}s`));
      req.on('error', fail);
      req.on('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        const limit = opts.maxBody ?? ERROR_BODY_MAX_BYTES;
        arm(timeouts.responseMs, () => new TransientError(`registry ${host} stopped sending its answer to ${method} ${url.pathname}`));
        res.on('data', (chunk: Buffer) => {
          arm(timeouts.responseMs, () => new TransientError(`registry ${host} stopped sending its answer to ${method} ${url.pathname}`));
          size += chunk.length;
          if (size > limit) {
            fail(new UserError(`registry ${host} answered ${method} ${url.pathname} with more than ${limit} bytes`, {nextSteps: ['Check that --registry names an OCI distribution registry.']}));
            return;
          }
          chunks.push(chunk);
        });
        res.on('error', fail);
        res.on('end', () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          // If the registry answered before taking the whole body (an error), stop sending it.
          opts.stream?.source.destroy();
          resolvePromise({status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks)});
        });
      });
      const responseWait = (): void =>
        arm(timeouts.responseMs, () => new TransientError(`registry ${host} did not answer ${method} ${url.pathname} within ${timeouts.responseMs / 1000}s`));
      if (!opts.stream) {
        req.once('socket', (socket) => {
          if (socket.connecting) socket.once('secureConnect', responseWait);
          else responseWait();
        });
        req.end(opts.body);
        return;
      }
      const {source, length, onBytes} = opts.stream;
      const stalled = (): Error => new TransientError(`upload to registry ${host} stalled: no bytes accepted for ${timeouts.stallMs / 1000}s`);
      let sent = 0;
      req.once('socket', (socket) => {
        const start = (): void => {
          arm(timeouts.stallMs, stalled);
          source.on('data', (chunk: Buffer) => {
            if (settled) return;
            sent += chunk.length;
            if (sent > length) {
              fail(new BugError(`blob source gave more than the ${length} bytes it declared`));
              return;
            }
            const ok = req.write(chunk, (err) => {
              if (err || settled) return;
              arm(timeouts.stallMs, stalled);
              onBytes(chunk.length);
            });
            if (!ok) {
              source.pause();
              req.once('drain', () => source.resume());
            }
          });
          source.on('error', fail);
          source.on('end', () => {
            if (settled) return;
            if (sent !== length) {
              fail(new UserError(`blob source ended after ${sent} of its ${length} bytes`, {nextSteps: ['Run: dforge bundle verify on the bundle; its media may be damaged.']}));
              return;
            }
            req.end(() => responseWait());
          });
        };
        if (socket.connecting) socket.once('secureConnect', start);
        else start();
      });
    });

  /** A request that is not retried (ping diagnoses at once; a mount POST opens a session): every failure is final. */
  const call = async (method: string, url: URL, opts?: SendOptions): Promise<Response> => {
    try {
      return await send(method, url, opts);
    } catch (err) {
      throw final(err);
    }
  };

  const backoff = (attempt: number): Promise<void> => sleep(retry.baseDelayMs * 2 ** (attempt - 1));

  /**
   * An idempotent request (HEAD, GET, PUT of a manifest), retried when the connection breaks: a
   * registry restart also kills the keep-alive sockets the next call would have reused.
   */
  const callRetrying = async (method: string, url: URL, opts?: SendOptions): Promise<Response> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await send(method, url, opts);
      } catch (err) {
        const described = describeTransport(err);
        if (!(described instanceof TransientError) || attempt >= retry.attempts) throw final(described);
        await backoff(attempt);
      }
    }
  };

  const registryErrors = (res: Response): string => {
    try {
      const parsed = JSON.parse(res.body.toString('utf8')) as {errors?: {code?: string; message?: string}[]};
      const list = (parsed.errors ?? []).map((e) => [e.code, e.message].filter(Boolean).join(': ')).filter(Boolean);
      if (list.length > 0) return list.join('; ').slice(0, 500);
    } catch {
      // Not the registry's JSON error body: fall through to the status alone.
    }
    return `HTTP ${res.status}`;
  };

  /** The error for an answer we did not expect; 401/403 name credentials, 5xx/429 are transient. */
  const unexpected = (res: Response, what: string): Error => {
    if (res.status === 401) {
      const challenge = String(res.headers['www-authenticate'] ?? '');
      if (/^bearer/i.test(challenge)) {
        return new UserError(`registry ${host} requires token (Bearer) authentication, which dforge does not support`, {
          nextSteps: ['Configure the registry for HTTP basic authentication (htpasswd) over TLS for this push, or push with skopeo from the loaded engine.'],
        });
      }
      return new UserError(`registry ${host} refused the credentials (HTTP 401) for ${what}`, {
        nextSteps: [
          authorization
            ? 'Check the username and password in the registry credentials file (or environment); they are never taken from the command line.'
            : 'The registry requires a login: give a username and password in the registry credentials file (or environment).',
        ],
      });
    }
    if (res.status === 403) {
      return new UserError(`registry ${host} denied ${what} (HTTP 403): ${registryErrors(res)}`, {nextSteps: ['Grant this registry user push rights on the repository.']});
    }
    if (res.status >= 500 || res.status === 429 || res.status === 408) {
      return new TransientError(`registry ${host} answered ${what} with ${registryErrors(res)}`);
    }
    return new UserError(`registry ${host} answered ${what} with ${registryErrors(res)}`, {nextSteps: ['Check that --registry names an OCI distribution registry (API v2) and that the repository name is allowed.']});
  };

  const url = (path: string): URL => new URL(path, origin);

  /** Best effort: an abandoned upload session only costs the registry some temp space until its purge. */
  const cancelUpload = async (location: URL): Promise<void> => {
    await send('DELETE', location).catch(() => undefined);
  };

  const ping = async (): Promise<void> => {
    const res = await call('GET', url('/v2/'));
    if (res.status === 200) return;
    if (res.status === 404) {
      throw new UserError(`${host} is not an OCI distribution registry (GET /v2/ answered 404)`, {nextSteps: ['Check the host and port given to --registry.']});
    }
    throw final(unexpected(res, 'GET /v2/'));
  };

  const hasBlob = async (repo: string, digest: string): Promise<boolean> => {
    checkRepo(repo);
    checkDigest(digest);
    const res = await callRetrying('HEAD', url(`/v2/${repo}/blobs/${digest}`));
    if (res.status === 200) return true;
    if (res.status === 404) return false;
    throw final(unexpected(res, `HEAD blob ${digest} in ${repo}`));
  };

  const mountBlob = async (repo: string, digest: string, fromRepo: string): Promise<boolean> => {
    checkRepo(repo);
    checkRepo(fromRepo);
    checkDigest(digest);
    const target = url(`/v2/${repo}/blobs/uploads/`);
    target.searchParams.set('mount', digest);
    target.searchParams.set('from', fromRepo);
    const res = await call('POST', target, {headers: {'Content-Length': '0'}});
    if (res.status === 201) {
      const got = res.headers['docker-content-digest'];
      if (got !== undefined && got !== digest) {
        throw new VerificationError(`registry ${host} mounted ${String(got)} into ${repo} when asked for ${digest}`, {
          nextSteps: ['The registry is misbehaving: do not use what it serves; check its storage.'],
          data: {blob: digest, repo},
        });
      }
      return true;
    }
    if (res.status === 202) {
      // Not mountable (absent there, or no read access to fromRepo): the registry opened an ordinary upload instead.
      await cancelUpload(resolve(res.headers.location, 'a mount'));
      return false;
    }
    throw final(unexpected(res, `mount of ${digest} into ${repo}`));
  };

  /** One upload attempt: open a session, PUT the whole body, check the digest the registry computed. */
  const uploadOnce = async (repo: string, digest: string, size: number, source: Readable, onBytes: (n: number) => void): Promise<void> => {
    const start = await send('POST', url(`/v2/${repo}/blobs/uploads/`), {headers: {'Content-Length': '0'}});
    if (start.status !== 202) throw unexpected(start, `starting an upload to ${repo}`);
    const location = resolve(start.headers.location, 'an upload start');
    const put = new URL(location);
    put.searchParams.set('digest', digest);
    let res: Response;
    try {
      res = await send('PUT', put, {headers: {'Content-Type': 'application/octet-stream'}, stream: {source, length: size, onBytes}});
    } catch (err) {
      await cancelUpload(location);
      throw err;
    }
    if (res.status === 400 && /DIGEST_INVALID|SIZE_INVALID/.test(res.body.toString('utf8'))) {
      throw new VerificationError(`registry ${host} computed another digest for blob ${digest} than its name (${registryErrors(res)})`, {
        nextSteps: ['The bytes read for this blob do not match its digest: run dforge bundle verify on the bundle; its media may be damaged or tampered with.'],
        data: {blob: digest, repo},
      });
    }
    if (res.status !== 201) throw unexpected(res, `upload of ${digest} to ${repo}`);
    const got = res.headers['docker-content-digest'];
    if (got !== digest) {
      throw new VerificationError(`registry ${host} stored blob ${digest} under digest ${String(got)}`, {
        nextSteps: ['The registry is misbehaving or something between us altered the upload: do not use the pushed images; check the registry and the network path.'],
        data: {blob: digest, repo},
      });
    }
  };

  const uploadBlob = async (repo: string, digest: string, size: number, open: () => Readable): Promise<void> => {
    checkRepo(repo);
    checkDigest(digest);
    let reported = 0;
    for (let attempt = 1; ; attempt++) {
      let sent = 0;
      try {
        await uploadOnce(repo, digest, size, open(), (n) => {
          sent += n;
          // Only bytes past the high-water mark are news: progress never goes back on a retry.
          if (sent > reported) {
            reported = sent;
            options.onProgress?.({blob: digest, bytes: reported, total: size, skipped: false});
          }
        });
        return;
      } catch (err) {
        const described = describeTransport(err);
        if (!(described instanceof TransientError) || attempt >= retry.attempts) throw final(described);
        options.onProgress?.({blob: digest, bytes: reported, total: size, skipped: false, retry: {attempt: attempt + 1, reason: described.message}});
        await backoff(attempt);
      }
    }
  };

  const ensureBlob = async (repo: string, digest: string, size: number, open: () => Readable, mountFrom: readonly string[] = []): Promise<BlobOutcome> => {
    const skipped = (): void => options.onProgress?.({blob: digest, bytes: size, total: size, skipped: true});
    if (await hasBlob(repo, digest)) {
      skipped();
      return 'present';
    }
    for (const from of mountFrom) {
      if (from !== repo && (await mountBlob(repo, digest, from))) {
        skipped();
        return 'mounted';
      }
    }
    await uploadBlob(repo, digest, size, open);
    return 'uploaded';
  };

  const putManifest = async (repo: string, reference: string, bytes: Buffer, mediaType: string): Promise<string> => {
    checkRepo(repo);
    checkReference(reference);
    const expected = sha256Of(bytes);
    const res = await callRetrying('PUT', url(`/v2/${repo}/manifests/${reference}`), {headers: {'Content-Type': mediaType}, body: bytes});
    if (res.status !== 201) throw final(unexpected(res, `PUT manifest ${repo}:${reference}`));
    const got = res.headers['docker-content-digest'];
    if (got !== expected) {
      throw new VerificationError(`registry ${host} stored manifest ${repo}:${reference} as ${String(got)}, but its bytes hash to ${expected}`, {
        nextSteps: ['The registry rewrote or mis-stored the manifest: do not deploy from it; check the registry.'],
        data: {repo, reference},
      });
    }
    return expected;
  };

  const manifestDigest = async (repo: string, reference: string): Promise<string> => {
    checkRepo(repo);
    checkReference(reference);
    const res = await callRetrying('GET', url(`/v2/${repo}/manifests/${reference}`), {headers: {Accept: MANIFEST_ACCEPT}, maxBody: MANIFEST_MAX_BYTES});
    if (res.status === 404) {
      throw new UserError(`registry ${host} has no manifest ${repo}:${reference}`, {nextSteps: ['Push the bundle again: dforge bundle push FILE --registry HOST.']});
    }
    if (res.status !== 200) throw final(unexpected(res, `GET manifest ${repo}:${reference}`));
    const computed = sha256Of(res.body);
    const claimed = res.headers['docker-content-digest'];
    if (claimed !== undefined && claimed !== computed) {
      throw new VerificationError(`registry ${host} served manifest ${repo}:${reference} whose bytes hash to ${computed}, not the ${String(claimed)} it claims`, {
        nextSteps: ['The registry storage or something between us is corrupt: do not deploy from it.'],
        data: {repo, reference},
      });
    }
    if (digestSchema.safeParse(reference).success && reference !== computed) {
      throw new VerificationError(`registry ${host} served ${computed} when asked for manifest ${reference}`, {nextSteps: ['Do not deploy from this registry until its storage is checked.'], data: {repo, reference}});
    }
    return computed;
  };

  return {host, ping, hasBlob, mountBlob, uploadBlob, ensureBlob, putManifest, manifestDigest, close: () => agent.destroy()};
}
