import {createHash, randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type {AddressInfo} from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {Readable} from 'node:stream';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {MEDIA_TYPES} from '../../src/bundle/manifest.js';
import {openPushJournal, pushBlobJournaled} from '../../src/bundle/push-journal.js';
import {openRegistry, readRegistryCredentials, REGISTRY_ENV, type BlobProgress, type RegistryOptions} from '../../src/bundle/registry-client.js';
import {DforgeError, UserError, VerificationError} from '../../src/errors.js';
import {startTestRegistry, type TestRegistry} from '../helpers/registry.js';
import {createTestCa} from '../helpers/test-ca.js';

const sha256 = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const once = (bytes: Buffer) => (): Readable => Readable.from([bytes]);

/** The error a promise rejects with (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<DforgeError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DforgeError);
  return err as DforgeError;
}

let registry: TestRegistry;
let tmp: string;

beforeAll(async () => {
  registry = await startTestRegistry();
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-push-'));
});

afterAll(async () => {
  await registry?.stop();
  if (tmp) await fs.rm(tmp, {recursive: true, force: true});
});

function client(extra: Partial<RegistryOptions> = {}) {
  return openRegistry({
    host: registry.host,
    ca: Buffer.from(registry.caPem),
    credentials: {username: registry.username, password: registry.password},
    retry: {attempts: 6, baseDelayMs: 300},
    ...extra,
  });
}

/** An independent reader (plain node:https, not the client under test) for what the registry serves. */
function rawGet(urlPath: string, accept?: string): Promise<{status: number; body: Buffer; digest?: string}> {
  return new Promise((resolve, reject) => {
    const auth = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
    const req = https.get(
      `https://${registry.host}${urlPath}`,
      {ca: registry.caPem, headers: {Authorization: `Basic ${auth}`, ...(accept ? {Accept: accept} : {})}},
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({status: res.statusCode ?? 0, body: Buffer.concat(chunks), digest: res.headers['docker-content-digest'] as string | undefined}));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
  });
}

/** A small OCI image made here: a config JSON, one layer, and the manifest naming both. */
function makeImage(label: string) {
  const config = Buffer.from(JSON.stringify({architecture: 'amd64', os: 'linux', config: {Labels: {label}}, rootfs: {type: 'layers', diff_ids: []}}));
  const layer = randomBytes(64 * 1024);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.manifest,
      config: {mediaType: MEDIA_TYPES.config, digest: sha256(config), size: config.length},
      layers: [{mediaType: MEDIA_TYPES.layer, digest: sha256(layer), size: layer.length}],
    }),
  );
  return {config, layer, manifest};
}

