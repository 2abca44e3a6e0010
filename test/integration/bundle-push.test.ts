import {execFileSync, spawn} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import {setTimeout as sleep} from 'node:timers/promises';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {locateEntries} from '../../src/bundle/entries.js';
import {blobPath, MEDIA_TYPES, type BundleManifest} from '../../src/bundle/manifest.js';
import {repositoryOf} from '../../src/bundle/push.js';
import {flipByte} from '../helpers/bundle-fixture.js';
import {TEST_BASE_IMAGE, buildRandomImage, manifestOf, removeImages} from '../helpers/bundle-images.js';
import {cliEntry, runCli} from '../helpers/cli.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {startTestRegistry, type TestRegistry} from '../helpers/registry.js';
import {ensureTestImages} from '../helpers/test-images.js';

const unavailable = await dockerUnavailableReason();
const BASE = TEST_BASE_IMAGE;

const entryBytes = (bundle: string, entry: string): Buffer => execFileSync('tar', ['-xOf', bundle, entry], {maxBuffer: 64 * 1024 * 1024});

interface PushJson {
  registry: string;
  images: Array<{ref: string; pinned: string; tag: string}>;
  blobs: {uploaded: number; mounted: number; present: number};
}

/**
 * `dforge bundle push` to a real registry (distribution 2.8.2, TLS from a test CA, htpasswd):
 * pinned digests, the manifest read back, nothing re-sent, a killed push resumed, a wrong password
 * kept out of every output, and a tampered bundle that pushes nothing.
 */
