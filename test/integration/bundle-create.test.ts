import {execFileSync, spawn} from 'node:child_process';
import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type Docker from 'dockerode';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {createBundle} from '../../src/bundle/create.js';
import {parseBundleManifest, parsePartsIndex, type BundleManifest} from '../../src/bundle/manifest.js';
import {readSigningKey} from '../../src/bundle/signing.js';
import {BLOCK, decodeEntryHeader, paddedSize} from '../../src/bundle/tar-blocks.js';
import {cliEntry, runCli} from '../helpers/cli.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {ensureTestImages} from '../helpers/test-images.js';

const unavailable = await dockerUnavailableReason();
const BASE = 'dforge-test/base:bookworm';
const POSTGRES = 'dforge-test/postgres:15';
const PROXY = 'dforge-test/proxy:1';

interface TarEntry {
  readonly path: string;
  readonly size: number;
  readonly mode: number;
  readonly typeKey: string;
  readonly sha256: string;
}

/** Walks a bundle's outer tar header by header, hashing each entry's content in bounded chunks. */
async function readEntries(file: string): Promise<TarEntry[]> {
  const handle = await fs.open(file, 'r');
  const entries: TarEntry[] = [];
  try {
    let at = 0;
    const chunk = Buffer.alloc(4 * 1024 * 1024);
    for (;;) {
      const block = Buffer.alloc(BLOCK);
      await handle.read(block, 0, BLOCK, at);
      const h = decodeEntryHeader(block);
      if (h.nullBlock) break;
      expect(h.cksumValid).toBe(true);
      const hash = createHash('sha256');
      for (let done = 0; done < h.size; ) {
        const n = Math.min(chunk.length, h.size - done);
        await handle.read(chunk, 0, n, at + BLOCK + done);
        hash.update(chunk.subarray(0, n));
        done += n;
      }
      entries.push({path: h.path, size: h.size, mode: h.mode, typeKey: h.typeKey, sha256: hash.digest('hex')});
      at += BLOCK + paddedSize(h.size);
    }
  } finally {
    await handle.close();
  }
  return entries;
}

const sha256File = (file: string): string => execFileSync('sha256sum', [file]).toString().split(' ')[0]!;

/**
 * `bundle keygen` and `bundle create` against the real engine and the dforge-test images (which
 * share dforge-test/base:bookworm), judged by outside tools: tar, skopeo, openssl.
 */
