import {execFileSync} from 'node:child_process';
import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {locateEntries} from '../../src/bundle/entries.js';
import {blobPath, parseBundleManifest, type BundleManifest} from '../../src/bundle/manifest.js';
import {openBundleSource} from '../../src/bundle/source.js';
import {bundleTrustFrom} from '../../src/bundle/trust.js';
import {verifyBundle} from '../../src/bundle/verify.js';
import {spaceOutcome} from '../../src/preflight/checks/bundle.js';
import {flipByte} from '../helpers/bundle-fixture.js';
import {TEST_BASE_IMAGE, imageExists} from '../helpers/bundle-images.js';
import {runCli} from '../helpers/cli.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {ensureTestImages} from '../helpers/test-images.js';

const unavailable = await dockerUnavailableReason();
const BASE = TEST_BASE_IMAGE;

interface Check {
  id: string;
  status: string;
  detail?: string;
  remedy?: string;
}

/**
 * `preflight --bundle` and `install --bundle` through the CLI on the real engine: the bundle is
 * checked before anything is written, its release is the install's, and a Kubernetes install pins
 * the bundle's images by manifest digest in the registry they were pushed to.
 */
describe.skipIf(unavailable !== undefined)('install and preflight from a bundle', () => {
  let work: string;
  let pub: string;
  let bundle: string;
  let manifest: BundleManifest;
  const id = `inst${randomBytes(4).toString('hex')}`;
  const APP = `dforge-test/${id}-app:1`;

  const checksOf = (stdout: string): Check[] => {
    const parsed = JSON.parse(stdout) as {checks?: Check[]; error?: {data?: {checks?: Check[]}}};
    return parsed.checks ?? parsed.error?.data?.checks ?? [];
  };

  beforeAll(async () => {
    await ensureTestImages(await connectDocker());
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-bundle-install-'));
    const exe = path.join(work, 'fake-dforge');
    await fs.writeFile(exe, '#!/bin/sh\necho dforge\n');
    const keygen = await runCli(['bundle', 'keygen', '--out', path.join(work, 'keys'), '--json']);
    expect(keygen.code, keygen.stderr).toBe(0);
    pub = path.join(work, 'keys', 'bundle-signing.pub');
    execFileSync('docker', ['build', '-q', '-t', APP, '-'], {input: `FROM ${BASE}\nRUN head -c 3000000 /dev/urandom > /blob\nLABEL t=${id}\n`});
    await fs.writeFile(path.join(work, 'images.txt'), `${APP}\n`);
    bundle = path.join(work, 'app.bundle');
    const created = await runCli(['bundle', 'create', '--release', '9.9.9', '--images', path.join(work, 'images.txt'), '--key', path.join(work, 'keys', 'bundle-signing.key'), '--executable', exe, '--out', bundle, '--json']);
    expect(created.code, created.stderr).toBe(0);
    manifest = parseBundleManifest(execFileSync('tar', ['-xOf', bundle, 'bundle.json']), bundle);
  }, 300_000);

  afterAll(async () => {
    try {
      execFileSync('docker', ['rmi', '-f', APP], {stdio: 'ignore'});
    } catch {
      // already gone
    }
    await fs.rm(work, {recursive: true, force: true});
  });

  it('preflight --bundle with the trusted key runs bundle.verify and bundle.space, and both pass', async () => {
    const dir = path.join(work, 'pf-ok');
    const r = await runCli(['preflight', '--dir', dir, '--bundle', bundle, '--trusted-key', pub, '--json']);
    const checks = checksOf(r.stdout);
    const verify = checks.find((c) => c.id === 'bundle.verify');
    const space = checks.find((c) => c.id === 'bundle.space');
    expect(verify?.status, r.stdout).toBe('pass');
    expect(verify?.detail).toContain('9.9.9');
    expect(space?.status, r.stdout).toBe('pass');
    expect(space?.detail).toMatch(/needed under .* free/);
    // The host checks are this machine's business: whatever they find, no bundle check failed.
    expect(checks.filter((c) => c.status === 'fail').map((c) => c.id).filter((id) => id.startsWith('bundle.'))).toEqual([]);
    expect([0, 3]).toContain(r.code);
  }, 180_000);

  it('preflight --bundle without a trusted key fails bundle.verify (exit 3)', async () => {
    const r = await runCli(['preflight', '--dir', path.join(work, 'pf-nokey'), '--bundle', bundle, '--json']);
    expect(r.code, r.stdout).toBe(3);
    expect(checksOf(r.stdout).find((c) => c.id === 'bundle.verify')?.status).toBe('fail');
    expect(r.stdout).toContain('bundle.verify');
  }, 180_000);

  it('spaceOutcome fails with a remedy when the free space is less than the load needs', async () => {
    const verified = await verifyBundle(await openBundleSource(bundle), await bundleTrustFrom({trustedKeyFiles: [pub], configuredKeyFiles: [], allowUnsigned: false}));
    const root = os.tmpdir();
    const st = await fs.statfs(root);
    const ok = spaceOutcome(verified, new Set(), st.bavail * st.bsize, root);
    expect(ok.status).toBe('pass');
    const image = manifest.images[0]!;
    const bytes = image.config.size + image.layers.reduce((n, l) => n + l.size, 0);
    // Nothing present: every byte is new, plus the engine staging that image once.
    const fail = spaceOutcome(verified, new Set(), bytes, root);
    expect(fail.status).toBe('fail');
    expect(fail.detail).toContain(root);
    expect(fail.remedy).toMatch(/^Free .* under .*data-root/);
  }, 120_000);

  it('install --bundle refuses a tampered bundle (exit 6) before writing anything or loading any image', async () => {
    execFileSync('docker', ['rmi', '-f', APP], {stdio: 'ignore'});
    const copy = path.join(work, 'tampered.bundle');
    await fs.copyFile(bundle, copy);
    const layer = blobPath(manifest.images[0]!.layers.at(-1)!.digest);
    await flipByte(copy, locateEntries(manifest).find((e) => e.path === layer)!.contentOffset + 4096);
    const dir = path.join(work, 'tampered-install');
    const r = await runCli(['install', '--dir', dir, '--bundle', copy, '--trusted-key', pub, '--image', `app=${APP}`, '--domain', 'dforge.localhost', '--region', 'eu', '--yes', '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(6);
    expect(r.stdout).toContain(layer);
    const written = await fs.readdir(dir).catch(() => [] as string[]);
    expect(written).not.toContain('dforge.yaml');
    expect(written).not.toContain('secrets');
    expect(imageExists(APP)).toBe(false);
  }, 180_000);

  it('install --bundle with another --release names both releases (exit 2)', async () => {
    const r = await runCli(['install', '--dir', path.join(work, 'release'), '--bundle', bundle, '--trusted-key', pub, '--release', '1.0.0', '--domain', 'dforge.localhost', '--region', 'eu', '--yes', '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(2);
    const message = (JSON.parse(r.stdout) as {error: {message: string}}).error.message;
    expect(message).toContain('1.0.0');
    expect(message).toContain('9.9.9');
  }, 180_000);

  it('install --target k8s --bundle --registry pins the bundle images at registry/repo@manifest digest', async () => {
    const dir = path.join(work, 'k8s');
    const r = await runCli(['install', '--dir', dir, '--target', 'k8s', '--bundle', bundle, '--trusted-key', pub, '--registry', 'reg.example:5000', '--image', `app=${APP}`, '--domain', 'dforge.localhost', '--region', 'eu', '--yes']);
    // No cluster here: rendered, then incomplete (exit 4).
    expect(r.code, r.stderr + r.stdout).toBe(4);
    const pinned = `reg.example:5000/dforge-test/${id}-app@${manifest.images[0]!.manifest.digest}`;
    expect(await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8')).toContain(pinned);
    const rendered = execFileSync('grep', ['-rh', 'image:', path.join(dir, 'rendered', 'k8s')], {encoding: 'utf8'});
    expect(rendered).toContain(pinned);
    expect(rendered).not.toContain(`image: ${APP}`);
  }, 180_000);

  it('install --target k8s --bundle without --registry says to push first (exit 2)', async () => {
    const r = await runCli(['install', '--dir', path.join(work, 'k8s-noreg'), '--target', 'k8s', '--bundle', bundle, '--trusted-key', pub, '--domain', 'dforge.localhost', '--region', 'eu', '--yes', '--json']);
    expect(r.code, r.stderr + r.stdout).toBe(2);
    expect(r.stdout).toContain('--registry');
    expect(r.stdout).toContain('dforge bundle push');
  }, 180_000);
});
