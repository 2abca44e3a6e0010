import {execFileSync} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type Docker from 'dockerode';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {locateEntries} from '../../src/bundle/entries.js';
import {loadBundle} from '../../src/bundle/load.js';
import {blobPath, type BundleManifest} from '../../src/bundle/manifest.js';
import {openBundleSource} from '../../src/bundle/source.js';
import {bundleTrustFrom} from '../../src/bundle/trust.js';
import {verifyBundle} from '../../src/bundle/verify.js';
import {VerificationError} from '../../src/errors.js';
import {flipByte} from '../helpers/bundle-fixture.js';
import {TEST_BASE_IMAGE, buildRandomImage, imageExists, removeImages, manifestOf} from '../helpers/bundle-images.js';
import {runCli} from '../helpers/cli.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {ensureTestImages} from '../helpers/test-images.js';

const unavailable = await dockerUnavailableReason();
const BASE = TEST_BASE_IMAGE;

/** The absolute offset of a byte inside an entry's content (the bundle is one file, not split). */
const offsetIn = (manifest: BundleManifest, entryPath: string, at: number): number => {
  const entry = locateEntries(manifest).find((e) => e.path === entryPath)!;
  return entry.contentOffset + at;
};

/**
 * `dforge bundle load` on the real engine: images built for this run only (on the shared test
 * base, so some layers are always present), removed, then loaded from bundles that are intact,
 * tampered with, signed by another key, unsigned, changed after verification, or deltas.
 */
