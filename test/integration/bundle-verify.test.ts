import {execFileSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {blobPath} from '../../src/bundle/manifest.js';
import {bigLayer, buildBundle, contentOffset, flipByte, signingKey, type SigningKey} from '../helpers/bundle-fixture.js';
import {repoRoot, runCli} from '../helpers/cli.js';
import {quickstartInstall, type EmbeddedInstall} from '../helpers/embedded-install.js';
import {findPgBinaries} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

/**
 * `dforge bundle verify` against whoever handles the bundle on its way: flipped bytes in a blob,
 * in bundle.json, in its signature or a template, parts lost or reordered, an entry smuggled in,
 * the wrong key, a stripped signature. Each through the built CLI: exit code and the named entry.
 */
describe('bundle verify', () => {
  let dir: string;
  let key: SigningKey;
  let otherKey: SigningKey;
  let noInstall: string;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-bundle-verify-'));
    noInstall = path.join(dir, 'no-install');
    await fs.mkdir(noInstall);
    key = await signingKey(dir);
    otherKey = await signingKey(dir, 'other');
  });
  afterAll(async () => {
    await fs.rm(dir, {recursive: true, force: true});
  });

  const fresh = async (name: string, options: Partial<Parameters<typeof buildBundle>[0]> = {}) => {
    const sub = path.join(dir, name);
    await fs.mkdir(sub);
    return buildBundle({dir: sub, key, ...options});
  };
  const verify = (file: string, ...flags: string[]) => runCli(['bundle', 'verify', file, '--dir', noInstall, '--json', ...flags]);
  const error = (stdout: string): {exitCode: number; message: string; data?: Record<string, unknown>} => (JSON.parse(stdout) as {error: {exitCode: number; message: string; data?: Record<string, unknown>}}).error;

  it('accepts an intact signed bundle and names its signer', async () => {
    const b = await fresh('ok');
    const r = await verify(b.file, '--trusted-key', key.publicKeyFile);
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as {release: string; signer: {publicKeySha256: string}; entries: number};
    expect(result).toMatchObject({release: '1.4.2', signer: {publicKeySha256: key.fingerprint}, entries: b.manifest.entries.length});
    expect(r.stderr).toMatch(/verify: .* of .*\(100%\)/);
  });

  it('refuses a private key given as --trusted-key, saying the signing key has leaked (exit 1)', async () => {
    const b = await fresh('private-as-trusted');
    const leaked = path.join(path.dirname(b.file), 'leaked.key');
    await fs.writeFile(leaked, key.privateKey.export({type: 'pkcs8', format: 'pem'}) as string, {mode: 0o600});
    const r = await verify(b.file, '--trusted-key', leaked);
    expect(r.code).toBe(1);
    expect(error(r.stdout).message).toContain('PRIVATE key');
    expect(r.stdout + r.stderr).not.toContain('BEGIN PRIVATE KEY');
  });

  it('refuses a flipped byte in a layer blob, naming the blob (exit 6)', async () => {
    const b = await fresh('blob');
    const layer = blobPath(b.manifest.images[0]!.layers[1]!.digest);
    await flipByte(b.file, contentOffset(b, layer) + 100);
    const r = await verify(b.file, '--trusted-key', key.publicKeyFile);
    expect(r.code).toBe(6);
    expect(error(r.stdout).message).toContain(layer);
  });

  it('refuses a flipped byte in a template, naming the template (exit 6)', async () => {
    const b = await fresh('template');
    await flipByte(b.file, contentOffset(b, 'templates/k8s/app.yaml') + 2);
    const r = await verify(b.file, '--trusted-key', key.publicKeyFile);
    expect(r.code).toBe(6);
    expect(error(r.stdout).message).toContain('templates/k8s/app.yaml');
  });

  it('refuses a changed bundle.json and a changed signature (exit 6)', async () => {
    const a = await fresh('manifest');
    // Inside the release value: still JSON, still naming the signer, but not what was signed.
    await flipByte(a.file, contentOffset(a, 'bundle.json') + a.manifestBytes.indexOf('"1.4.2"') + 1);
    const ra = await verify(a.file, '--trusted-key', key.publicKeyFile);
    expect(ra.code).toBe(6);
    expect(error(ra.stdout).message).toMatch(/signature over bundle\.json does not verify/);

    const s = await fresh('signature');
    await flipByte(s.file, contentOffset(s, 'bundle.json.sig') + 10);
    const rs = await verify(s.file, '--trusted-key', key.publicKeyFile);
    expect(rs.code).toBe(6);
    expect(error(rs.stdout).message).toContain('bundle.json');
  });

  it('refuses an entry smuggled into the tar that bundle.json does not list (exit 6)', async () => {
    const b = await fresh('extra', {extra: [{path: 'templates/zz-evil.yaml', kind: 'template', content: Buffer.from('evil'), unlisted: true}]});
    const r = await verify(b.file, '--trusted-key', key.publicKeyFile);
    expect(r.code).toBe(6);
    expect(error(r.stdout).message).toContain('templates/zz-evil.yaml');
  });

  it('refuses a split bundle with a part missing or parts swapped, naming the part (exit 6)', async () => {
    const b = await fresh('split', {split: 8 * 512});
    expect(b.parts.length).toBeGreaterThan(3);
    const r0 = await verify(`${b.file}.parts.json`, '--trusted-key', key.publicKeyFile);
    expect(r0.code, r0.stdout).toBe(0);
    const first = await fs.readFile(b.parts[0]!);
    await fs.writeFile(b.parts[0]!, await fs.readFile(b.parts[1]!));
    await fs.writeFile(b.parts[1]!, first);
    const swapped = await verify(b.file, '--trusted-key', key.publicKeyFile);
    expect(swapped.code, swapped.stdout).toBe(6);
    expect(error(swapped.stdout).message).toContain('release.bundle.001');
    await fs.rm(b.parts[2]!);
    const missing = await verify(b.file, '--trusted-key', key.publicKeyFile);
    expect(missing.code).toBe(6);
    expect(error(missing.stdout).message).toContain('release.bundle.003');
  });

  it('refuses a bundle signed by another key, naming both fingerprints (exit 6)', async () => {
    const b = await fresh('wrong-key');
    const r = await verify(b.file, '--trusted-key', otherKey.publicKeyFile);
    expect(r.code).toBe(6);
    expect(error(r.stdout).message).toContain(key.fingerprint);
    expect(error(r.stdout).message).toContain(otherKey.fingerprint);
  });

  it('refuses a signed bundle when no key is trusted, saying how to trust one (exit 1)', async () => {
    const b = await fresh('no-key');
    const r = await verify(b.file);
    expect(r.code).toBe(1);
    const e = JSON.parse(r.stdout) as {error: {message: string; nextSteps: string[]}};
    expect(e.error.message).toContain(key.fingerprint);
    expect(e.error.nextSteps.join('\n')).toMatch(/--trusted-key[\s\S]*bundles\.trustedKeys/);
  });

  it('refuses an unsigned bundle (exit 1) unless --allow-unsigned, and says it was not audited without an install', async () => {
    const b = await fresh('unsigned', {key: null});
    const refused = await verify(b.file);
    expect(refused.code).toBe(1);
    expect(error(refused.stdout).message).toMatch(/unsigned/);
    const allowed = await verify(b.file, '--allow-unsigned');
    expect(allowed.code, allowed.stdout).toBe(0);
    const result = JSON.parse(allowed.stdout) as {signer: null; unsigned: {auditedIn: null; reason: string}};
    expect(result.signer).toBeNull();
    expect(result.unsigned.auditedIn).toBeNull();
    expect(result.unsigned.reason).toMatch(/no install/);
    expect(allowed.stderr).toMatch(/UNSIGNED/);
  });

  it('treats an unsigned bundle as tamper when a trusted key was given, even with --allow-unsigned (exit 6)', async () => {
    const b = await fresh('stripped', {key: null});
    const r = await verify(b.file, '--trusted-key', key.publicKeyFile, '--allow-unsigned');
    expect(r.code).toBe(6);
    expect(error(r.stdout).message).toMatch(/unsigned, but a trusted key was given/);
  });

  it('inspect reports release, images, shared-layer savings, signer and SBOM components, and refuses a tampered bundle', async () => {
    const b = await fresh('inspect');
    const r = await runCli(['bundle', 'inspect', b.file, '--dir', noInstall, '--json', '--trusted-key', key.publicKeyFile]);
    expect(r.code, r.stdout).toBe(0);
    const got = JSON.parse(r.stdout) as {release: string; signer: {publicKeySha256: string}; sharedLayerSavings: number; images: Array<{ref: string; size: number; sbom: {components: number} | null}>};
    const shared = b.manifest.images[0]!.layers[0]!;
    expect(b.manifest.images[1]!.layers[0]!.digest).toBe(shared.digest);
    expect(got.release).toBe('1.4.2');
    expect(got.signer.publicKeySha256).toBe(key.fingerprint);
    expect(got.sharedLayerSavings).toBe(shared.size);
    const app = b.manifest.images[0]!;
    expect(got.images[0]).toMatchObject({ref: 'dforge/app:1.4.2', size: app.config.size + app.layers.reduce((n, l) => n + l.size, 0), sbom: {components: 3}});
    expect(got.images[1]!.sbom).toBeNull();
    const text = await runCli(['bundle', 'inspect', b.file, '--dir', noInstall, '--trusted-key', key.publicKeyFile]);
    expect(text.stdout).toContain('dforge/proxy:1.4.2');

    await flipByte(b.file, contentOffset(b, 'oci/index.json') + 3);
    const tampered = await runCli(['bundle', 'inspect', b.file, '--dir', noInstall, '--json', '--trusted-key', key.publicKeyFile]);
    expect(tampered.code).toBe(6);
    expect(error(tampered.stdout).message).toContain('oci/index.json');
  });

  it('verifies a 200 MB blob with RSS growth well under 150 MB', async () => {
    const b = await fresh('big', {images: [{ref: 'dforge/big:1', layers: [bigLayer(200 * 1024 * 1024)]}]});
    const script = `
      const {openBundleSource} = await import(${JSON.stringify(path.join(repoRoot, 'dist/bundle/source.js'))});
      const {verifyBundle} = await import(${JSON.stringify(path.join(repoRoot, 'dist/bundle/verify.js'))});
      const {bundleTrustFrom} = await import(${JSON.stringify(path.join(repoRoot, 'dist/bundle/trust.js'))});
      const trust = await bundleTrustFrom({trustedKeyFiles: [${JSON.stringify(key.publicKeyFile)}], configuredKeyFiles: [], allowUnsigned: false});
      const source = await openBundleSource(${JSON.stringify(b.file)});
      const before = process.memoryUsage().rss;
      const v = await verifyBundle(source, trust);
      console.log(JSON.stringify({before, peak: process.resourceUsage().maxRSS * 1024, bytes: v.bytes}));
    `;
    const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], {encoding: 'utf8'})) as {before: number; peak: number; bytes: number};
    expect(out.bytes).toBeGreaterThan(200 * 1024 * 1024);
    expect(out.peak - out.before).toBeLessThan(150 * 1024 * 1024);
  });
});