describe('registry client against a real docker-registry (TLS, htpasswd)', () => {
  it('refuses a wrong password with a clear error that does not contain the password', async () => {
    const secret = `wrong-${randomBytes(8).toString('hex')}`;
    const c = client({credentials: {username: registry.username, password: secret}});
    const err = await rejection(c.ping());
    c.close();
    expect(err).toBeInstanceOf(UserError);
    expect(err.exitCode).toBe(1);
    expect(err.message).toMatch(/refused the credentials \(HTTP 401\)/);
    const everything = JSON.stringify({...err.toJSON(), stack: err.stack});
    expect(everything).not.toContain(secret);
    expect(everything).not.toContain(Buffer.from(`${registry.username}:${secret}`).toString('base64'));
  });

  it('reads credentials from a private file or the environment, and refuses a file others can read', async () => {
    const file = path.join(tmp, 'registry-auth');
    await fs.writeFile(file, `${registry.username}:${registry.password}\n`, {mode: 0o644});
    await fs.chmod(file, 0o644);
    const open = await rejection(readRegistryCredentials({file}));
    expect(open.nextSteps).toEqual([`Run: chmod 600 ${file}`]);
    expect(JSON.stringify(open.toJSON())).not.toContain(registry.password);
    await fs.chmod(file, 0o600);
    const fromFile = await readRegistryCredentials({file});
    expect(fromFile).toEqual({username: registry.username, password: registry.password});
    const c = client({credentials: fromFile});
    await c.ping();
    c.close();
    expect(await readRegistryCredentials({env: {[REGISTRY_ENV.username]: 'a', [REGISTRY_ENV.password]: 'b:c'}})).toEqual({username: 'a', password: 'b:c'});
    expect(await readRegistryCredentials({env: {}})).toBeUndefined();
    await rejection(readRegistryCredentials({env: {[REGISTRY_ENV.username]: 'a'}}));
  });

  it('refuses a registry whose certificate is not from a trusted CA, and says --ca FILE', async () => {
    const c = client({ca: undefined});
    const err = await rejection(c.ping());
    c.close();
    expect(err).toBeInstanceOf(UserError);
    expect(err.message).toMatch(/not signed by a trusted CA/);
    expect(err.nextSteps.join(' ')).toContain('--ca FILE');
  });

  it('refuses to talk to a port that does not speak TLS, naming the protocol problem', async () => {
    const plain = http.createServer((_req, res) => res.end('hello'));
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    try {
      const c = openRegistry({host: `127.0.0.1:${(plain.address() as AddressInfo).port}`, credentials: {username: 'u', password: 'p'}});
      const err = await rejection(c.ping());
      c.close();
      expect(err.message).toMatch(/did not answer with TLS/);
    } finally {
      plain.close();
    }
  });

  it('says connection refused plainly (after no retries for a ping)', async () => {
    const c = openRegistry({host: '127.0.0.1:1', ca: Buffer.from(registry.caPem)});
    const err = await rejection(c.ping());
    c.close();
    expect(err.message).toMatch(/ECONNREFUSED/);
    expect(err.nextSteps.join(' ')).toMatch(/reachable/);
  });

  it('refuses a blob whose bytes do not match its digest: exit 6, and the registry does not have it', async () => {
    const c = client();
    const claimed = sha256(Buffer.from('what the bundle said'));
    const err = await rejection(c.uploadBlob('dforge/hostile', claimed, 20, once(Buffer.from('something else, 30 bytes long'.slice(0, 20)))));
    expect(err).toBeInstanceOf(VerificationError);
    expect(err.exitCode).toBe(6);
    expect(err.message).toContain(claimed);
    expect(await c.hasBlob('dforge/hostile', claimed)).toBe(false);
    c.close();
  });

  it('rejects repository names that would escape the API path', async () => {
    const c = client();
    const err = await rejection(c.hasBlob('../v2/_catalog', sha256(Buffer.from('x'))));
    c.close();
    expect(err).toBeInstanceOf(UserError);
  });

  it('says token auth is unsupported, and never follows an upload Location to another origin with the password', async () => {
    // A hostile or misconfigured "registry": TLS with a trusted certificate, but it asks for a
    // Bearer token on /v2/ and sends uploads to a host it controls.
    const ca = await createTestCa(path.join(tmp, 'hostile-ca'), {serverNames: ['localhost'], serverIps: ['127.0.0.1']});
    const seenElsewhere: string[] = [];
    const elsewhere = http.createServer((req, res) => {
      seenElsewhere.push(String(req.headers.authorization));
      res.end();
    });
    await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
    const server = https.createServer({cert: await fs.readFile(ca.serverCertFile), key: await fs.readFile(ca.serverKeyFile)}, (req, res) => {
      if (req.url === '/v2/') {
        res.writeHead(401, {'WWW-Authenticate': 'Bearer realm="https://auth.example/token",service="registry"'});
        res.end();
        return;
      }
      res.writeHead(202, {Location: `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/upload?x=1`});
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const c = openRegistry({
        host: `localhost:${(server.address() as AddressInfo).port}`,
        ca: Buffer.from(ca.caCertPem),
        credentials: {username: 'u', password: 'secret-password'},
        retry: {attempts: 1, baseDelayMs: 1},
      });
      const bearer = await rejection(c.ping());
      expect(bearer.message).toMatch(/token \(Bearer\) authentication, which dforge does not support/);
      const redirected = await rejection(c.uploadBlob('dforge/x', sha256(Buffer.from('x')), 1, once(Buffer.from('x'))));
      expect(redirected.message).toMatch(/another origin; dforge does not send registry credentials there/);
      expect(JSON.stringify(redirected.toJSON())).not.toContain('secret-password');
      expect(seenElsewhere).toEqual([]);
      c.close();
    } finally {
      server.close();
      elsewhere.close();
    }
  });

  it('pushes an OCI image, skips everything on a second push, and serves back the same bytes and digests', async () => {
    const events: BlobProgress[] = [];
    const c = client({onProgress: (p) => events.push(p)});
    await c.ping();
    const image = makeImage('first');
    const repo = 'dforge/app';
    expect(await c.ensureBlob(repo, sha256(image.config), image.config.length, once(image.config))).toBe('uploaded');
    expect(await c.ensureBlob(repo, sha256(image.layer), image.layer.length, once(image.layer))).toBe('uploaded');
    const digest = await c.putManifest(repo, '1.0.0', image.manifest, MEDIA_TYPES.manifest);
    expect(digest).toBe(sha256(image.manifest));
    expect(await c.manifestDigest(repo, '1.0.0')).toBe(sha256(image.manifest));
    expect(await c.manifestDigest(repo, digest)).toBe(digest);
    expect(events.filter((e) => !e.skipped).at(-1)).toMatchObject({blob: sha256(image.layer), bytes: image.layer.length, total: image.layer.length});

    // Read back with an independent client: same bytes, same digests.
    const manifest = await rawGet(`/v2/${repo}/manifests/1.0.0`, MEDIA_TYPES.manifest);
    expect(manifest.status).toBe(200);
    expect(manifest.body.equals(image.manifest)).toBe(true);
    expect(manifest.digest).toBe(digest);
    for (const blob of [image.config, image.layer]) {
      const got = await rawGet(`/v2/${repo}/blobs/${sha256(blob)}`);
      expect(got.status).toBe(200);
      expect(got.body.equals(blob)).toBe(true);
    }

    // Second push: HEAD finds both, nothing is opened or sent.
    events.length = 0;
    let opened = 0;
    const counting = (bytes: Buffer) => (): Readable => {
      opened++;
      return Readable.from([bytes]);
    };
    expect(await c.ensureBlob(repo, sha256(image.config), image.config.length, counting(image.config))).toBe('present');
    expect(await c.ensureBlob(repo, sha256(image.layer), image.layer.length, counting(image.layer))).toBe('present');
    expect(opened).toBe(0);
    expect(events.every((e) => e.skipped && e.bytes === e.total)).toBe(true);
    expect(events).toHaveLength(2);

    // Across repositories: mounted, not uploaded; a blob nobody has is not mountable.
    expect(await c.mountBlob('dforge/other', sha256(image.layer), repo)).toBe(true);
    expect(await c.hasBlob('dforge/other', sha256(image.layer))).toBe(true);
    expect(await c.ensureBlob('dforge/third', sha256(image.config), image.config.length, counting(image.config), [repo])).toBe('mounted');
    expect(opened).toBe(0);
    const absent = sha256(randomBytes(32));
    expect(await c.mountBlob('dforge/other', absent, repo)).toBe(false);
    expect(await c.hasBlob('dforge/other', absent)).toBe(false);
    c.close();
  });

  it('aborts an upload whose body stalls within the stall timeout instead of hanging', async () => {
    const retries: BlobProgress[] = [];
    const stalling = (): Readable => {
      // One chunk, then silence: a dead NFS mount or a stuck pipe upstream.
      const r = new Readable({read() {}});
      r.push(Buffer.alloc(4096, 1));
      return r;
    };
    const started = Date.now();
    const c2 = openRegistry({
      host: registry.host,
      ca: Buffer.from(registry.caPem),
      credentials: {username: registry.username, password: registry.password},
      timeouts: {stallMs: 1500},
      retry: {attempts: 2, baseDelayMs: 100},
      onProgress: (p) => p.retry && retries.push(p),
    });
    const err = await rejection(c2.uploadBlob('dforge/stall', sha256(randomBytes(8)), 1024 * 1024, stalling));
    const elapsed = Date.now() - started;
    expect(err.message).toMatch(/stalled: no bytes accepted for 1.5s/);
    expect(retries).toHaveLength(1);
    // Two attempts of 1.5 s each plus a 0.1 s backoff: far from "forever".
    expect(elapsed).toBeLessThan(8000);
    c2.close();
  });

  it('survives the registry being killed mid-upload of a 200 MB streamed blob, and a re-run skips what the journal recorded', async () => {
    const MiB = 1024 * 1024;
    const chunks = 200;
    const base = randomBytes(MiB);
    // Streamed from a generator, never held whole: chunk i is `base` stamped with i.
    async function* big(): AsyncGenerator<Buffer> {
      for (let i = 0; i < chunks; i++) {
        const chunk = Buffer.from(base);
        chunk.writeUInt32BE(i, 0);
        yield chunk;
      }
    }
    const hash = createHash('sha256');
    for await (const chunk of big()) hash.update(chunk);
    const bigDigest = `sha256:${hash.digest('hex')}`;
    const small = randomBytes(1000);
    const repo = 'dforge/big';
    const bundleSha256 = createHash('sha256').update('bundle.json of this test').digest('hex');
    const journalDir = path.join(tmp, 'journal');

    const progress: BlobProgress[] = [];
    let killed: Promise<void> | undefined;
    const c = client({
      onProgress: (p) => {
        progress.push(p);
        if (!killed && p.blob === bigDigest && !p.retry && p.bytes > 40 * MiB) {
          killed = registry.kill().then(() => registry.start());
        }
      },
    });
    const journal = await openPushJournal({dir: journalDir, registryHost: registry.host, bundleSha256});
    expect(await pushBlobJournaled(c, journal, {repo, digest: sha256(small), size: small.length, open: once(small)})).toBe('uploaded');
    expect(await pushBlobJournaled(c, journal, {repo, digest: bigDigest, size: chunks * MiB, open: () => Readable.from(big())})).toBe('uploaded');
    await killed;
    c.close();

    const bigEvents = progress.filter((p) => p.blob === bigDigest);
    expect(bigEvents.some((p) => p.retry)).toBe(true);
    // Progress only forward, across the retry, and it ends at the total.
    for (let i = 1; i < bigEvents.length; i++) expect(bigEvents[i]!.bytes).toBeGreaterThanOrEqual(bigEvents[i - 1]!.bytes);
    expect(bigEvents.at(-1)!.bytes).toBe(chunks * MiB);
    expect(bigEvents.filter((p) => !p.retry && p.bytes === chunks * MiB)).toHaveLength(1);

    const stat = await fs.stat(journal.file);
    expect(stat.mode & 0o777).toBe(0o600);

    // The registry has the whole blob, byte for byte (hashed as it streams back).
    const back = createHash('sha256');
    await new Promise<void>((resolve, reject) => {
      const auth = Buffer.from(`${registry.username}:${registry.password}`).toString('base64');
      https
        .get(`https://${registry.host}/v2/${repo}/blobs/${bigDigest}`, {ca: registry.caPem, headers: {Authorization: `Basic ${auth}`}}, (res) => {
          res.on('data', (chunk: Buffer) => back.update(chunk));
          res.on('end', resolve);
          res.on('error', reject);
        })
        .on('error', reject);
    });
    expect(`sha256:${back.digest('hex')}`).toBe(bigDigest);

    // A re-run resumes from the journal: both recorded, HEAD-checked, nothing opened.
    const resumed = await openPushJournal({dir: journalDir, registryHost: registry.host, bundleSha256});
    expect(resumed.hasBlob(repo, bigDigest)).toBe(true);
    expect(resumed.hasBlob(repo, sha256(small))).toBe(true);
    let opened = 0;
    const c2 = client();
    for (const blob of [
      {digest: sha256(small), size: small.length},
      {digest: bigDigest, size: chunks * MiB},
    ]) {
      const outcome = await pushBlobJournaled(c2, resumed, {
        repo,
        ...blob,
        open: () => {
          opened++;
          return Readable.from([]);
        },
      });
      expect(outcome).toBe('present');
    }
    // A new repository in the same push mounts from the journal's repository instead of uploading.
    expect(await pushBlobJournaled(c2, resumed, {repo: 'dforge/big2', digest: bigDigest, size: chunks * MiB, open: () => Readable.from([])})).toBe('mounted');
    expect(opened).toBe(0);
    c2.close();

    // Manifests are recorded too, and survive a reopen.
    await resumed.recordManifest(repo, '1.0.0', bigDigest);
    expect((await openPushJournal({dir: journalDir, registryHost: registry.host, bundleSha256})).manifest(repo, '1.0.0')).toBe(bigDigest);

    // A journal of another push (another registry) is not taken for this one.
    await fs.writeFile(resumed.file, JSON.stringify({format: 1, registry: 'elsewhere:5000', bundleSha256, blobs: [], manifests: []}));
    const err = await rejection(openPushJournal({dir: journalDir, registryHost: registry.host, bundleSha256}));
    expect(err.nextSteps.join(' ')).toContain(resumed.file);
  }, 240_000);
});