describe.skipIf(unavailable !== undefined)('bundle push', () => {
  let registry: TestRegistry;
  let work: string;
  let noInstall: string;
  let state: string;
  let caFile: string;
  let authFile: string;
  let pub: string;
  let key: string;
  let exe: string;
  const id = `push${randomBytes(4).toString('hex')}`;
  const A = `dforge-test/${id}-a:1`;
  const B = `dforge-test/${id}-b:1`;
  const BIG = `dforge-test/${id}-big:1`;
  const C = `dforge-test/${id}-c:1`;
  let bundle: string;
  let manifest: BundleManifest;

  const create = async (out: string, images: string[]): Promise<string> => {
    await fs.writeFile(`${out}.images`, `${images.join('\n')}\n`);
    const r = await runCli(['bundle', 'create', '--release', '9.9.9', '--images', `${out}.images`, '--key', key, '--executable', exe, '--out', out, '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    return out;
  };
  const pushArgs = (file: string, auth = authFile): string[] => ['bundle', 'push', file, '--registry', registry.host, '--ca', caFile, '--registry-auth', auth, '--trusted-key', pub, '--dir', noInstall, '--json'];
  const push = (file: string, auth = authFile) => runCli(pushArgs(file, auth), {env: {XDG_STATE_HOME: state}});
  const request = (method: string, urlPath: string, accept = MEDIA_TYPES.manifest): Promise<{status: number; body: Buffer; digest?: string}> =>
    new Promise((resolve, reject) => {
      const [hostname, port] = registry.host.split(':');
      const req = https.request(
        {method, hostname, port: Number(port), path: urlPath, ca: registry.caPem, auth: `${registry.username}:${registry.password}`, headers: {Accept: accept}},
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({status: res.statusCode ?? 0, body: Buffer.concat(chunks), digest: res.headers['docker-content-digest'] as string | undefined}));
        },
      );
      req.on('error', reject);
      req.end();
    });
  const storedBlobs = async (): Promise<number> => {
    const dir = path.join(registry.storageDir, 'docker', 'registry', 'v2', 'blobs', 'sha256');
    const prefixes = await fs.readdir(dir).catch(() => []);
    let n = 0;
    for (const p of prefixes) n += (await fs.readdir(path.join(dir, p))).length;
    return n;
  };

  beforeAll(async () => {
    await ensureTestImages(await connectDocker());
    registry = await startTestRegistry();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-bundle-push-'));
    noInstall = path.join(work, 'no-install');
    state = path.join(work, 'state');
    await fs.mkdir(noInstall);
    caFile = path.join(work, 'ca.crt');
    await fs.writeFile(caFile, registry.caPem);
    authFile = path.join(work, 'registry.auth');
    await fs.writeFile(authFile, `${registry.username}:${registry.password}\n`, {mode: 0o600});
    exe = path.join(work, 'fake-dforge');
    await fs.writeFile(exe, '#!/bin/sh\necho dforge\n');
    const r = await runCli(['bundle', 'keygen', '--out', path.join(work, 'keys'), '--json']);
    expect(r.code, r.stderr).toBe(0);
    key = path.join(work, 'keys', 'bundle-signing.key');
    pub = path.join(work, 'keys', 'bundle-signing.pub');
    buildRandomImage(A, BASE, 3, `${id}a`);
    buildRandomImage(B, A, 2, `${id}b`);
    bundle = await create(path.join(work, 'ab.bundle'), [A, B]);
    manifest = manifestOf(bundle);
  }, 300_000);

  afterAll(async () => {
    removeImages(B, A, BIG, C);
    await registry?.stop();
    await fs.rm(work, {recursive: true, force: true});
  });

  it('pushes every image pinned at the signed manifest digest, serves those manifest bytes, and sends nothing the second time', async () => {
    const r = await push(bundle);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const result = JSON.parse(r.stdout) as PushJson;
    expect(result.blobs.uploaded).toBeGreaterThan(0);
    for (const image of manifest.images) {
      const {repo, tag} = repositoryOf(image.ref);
      const pushed = result.images.find((i) => i.ref === image.ref)!;
      expect(pushed.pinned).toBe(`${registry.host}/${repo}@${image.manifest.digest}`);
      const got = await request('GET', `/v2/${repo}/manifests/${tag}`);
      expect(got.status).toBe(200);
      expect(got.body.equals(entryBytes(bundle, blobPath(image.manifest.digest)))).toBe(true);
      expect(got.digest).toBe(image.manifest.digest);
    }
    // The shared layers went once, then were mounted or found for the second image.
    const again = await push(bundle);
    expect(again.code, again.stderr + again.stdout).toBe(0);
    expect((JSON.parse(again.stdout) as PushJson).blobs.uploaded).toBe(0);
  }, 180_000);

  it('resumes a push killed midway, uploading only what the registry still lacks', async () => {
    buildRandomImage(BIG, BASE, 120, `${id}big`);
    const bigBundle = await create(path.join(work, 'big.bundle'), [BIG]);
    const big = manifestOf(bigBundle).images[0]!;
    const total = 1 + big.layers.length;
    const journalDir = path.join(state, 'dforge', 'push');
    const child = spawn(process.execPath, [cliEntry, ...pushArgs(bigBundle)], {env: {...process.env, XDG_STATE_HOME: state}, stdio: ['ignore', 'ignore', 'ignore']});
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    let listed = 0;
    for (let i = 0; i < 3000 && child.exitCode === null; i++) {
      const files = await fs.readdir(journalDir).catch(() => [] as string[]);
      for (const f of files) {
        const text = await fs.readFile(path.join(journalDir, f), 'utf8').catch(() => '');
        try {
          listed = Math.max(listed, (JSON.parse(text) as {blobs: unknown[]}).blobs.length);
        } catch {
          // mid-rename
        }
      }
      if (listed >= 1) break;
      await sleep(10);
    }
    child.kill('SIGKILL');
    // It must have died by the kill, with some blobs done: otherwise nothing was resumed.
    expect(await exited).toBe('SIGKILL');
    expect(listed).toBeGreaterThanOrEqual(1);

    const resumed = await push(bigBundle);
    expect(resumed.code, resumed.stderr + resumed.stdout).toBe(0);
    const result = JSON.parse(resumed.stdout) as PushJson;
    expect(result.blobs.uploaded).toBeLessThan(total);
    expect(result.blobs.uploaded + result.blobs.mounted + result.blobs.present).toBe(total);
    const {repo, tag} = repositoryOf(BIG);
    expect((await request('HEAD', `/v2/${repo}/manifests/${tag}`)).digest).toBe(big.manifest.digest);
  }, 300_000);

  it('refuses a wrong password (exit 1) without the password in any output', async () => {
    const wrong = `wrong-${randomBytes(9).toString('hex')}`;
    const badAuth = path.join(work, 'bad.auth');
    await fs.writeFile(badAuth, `${registry.username}:${wrong}\n`, {mode: 0o600});
    const r = await push(bundle, badAuth);
    expect(r.code, r.stderr + r.stdout).toBe(1);
    expect(r.stdout + r.stderr).not.toContain(wrong);
    expect(r.stdout + r.stderr).not.toContain(registry.password);
    expect((JSON.parse(r.stdout) as {error: {message: string}}).error.message).toMatch(/401|auth|credential|password|denied/i);
  }, 120_000);

  it('refuses a tampered bundle (exit 6) and the registry gets no manifest for its tag', async () => {
    buildRandomImage(C, BASE, 2, `${id}c`);
    const file = await create(path.join(work, 'c.bundle'), [C]);
    const m = manifestOf(file);
    const layer = blobPath(m.images[0]!.layers.at(-1)!.digest);
    const blobsBefore = await storedBlobs();
    await flipByte(file, locateEntries(m).find((e) => e.path === layer)!.contentOffset + 1000);
    const r = await push(file);
    expect(r.code, r.stderr + r.stdout).toBe(6);
    expect((JSON.parse(r.stdout) as {error: {message: string}}).error.message).toContain(layer);
    const {repo, tag} = repositoryOf(C);
    expect((await request('HEAD', `/v2/${repo}/manifests/${tag}`)).status).toBe(404);
    expect(await storedBlobs()).toBe(blobsBefore);
  }, 120_000);
});