const pgAvailable = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/** On a real install: --allow-unsigned lands in the ops log, and dforge.yaml's bundles.trustedKeys is a trusted key. */
describe.skipIf(!pgAvailable)('bundle verify on an install', () => {
  let install: EmbeddedInstall;
  let dir: string;
  let key: SigningKey;

  beforeAll(async () => {
    install = await quickstartInstall();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-bundle-install-'));
    key = await signingKey(dir);
  });
  afterAll(async () => {
    await install?.cleanup();
    await fs.rm(dir, {recursive: true, force: true});
  });

  it('records an unsigned bundle let through by --allow-unsigned as a waived bundle.verify in the ops log', async () => {
    const b = await buildBundle({dir, name: 'unsigned.bundle', key: null});
    const r = await install.cli(['bundle', 'verify', b.file, '--allow-unsigned', '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const seq = (JSON.parse(r.stdout) as {unsigned: {auditedIn: {opsLogSeq: number}}}).unsigned.auditedIn.opsLogSeq;
    const plane = await install.plane();
    try {
      const {rows} = await plane.control.query<{action: string; outcome: string; target: string}>('SELECT action, outcome, target FROM ops_log WHERE seq = $1', [seq]);
      expect(rows).toEqual([{action: 'bundle.verify', outcome: 'waived', target: b.file}]);
    } finally {
      await plane.close();
    }
  });

  it('trusts the keys listed under bundles.trustedKeys in dforge.yaml', async () => {
    const b = await buildBundle({dir, name: 'signed.bundle', key});
    await fs.appendFile(install.dir.configFile, `bundles:\n  trustedKeys:\n    - ${key.publicKeyFile}\n`);
    const r = await install.cli(['bundle', 'verify', b.file, '--json']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as {signer: {publicKeySha256: string}}).signer.publicKeySha256).toBe(key.fingerprint);
  });
});