describe.skipIf(unavailable !== undefined)('bundle load', () => {
  let docker: Docker;
  let work: string;
  let key: string;
  let pub: string;
  let otherPub: string;
  let exe: string;
  let noInstall: string;
  const id = `load${randomBytes(4).toString('hex')}`;
  const A = `dforge-test/${id}-a:1`;
  const B = `dforge-test/${id}-b:1`;
  let bundle: string;
  let manifest: BundleManifest;

  const load = (file: string, ...flags: string[]) => runCli(['bundle', 'load', file, '--dir', noInstall, '--json', ...flags]);
  const create = async (out: string, images: string[], ...flags: string[]) => {
    const list = `${out}.images`;
    await fs.writeFile(list, `${images.join('\n')}\n`);
    const release = flags.includes('--release') ? [] : ['--release', '9.9.9'];
    const r = await runCli(['bundle', 'create', ...release, '--images', list, '--executable', exe, '--out', out, '--json', ...flags]);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    return out;
  };
  const error = (stdout: string) => (JSON.parse(stdout) as {error: {exitCode: number; message: string; nextSteps?: string[]}}).error;

  beforeAll(async () => {
    docker = await connectDocker();
    await ensureTestImages(docker);
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-bundle-load-'));
    noInstall = path.join(work, 'no-install');
    await fs.mkdir(noInstall);
    exe = path.join(work, 'fake-dforge');
    await fs.writeFile(exe, '#!/bin/sh\necho dforge\n');
    for (const name of ['keys', 'other']) {
      const r = await runCli(['bundle', 'keygen', '--out', path.join(work, name), '--json']);
      expect(r.code, r.stderr).toBe(0);
    }
    key = path.join(work, 'keys', 'bundle-signing.key');
    pub = path.join(work, 'keys', 'bundle-signing.pub');
    otherPub = path.join(work, 'other', 'bundle-signing.pub');
    buildRandomImage(A, BASE, 3, `${id}a`);
    // B is A plus a layer: A's layers are B's, which a delta bundle then leaves out.
    buildRandomImage(B, A, 2, `${id}b`);
    bundle = await create(path.join(work, 'ab.bundle'), [A, B], '--key', key);
    manifest = manifestOf(bundle);
  }, 300_000);

  afterAll(async () => {
    removeImages(B, A);
    await fs.rm(work, {recursive: true, force: true});
  });

  it('loads after docker rmi: image ids are the signed config digests, base layers are not sent; a second load sends no layer', async () => {
    removeImages(B, A);
    expect(imageExists(A)).toBe(false);
    const r = await load(bundle, '--trusted-key', pub);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const result = JSON.parse(r.stdout) as {release: string; images: Array<{ref: string; imageId: string; layersSent: number; layersPresent: number}>};
    expect(result.release).toBe('9.9.9');
    for (const image of manifest.images) {
      const loaded = result.images.find((i) => i.ref === image.ref)!;
      expect(loaded.imageId).toBe(image.config.digest);
      expect((await docker.getImage(image.ref).inspect()).Id).toBe(image.config.digest);
    }
    const a = result.images.find((i) => i.ref === A)!;
    const b = result.images.find((i) => i.ref === B)!;
    // The base's layers are in the engine (dforge-test/base:bookworm); only A's own layer goes.
    expect(a.layersPresent).toBeGreaterThan(0);
    expect(a.layersSent).toBe(1);
    // B's layers below its own came in with A a moment before.
    expect(b.layersSent).toBe(1);
    expect(r.stderr).toMatch(/load: /);

    const again = await load(bundle, '--trusted-key', pub);
    expect(again.code, again.stderr).toBe(0);
    const second = JSON.parse(again.stdout) as {images: Array<{layersSent: number}>};
    expect(second.images.every((i) => i.layersSent === 0)).toBe(true);
  }, 180_000);

  it('refuses a flipped byte inside a layer blob, naming the blob, and loads nothing (exit 6)', async () => {
    removeImages(B, A);
    const copy = path.join(work, 'tampered.bundle');
    await fs.copyFile(bundle, copy);
    const layer = blobPath(manifest.images.find((i) => i.ref === A)!.layers.at(-1)!.digest);
    await flipByte(copy, offsetIn(manifest, layer, 1_000_000));
    const r = await load(copy, '--trusted-key', pub);
    expect(r.code, r.stderr).toBe(6);
    expect(error(r.stdout).message).toContain(layer);
    expect(imageExists(A)).toBe(false);
    expect(imageExists(B)).toBe(false);
  }, 120_000);

  it('refuses a bundle signed by a key that is not trusted, and loads nothing (exit 6)', async () => {
    removeImages(B, A);
    const r = await load(bundle, '--trusted-key', otherPub);
    expect(r.code, r.stderr).toBe(6);
    expect(error(r.stdout).message).toMatch(/key|sign/i);
    expect(imageExists(A)).toBe(false);
  }, 120_000);

  it('refuses an unsigned bundle unless --allow-unsigned, which loads it and says the acceptance was not recorded without an install', async () => {
    expect((await load(bundle, '--trusted-key', pub)).code).toBe(0);
    const unsigned = await create(path.join(work, 'unsigned.bundle'), [A], '--unsigned');
    removeImages(B, A);
    const refused = await load(unsigned);
    expect(refused.code, refused.stderr).toBe(1);
    expect(error(refused.stdout).message).toMatch(/unsigned|signature/i);
    expect(imageExists(A)).toBe(false);

    const allowed = await load(unsigned, '--allow-unsigned');
    expect(allowed.code, allowed.stderr + allowed.stdout).toBe(0);
    const result = JSON.parse(allowed.stdout) as {images: Array<{ref: string}>; unsigned: {auditedIn: unknown; reason: string}};
    expect(result.images.map((i) => i.ref)).toEqual([A]);
    expect(result.unsigned.auditedIn).toBeNull();
    expect(allowed.stderr).toMatch(/UNSIGNED/);
    expect(imageExists(A)).toBe(true);
  }, 180_000);

  it('a blob changed after verification aborts that image load with VerificationError, and the engine has none of it', async () => {
    removeImages(B, A);
    const copy = path.join(work, 'late.bundle');
    await fs.copyFile(bundle, copy);
    const verified = await verifyBundle(await openBundleSource(copy), await bundleTrustFrom({trustedKeyFiles: [pub], configuredKeyFiles: [], allowUnsigned: false}));
    const layer = blobPath(manifest.images.find((i) => i.ref === A)!.layers.at(-1)!.digest);
    await flipByte(copy, offsetIn(manifest, layer, 2_000_000));
    const err = await loadBundle(docker, verified).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VerificationError);
    expect((err as Error).message).toContain(layer);
    expect(imageExists(A)).toBe(false);
    expect(imageExists(B)).toBe(false);
  }, 120_000);

  it('loads a delta bundle when its base is in the engine, and refuses it naming the layer and the base release when not', async () => {
    removeImages(B, A);
    buildRandomImage(A, BASE, 3, `${id}a`);
    const oldDir = path.join(work, 'old');
    await fs.mkdir(oldDir);
    const old = await create(path.join(oldDir, 'old.bundle'), [A], '--key', key, '--release', '9.9.8');
    execFileSync('tar', ['-xf', old, 'bundle.json'], {cwd: oldDir});
    buildRandomImage(B, A, 2, `${id}b`);
    const delta = await create(path.join(work, 'delta.bundle'), [A, B], '--key', key, '--since', path.join(oldDir, 'bundle.json'));
    const deltaManifest = manifestOf(delta);
    expect(deltaManifest.base?.release).toBe('9.9.8');
    const aLayer = manifestOf(old).images[0]!.layers.at(-1)!.digest;
    expect(deltaManifest.base?.omittedBlobs).toContain(aLayer);

    // B gone, A (the base release's image) still there: B's own layer is all that is sent.
    removeImages(B);
    const ok = await load(delta, '--trusted-key', pub);
    expect(ok.code, ok.stderr + ok.stdout).toBe(0);
    expect((await docker.getImage(B).inspect()).Id).toBe(deltaManifest.images.find((i) => i.ref === B)!.config.digest);

    removeImages(B, A);
    const refused = await load(delta, '--trusted-key', pub);
    expect(refused.code, refused.stderr).toBe(1);
    const e = error(refused.stdout);
    expect(e.message).toContain(aLayer);
    expect(e.message).toContain('9.9.8');
    expect(imageExists(A)).toBe(false);
    expect(imageExists(B)).toBe(false);
  }, 300_000);
});
