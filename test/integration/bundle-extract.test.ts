import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {locateEntries, openVerifiedEntry} from '../../src/bundle/entries.js';
import {extractVerified} from '../../src/bundle/extract.js';
import {LIMITS, blobPath, type BundleEntry} from '../../src/bundle/manifest.js';
import {openBundleSource} from '../../src/bundle/source.js';
import {bundleTrustFrom, type BundleTrust} from '../../src/bundle/trust.js';
import type {VerifiedBundle} from '../../src/bundle/verified-bundle.js';
import {verifyBundle} from '../../src/bundle/verify.js';
import {VerificationError} from '../../src/errors.js';
import {buildBundle, contentOffset, flipByte, signingKey, type FixtureEntry, type SigningKey} from '../helpers/bundle-fixture.js';
import {runCli} from '../helpers/cli.js';

/**
 * Hostile archives: every name and entry type a malicious bundle could use to write outside the
 * target, or over something it must not, is refused at verify already (the header pass) and again
 * by extraction itself, naming the entry, with nothing written inside or outside the target.
 */
describe('bundle extraction', () => {
  let dir: string;
  let key: SigningKey;
  let trust: BundleTrust;
  let n = 0;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-bundle-extract-'));
    key = await signingKey(dir);
    trust = await bundleTrustFrom({trustedKeyFiles: [key.publicKeyFile], configuredKeyFiles: [], allowUnsigned: false});
  });
  afterAll(async () => {
    await fs.rm(dir, {recursive: true, force: true});
  });

  const sub = async (): Promise<string> => {
    const d = path.join(dir, `case-${++n}`);
    await fs.mkdir(d);
    return d;
  };
  const verified = async (extra: FixtureEntry[] = []): Promise<{v: VerifiedBundle; file: string}> => {
    const b = await buildBundle({dir: await sub(), key, extra});
    return {v: await verifyBundle(await openBundleSource(b.file), trust), file: b.file};
  };
  const refusal = async (p: Promise<unknown>): Promise<VerificationError> => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VerificationError);
    return err as VerificationError;
  };
  const listAll = async (d: string): Promise<string[]> => (await fs.readdir(d, {recursive: true})).map(String).sort();

  const hostileHeaders: Array<[string, FixtureEntry[], string]> = [
    ['symlink', [{path: 'templates/link', kind: 'template', content: Buffer.alloc(0), header: {type: 'SymbolicLink', linkpath: '/etc/passwd'}}], 'templates/link'],
    ['hard link', [{path: 'templates/hard', kind: 'template', content: Buffer.alloc(0), header: {type: 'Link', linkpath: 'dforge'}}], 'templates/hard'],
    ['character device', [{path: 'templates/tty', kind: 'template', content: Buffer.alloc(0), header: {type: 'CharacterDevice'}}], 'templates/tty'],
    ['FIFO', [{path: 'templates/fifo', kind: 'template', content: Buffer.alloc(0), header: {type: 'FIFO'}}], 'templates/fifo'],
    ['absolute path', [{path: '/templates/x', kind: 'template', content: Buffer.from('x'), header: {}}], '/templates/x'],
    ["'..'", [{path: 'templates/../../etc/cron.d/x', kind: 'template', content: Buffer.from('x'), header: {}}], 'templates/../../etc/cron.d/x'],
    ['backslash', [{path: 'templates\\..\\x', kind: 'template', content: Buffer.from('x'), header: {}}], 'templates\\..\\x'],
    ['drive letter', [{path: 'C:templates/x', kind: 'template', content: Buffer.from('x'), header: {}}], 'C:templates/x'],
    ['setuid', [{path: 'templates/suid', kind: 'template', content: Buffer.from('x'), header: {mode: 0o4755}}], 'templates/suid'],
    ['setgid', [{path: 'templates/sgid', kind: 'template', content: Buffer.from('x'), header: {mode: 0o2755}}], 'templates/sgid'],
    // Non-ASCII is refused outright, so the first of an NFC-colliding pair is already named.
    ['non-ASCII (NFC-colliding) name', [{path: 'templates/caf\u00E9', kind: 'template', content: Buffer.from('a'), header: {}}, {path: 'templates/cafe\u0301', kind: 'template', content: Buffer.from('b'), header: {}}], 'templates/caf\u00E9'],
    ['case-fold collision', [{path: 'templates/A', kind: 'template', content: Buffer.from('a')}, {path: 'templates/a', kind: 'template', content: Buffer.from('b')}], 'templates/a'],
    ['depth', [{path: `templates/${'d/'.repeat(LIMITS.depth)}f`, kind: 'template', content: Buffer.from('x')}], `templates/${'d/'.repeat(LIMITS.depth)}f`],
  ];

  for (const [what, extra, named] of hostileHeaders) {
    it(`refuses a ${what} entry at verify, naming it (even though bundle.json lists and signs it)`, async () => {
      const b = await buildBundle({dir: await sub(), key, extra});
      const err = await refusal(verifyBundle(await openBundleSource(b.file), trust));
      expect(err.message).toContain(JSON.stringify(named));
      expect(err.exitCode).toBe(6);
    });
  }

  it('refuses a name with NUL at verify: the header cannot carry it, so it is not the signed entry', async () => {
    const b = await buildBundle({dir: await sub(), key, extra: [{path: 'templates/a\0b', kind: 'template', content: Buffer.from('x')}]});
    const err = await refusal(verifyBundle(await openBundleSource(b.file), trust));
    expect(err.message).toMatch(/templates\/a/);
  });

  // Extraction checks again on its own: a VerifiedBundle whose manifest names a hostile path for a
  // real template's bytes (same size and hash, so only the name rules can stop it).
  const renamed = (v: VerifiedBundle, rename: (e: BundleEntry) => BundleEntry | BundleEntry[]): VerifiedBundle => ({...v, manifest: {...v.manifest, entries: v.manifest.entries.flatMap((e) => rename(e))}});
  const hostileNames: Array<[string, string]> = [
    ['absolute', '/tmp/dforge-owned'],
    ['..', 'templates/../../dforge-owned'],
    ['backslash', 'templates\\x'],
    ['NUL', 'templates/a\0b'],
    ['drive letter', 'C:/x'],
    ['too deep', `templates/${'d/'.repeat(LIMITS.depth)}f`],
  ];
  for (const [what, name] of hostileNames) {
    it(`extraction refuses a ${what} name by itself, writing nothing`, async () => {
      const {v} = await verified();
      const target = path.join(await sub(), 'target');
      const hostile = renamed(v, (e) => (e.path === 'templates/k8s/app.yaml' ? {...e, path: name} : e));
      const err = await refusal(extractVerified(hostile, target, (e) => e.kind === 'template'));
      expect(err.message).toContain(JSON.stringify(name));
      expect(await listAll(path.dirname(target)).catch(() => [])).toEqual([]);
      await expect(fs.stat('/tmp/dforge-owned')).rejects.toThrow();
    });
  }

  it('extraction refuses collisions after NFC and case folding, a blob, and setuid modes, writing nothing', async () => {
    const {v} = await verified();
    const target = path.join(await sub(), 'target');
    const app = v.manifest.entries.find((e) => e.path === 'templates/k8s/app.yaml')!;
    for (const [hostile, named] of [
      [renamed(v, (e) => (e === app ? [{...e, path: 'templates/caf\u00E9'}, {...e, path: 'templates/cafe\u0301'}] : e)), 'templates/caf\u00E9'],
      [renamed(v, (e) => (e === app ? [{...e, path: 'templates/Readme'}, {...e, path: 'templates/README'}] : e)), 'templates/README'],
      [renamed(v, (e) => (e === app ? {...e, mode: 0o4755 as 0o755} : e)), 'templates/k8s/app.yaml'],
    ] as const) {
      const err = await refusal(extractVerified(hostile, target, (e) => e.kind === 'template'));
      expect(err.message).toContain(JSON.stringify(named));
    }
    const blob = v.manifest.entries.find((e) => e.kind === 'blob')!;
    const err = await refusal(extractVerified(v, target, (e) => e.path === blob.path));
    expect(err.message).toContain(blob.path);
    expect(await listAll(path.dirname(target))).toEqual([]);
  });

  it('extraction refuses more entries than the limit before writing any', async () => {
    const {v} = await verified();
    const app = v.manifest.entries.find((e) => e.path === 'templates/k8s/app.yaml')!;
    const many = renamed(v, (e) => (e === app ? Array.from({length: LIMITS.entries + 1}, (_, i) => ({...e, path: `templates/many/${i}`})) : e));
    const target = path.join(await sub(), 'target');
    const err = await refusal(extractVerified(many, target, (e) => e.kind === 'template'));
    expect(err.message).toMatch(/more than 100000 entries/);
    expect(await listAll(path.dirname(target))).toEqual([]);
  });

  it('never writes through a symlink planted in the target', async () => {
    const {v} = await verified();
    const base = await sub();
    const outside = path.join(base, 'outside');
    const target = path.join(base, 'target');
    await fs.mkdir(outside);
    await fs.mkdir(target);
    await fs.symlink(outside, path.join(target, 'templates'));
    const err = await refusal(extractVerified(v, target, (e) => e.kind === 'template'));
    expect(err.message).toMatch(/symbolic link/);
    expect(await fs.readdir(outside)).toEqual([]);
    await fs.rm(path.join(target, 'templates'));
    await fs.mkdir(path.join(target, 'templates', 'k8s'), {recursive: true});
    await fs.symlink(path.join(outside, 'planted'), path.join(target, 'templates', 'k8s', 'app.yaml'));
    await refusal(extractVerified(v, target, (e) => e.kind === 'template'));
    expect(await fs.readdir(outside)).toEqual([]);
  });

  it('extracts templates and the executable with their modes and bytes', async () => {
    const {v} = await verified();
    const target = path.join(await sub(), 'target');
    const written = await extractVerified(v, target, (e) => e.kind === 'template' || e.kind === 'executable');
    expect(written).toEqual(['templates/compose/docker-compose.yml', 'templates/k8s/app.yaml', 'dforge']);
    expect(await fs.readFile(path.join(target, 'templates/k8s/app.yaml'), 'utf8')).toBe('kind: Deployment\n');
    expect((await fs.stat(path.join(target, 'dforge'))).mode & 0o7777).toBe(0o755);
    expect((await fs.stat(path.join(target, 'templates/k8s/app.yaml'))).mode & 0o7777).toBe(0o644);
    expect(await listAll(target)).toEqual(['dforge', 'templates', 'templates/compose', 'templates/compose/docker-compose.yml', 'templates/k8s', 'templates/k8s/app.yaml']);
  });

  it('holds back the last chunk of an entry changed after verify: the consumer never gets all its bytes', async () => {
    const big = randomBytes(3 * 1024 * 1024 + 17);
    const b = await buildBundle({dir: await sub(), key, images: [{ref: 'dforge/app:1', layers: [big]}]});
    const v = await verifyBundle(await openBundleSource(b.file), trust);
    const layer = locateEntries(v.manifest).find((e) => e.path === blobPath(v.manifest.images[0]!.layers[0]!.digest))!;
    await flipByte(b.file, contentOffset(b, layer.path) + big.length - 5);
    let received = 0;
    const err = await refusal(
      (async () => {
        for await (const chunk of openVerifiedEntry(v, layer) as AsyncIterable<Buffer>) received += chunk.length;
      })(),
    );
    expect(err.message).toContain(layer.path);
    expect(received).toBeLessThan(big.length);

    // And extraction of a template changed after verify leaves nothing behind, not even a temp file.
    const app = locateEntries(v.manifest).find((e) => e.path === 'templates/k8s/app.yaml')!;
    await flipByte(b.file, app.contentOffset);
    const target = path.join(await sub(), 'target');
    const err2 = await refusal(extractVerified(v, target, (e) => e.path === app.path));
    expect(err2.message).toContain(app.path);
    expect(await listAll(target)).toEqual(['templates', 'templates/k8s']);
  });

  it('bundle extract writes the executable (0755) and templates of a verified bundle; a changed executable writes nothing (exit 6)', async () => {
    const b = await buildBundle({dir: await sub(), key});
    const out = path.join(path.dirname(b.file), 'out');
    const cli = (file: string, target: string) => runCli(['bundle', 'extract', file, '--trusted-key', key.publicKeyFile, '--out', target, '--dir', path.join(dir, 'no-install'), '--json']);
    const r = await cli(b.file, out);
    expect(r.code, r.stderr).toBe(0);
    const written = (JSON.parse(r.stdout) as {written: string[]}).written;
    expect(written).toContain('dforge');
    expect(written.every((w) => w === 'dforge' || w.startsWith('templates/'))).toBe(true);
    expect((await fs.stat(path.join(out, 'dforge'))).mode & 0o7777).toBe(0o755);

    await flipByte(b.file, contentOffset(b, 'dforge'));
    const bad = path.join(path.dirname(b.file), 'bad');
    const refused = await cli(b.file, bad);
    expect(refused.code).toBe(6);
    expect(refused.stdout).toContain('dforge');
    await expect(fs.stat(bad)).rejects.toThrow();
  });
});