describe.skipIf(unavailable !== undefined)('bundle create', () => {
  let docker: Docker;
  let work: string;
  let keyFile: string;
  let pubFile: string;
  let exe: string;
  let bundle: string;
  let manifest: BundleManifest;
  let entries: TarEntry[];

  beforeAll(async () => {
    docker = await connectDocker();
    await ensureTestImages(docker);
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-bundle-'));
    exe = path.join(work, 'fake-dforge');
    await fs.writeFile(exe, '#!/bin/sh\necho dforge\n');
    const keygen = await runCli(['bundle', 'keygen', '--out', path.join(work, 'keys'), '--json']);
    expect(keygen.code, keygen.stderr).toBe(0);
    keyFile = path.join(work, 'keys', 'bundle-signing.key');
    pubFile = path.join(work, 'keys', 'bundle-signing.pub');
    await fs.writeFile(path.join(work, 'base.txt'), `${BASE}\n`);
    await fs.writeFile(path.join(work, 'images.txt'), `# the base and one image on it\n${BASE}\n- ${POSTGRES}\n`);
    bundle = path.join(work, 'main.bundle');
    const created = await runCli(['bundle', 'create', '--release', '9.9.9', '--images', path.join(work, 'images.txt'), '--key', keyFile, '--executable', exe, '--out', bundle, '--json']);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stderr).toMatch(/from the engine: [0-9.]+ MiB of ~?[0-9.]+ MiB \([0-9]+%\), [0-9.]+ MiB\/s/);
    execFileSync('tar', ['-C', work, '-xf', bundle, 'bundle.json', 'bundle.json.sig']);
    manifest = parseBundleManifest(await fs.readFile(path.join(work, 'bundle.json')), 'bundle.json');
    entries = await readEntries(bundle);
  }, 600_000);

  afterAll(async () => {
    if (work) await fs.rm(work, {recursive: true, force: true});
  });

  it('keygen writes a 0600 private key in a 0700 directory and never replaces it', async () => {
    expect((await fs.stat(keyFile)).mode & 0o777).toBe(0o600);
    expect((await fs.stat(path.dirname(keyFile))).mode & 0o777).toBe(0o700);
    const before = await fs.readFile(keyFile);
    const again = await runCli(['bundle', 'keygen', '--out', path.join(work, 'keys')]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('bundle-signing.key already exists');
    expect((await fs.readFile(keyFile)).equals(before)).toBe(true);
  });

  it('the tar holds exactly the entries bundle.json lists, in order, then bundle.json and its signature', () => {
    expect(entries.every((e) => e.typeKey === '0')).toBe(true);
    expect(entries.slice(0, -2).map(({path: p, size, sha256, mode}) => ({path: p, size, sha256, mode}))).toEqual(manifest.entries.map(({path: p, size, sha256, mode}) => ({path: p, size, sha256, mode})));
    expect(entries.slice(-2).map((e) => e.path)).toEqual(['bundle.json', 'bundle.json.sig']);
    expect(entries[0]!.path).toBe('oci/oci-layout');
    const kinds = manifest.entries.map((e) => e.kind);
    expect(kinds.join(',')).toMatch(/^oci-layout,(blob,)+oci-index,(sbom,)+(template,)+executable$/);
    expect(manifest.entries.some((e) => e.path.startsWith('templates/compose/')) && manifest.entries.some((e) => e.path.startsWith('templates/k8s/'))).toBe(true);
    expect(manifest.entries.some((e) => /readme/i.test(e.path))).toBe(false);
    expect(manifest.entries.at(-1)).toMatchObject({path: 'dforge', mode: 0o755});
  });

  it('every blob is stored once, its sha256 is its name, and configs and layers are the engine’s own', async () => {
    const blobs = entries.filter((e) => e.path.startsWith('oci/blobs/sha256/'));
    expect(new Set(blobs.map((e) => e.path)).size).toBe(blobs.length);
    for (const b of blobs) expect(b.path).toBe(`oci/blobs/sha256/${b.sha256}`);
    for (const image of manifest.images) {
      const info = await docker.getImage(image.ref).inspect();
      expect(image.config.digest).toBe(info.Id);
      expect(image.layers.map((l) => l.digest)).toEqual(info.RootFS.Layers);
    }
    // The shared base layer is in both images and in the tar once.
    const [base, pg] = manifest.images;
    expect(pg!.layers[0]!.digest).toBe(base!.layers[0]!.digest);
    expect(blobs.filter((b) => `sha256:${b.sha256}` === base!.layers[0]!.digest)).toHaveLength(1);
  });

  it('openssl accepts the signature and the signer is the key’s fingerprint', async () => {
    execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', pubFile, '-rawin', '-in', path.join(work, 'bundle.json'), '-sigfile', path.join(work, 'bundle.json.sig')]);
    expect(manifest.signer?.publicKeySha256).toBe((await readSigningKey(keyFile)).fingerprint);
  });

  it('skopeo reads the OCI layout and copies an image out of it', async () => {
    const dir = path.join(work, 'x');
    await fs.mkdir(dir);
    execFileSync('tar', ['-C', dir, '-xf', bundle, 'oci/']);
    const inspect = JSON.parse(execFileSync('skopeo', ['inspect', `oci:${dir}/oci:${POSTGRES}`]).toString()) as {Digest: string; Layers: string[]};
    expect(inspect.Digest).toBe(manifest.images[1]!.manifest.digest);
    const archive = path.join(work, 'base.tar');
    execFileSync('skopeo', ['copy', '--quiet', `oci:${dir}/oci:${BASE}`, `docker-archive:${archive}:${BASE}`]);
    expect((await fs.stat(archive)).size).toBeGreaterThan(manifest.images[0]!.layers[0]!.size);
  });

  it('the SBOM of the postgres image lists postgresql-15 with a Debian purl', async () => {
    const pg = manifest.images.find((i) => i.ref === POSTGRES)!;
    expect(pg.sbom).toBe(`sbom/dforge-test_postgres_15-${pg.config.digest.slice(7, 19)}.cdx.json`);
    const text = execFileSync('tar', ['-xOf', bundle, pg.sbom!]).toString();
    const bom = JSON.parse(text) as {specVersion: string; components: Array<{name: string; purl: string}>};
    expect(bom.specVersion).toBe('1.5');
    const component = bom.components.find((c) => c.name === 'postgresql-15');
    expect(component?.purl).toMatch(/^pkg:deb\/debian\/postgresql-15@[^?]+\?arch=/);
  });

  it('two tags of one image share one SBOM file', async () => {
    const alias = 'dforge-test/postgres:15-sbom-alias';
    await docker.getImage(POSTGRES).tag({repo: 'dforge-test/postgres', tag: '15-sbom-alias'});
    try {
      const out = path.join(work, 'alias.bundle');
      await createBundle(docker, {release: '9.9.9', images: [POSTGRES, alias], key: undefined, executable: exe, force: false, dforgeVersion: 'test', progress: () => {}, out});
      const json = parseBundleManifest(execFileSync('tar', ['-xOf', out, 'bundle.json']), 'bundle.json');
      expect(json.images.map((i) => i.ref)).toEqual([POSTGRES, alias]);
      expect(json.images[0]!.sbom).toBeDefined();
      expect(json.images[1]!.sbom).toBe(json.images[0]!.sbom);
      expect(json.entries.filter((e) => e.kind === 'sbom').map((e) => e.path)).toEqual([json.images[0]!.sbom]);
      await fs.rm(out);
    } finally {
      await docker.getImage(alias).remove({noprune: true});
    }
  }, 300_000);

  it('refuses to run without --key unless --unsigned is explicit, and never replaces a bundle', async () => {
    const noKey = await runCli(['bundle', 'create', '--release', '9.9.9', '--images', path.join(work, 'images.txt'), '--executable', exe, '--out', path.join(work, 'nokey.bundle')]);
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain('--unsigned');
    const again = await runCli(['bundle', 'create', '--release', '9.9.9', '--images', path.join(work, 'images.txt'), '--key', keyFile, '--executable', exe, '--out', bundle]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('already exists');
    const missing = path.join(work, 'missing.txt');
    await fs.writeFile(missing, 'dforge-test/not-built:0\n');
    const absent = await runCli(['bundle', 'create', '--release', '9.9.9', '--images', missing, '--unsigned', '--executable', exe, '--out', path.join(work, 'absent.bundle')]);
    expect(absent.code).toBe(1);
    expect(absent.stderr).toContain('dforge-test/not-built:0 is not in the Docker engine');
    expect((await fs.readdir(work)).filter((n) => n.includes('nokey') || n.includes('absent'))).toEqual([]);
  });

  it('--split parts concatenate to the unsplit bundle, and parts.json names their hashes', async () => {
    const key = await readSigningKey(keyFile);
    const now = (): Date => new Date('2025-06-01T12:00:00Z');
    const common = {release: '9.9.9', images: [BASE, PROXY], key, executable: exe, force: false, dforgeVersion: 'test', now, progress: () => {}};
    const whole = path.join(work, 'whole.bundle');
    const parts = path.join(work, 'split.bundle');
    await createBundle(docker, {...common, out: whole});
    const result = await createBundle(docker, {...common, out: parts, splitBytes: 50 * 1024 * 1024});
    const index = parsePartsIndex(await fs.readFile(`${parts}.parts.json`), 'parts.json');
    expect(index.parts.length).toBeGreaterThan(2);
    expect(result.parts?.files).toHaveLength(index.parts.length);
    for (const [i, p] of index.parts.entries()) {
      const file = path.join(work, p.name);
      expect(p.name).toBe(`split.bundle.${String(i + 1).padStart(3, '0')}`);
      expect(sha256File(file)).toBe(p.sha256);
      if (i < index.parts.length - 1) expect(p.size).toBe(50 * 1024 * 1024);
    }
    const joined = path.join(work, 'joined.bundle');
    execFileSync('sh', ['-c', `cat "${parts}".0* > "${joined}"`]);
    expect(sha256File(joined)).toBe(sha256File(whole));
    execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', pubFile, '-rawin', '-in', `${parts}.parts.json`, '-sigfile', `${parts}.parts.json.sig`]);
    await fs.rm(joined);
  }, 300_000);

  it('--force removes what the replaced bundle leaves behind: its signature, extra parts, the other layout', async () => {
    const key = await readSigningKey(keyFile);
    const common = {release: '9.9.9', images: [BASE], executable: exe, dforgeVersion: 'test', progress: () => {}};
    const out = path.join(work, 'forced.bundle');
    const ours = async (): Promise<string[]> => (await fs.readdir(work)).filter((n) => n.startsWith('forced.bundle')).sort();
    const partNames = (n: number): string[] => Array.from({length: n}, (_, i) => `forced.bundle.${String(i + 1).padStart(3, '0')}`);

    await createBundle(docker, {...common, key, out, force: false, splitBytes: 8 * 1024 * 1024});
    const many = parsePartsIndex(await fs.readFile(`${out}.parts.json`), 'parts.json').parts.length;
    expect(many).toBeGreaterThan(3);
    expect(await ours()).toContain('forced.bundle.parts.json.sig');

    // Unsigned, fewer parts: the old signature and the parts past the new count must go.
    await createBundle(docker, {...common, key: undefined, out, force: true, splitBytes: 64 * 1024 * 1024});
    const few = parsePartsIndex(await fs.readFile(`${out}.parts.json`), 'parts.json');
    expect(few.signer).toBeNull();
    expect(few.parts.length).toBeLessThan(many);
    expect(await ours()).toEqual([...partNames(few.parts.length), 'forced.bundle.parts.json']);
    const joined = path.join(work, 'forced-joined');
    execFileSync('sh', ['-c', `cat "${out}".0* > "${joined}"`]);
    expect(execFileSync('tar', ['-xOf', joined, 'bundle.json']).length).toBeGreaterThan(0);
    await fs.rm(joined);

    // Unsplit over split: no parts or index stay beside the new file.
    await createBundle(docker, {...common, key, out, force: true});
    expect(await ours()).toEqual(['forced.bundle']);

    // Split over unsplit: the old single file goes.
    await createBundle(docker, {...common, key, out, force: true, splitBytes: 64 * 1024 * 1024});
    const again = parsePartsIndex(await fs.readFile(`${out}.parts.json`), 'parts.json');
    expect(await ours()).toEqual([...partNames(again.parts.length), 'forced.bundle.parts.json', 'forced.bundle.parts.json.sig']);
  }, 600_000);

  it('refuses a split that would need more than 999 parts before writing anything, naming a size that works', async () => {
    // A sparse 1 GiB executable makes the estimate exceed 999 parts of 1M.
    const bigExe = path.join(work, 'big-exe');
    await fs.writeFile(bigExe, '');
    await fs.truncate(bigExe, 1024 ** 3);
    const out = path.join(work, 'capped.bundle');
    const res = await runCli(['bundle', 'create', '--release', '1', '--images', path.join(work, 'base.txt'), '--unsigned', '--executable', bigExe, '--out', out, '--split', '1M']);
    await fs.rm(bigExe);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('at most 999');
    expect(res.stderr).toMatch(/--split [0-9]+M/);
    expect((await fs.readdir(work)).filter((n) => n.includes('capped'))).toEqual([]);
  }, 120_000);

  it('--since leaves out the blobs the base bundle holds and names them', async () => {
    const delta = path.join(work, 'delta.bundle');
    await fs.writeFile(path.join(work, 'proxy.txt'), `${PROXY}\n`);
    const res = await runCli(['bundle', 'create', '--release', '9.9.10', '--images', path.join(work, 'proxy.txt'), '--key', keyFile, '--executable', exe, '--out', delta, '--since', path.join(work, 'bundle.json'), '--json']);
    expect(res.code, res.stderr).toBe(0);
    const deltaJson = parseBundleManifest(execFileSync('tar', ['-xOf', delta, 'bundle.json']), 'delta bundle.json');
    const baseLayer = manifest.images[0]!.layers[0]!.digest;
    expect(deltaJson.base).toMatchObject({release: '9.9.9', bundleJsonSha256: sha256File(path.join(work, 'bundle.json'))});
    expect(deltaJson.base!.omittedBlobs).toContain(baseLayer);
    const deltaEntries = await readEntries(delta);
    expect(deltaEntries.some((e) => e.path === `oci/blobs/sha256/${baseLayer.slice(7)}`)).toBe(false);
    // The proxy's own layers are there.
    expect(deltaJson.images[0]!.layers.slice(1).every((l) => deltaEntries.some((e) => e.path === `oci/blobs/sha256/${l.digest.slice(7)}`))).toBe(true);
  }, 300_000);

  it('a create killed mid-stream leaves no file under the bundle name, and the next create works', async () => {
    const out = path.join(work, 'killed.bundle');
    const args = ['bundle', 'create', '--release', '1', '--images', path.join(work, 'base.txt'), '--unsigned', '--executable', exe, '--out', out];
    const child = spawn(process.execPath, [cliEntry, ...args], {stdio: 'ignore'});
    // Wait until the stream is well under way, then kill without a chance to clean up.
    for (let i = 0; i < 600; i++) {
      const temp = (await fs.readdir(work)).find((n) => n.startsWith('.killed.bundle.') && n.endsWith('.incomplete'));
      const size = temp ? await fs.stat(path.join(work, temp, 'killed.bundle')).then((s) => s.size, () => 0) : 0;
      if (size > 20 * 1024 * 1024) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const names = await fs.readdir(work);
    expect(names).not.toContain('killed.bundle');
    expect(names.filter((n) => n.includes('killed'))).toEqual([expect.stringMatching(/^\.killed\.bundle\.[0-9a-f]{12}\.incomplete$/)]);
    const next = await runCli(args);
    expect(next.code, next.stderr).toBe(0);
    expect(await readEntries(out)).toContainEqual(expect.objectContaining({path: 'dforge'}));
  }, 300_000);
});
