import {createHash} from 'node:crypto';
import {readdirSync, readFileSync} from 'node:fs';
import {mkdtemp, readFile, rm} from 'node:fs/promises';
import {tmpdir} from 'node:os';
import path from 'node:path';
import {Readable} from 'node:stream';
import {buffer} from 'node:stream/consumers';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {createHeader, dataKeyWrapper, DecryptStream, EncryptStream, openHeader, parseHeader, type BackupHeader, type FileKeyWrapper} from '../../src/backup/format.js';
import {DforgeError} from '../../src/errors.js';
import {DataKeys, FileDataKeyStore} from '../../src/secrets/data-keys.js';
import {keyCheckValue, unwrap, wrap, type RandomSource} from '../../src/secrets/envelope.js';
import {fileKeySource, LocalMasterKeyring} from '../../src/secrets/master-key.js';
import {SealedStore, sealedSecretContext} from '../../src/secrets/sealed-store.js';
import {InstallDir} from '../../src/state/install-dir.js';

/**
 * docs/test-vectors/ against the implementation, both ways: fixed inputs (the random source
 * injected) produce exactly the stored bytes, and the stored bytes open to the stated plaintext
 * through the code dforge runs. Every negative vector fails as stated, and every single-byte change
 * of a positive vector is rejected by the reader, not only by a byte comparison.
 */

const DIR = path.join(import.meta.dirname, '..', '..', 'docs', 'test-vectors');
const load = <T>(file: string): T => JSON.parse(readFileSync(path.join(DIR, file), 'utf8')) as T;

interface MasterVector {inputs: {material: string; createdAt: string}; expected: {keyCheck: string; keyFile: string; keyringJson: string}}
interface BlobVector {inputs: {masterKey: string; context: string; nonce: string; plaintextUtf8?: string; dataKey?: string; secretName?: string; owner?: string; version?: number}; expected: {fileHex?: string; wrappedHex?: string; length: number}}
interface BackupVector {
  name: string;
  inputs: {wrappingKey: {id: string; version: number; material: string}; header: Omit<BackupHeader, 'keyId' | 'keyVersion' | 'chunkSize'>; fileKey: string; fileKeyNonce: string; plaintext: {length: number; sha256: string}};
  expected: {fileBase64: string; length: number; sha256: string; headerLength: number; headerHex: string; chunks: number; storedChunkLengths: number[]};
}
interface NegativeVector {
  name: string;
  base: string;
  mutation: {kind: 'none'} | {kind: 'truncate'; length: number} | {kind: 'flip'; offset: number; xor: number} | {kind: 'swap'; offsetA: number; offsetB: number; length: number} | {kind: 'context'; context: string};
  wrongKey?: string;
  expect: {error: string; exitCode: number; message: string};
}

const master = load<MasterVector>('master-key.json');
const sealed = load<BlobVector>('sealed-secret.json');
const dataKey = load<BlobVector>('data-key.json');
const backups = ['backup-two-chunk', 'backup-exact-multiple', 'backup-control'].map((n) => load<BackupVector>(`${n}.json`));
const negatives = readdirSync(path.join(DIR, 'negative')).map((f) => load<NegativeVector>(`negative/${f}`));

const hex = (s: string): Buffer => Buffer.from(s, 'hex');
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const pattern = (n: number): Buffer => Buffer.from(Array.from({length: n}, (_, i) => i % 251));
const masterKey = (material = master.inputs.material) => ({id: 'master', version: 1, material: hex(material)});

/** Hands out the vector's random bytes in order; a call dforge makes that the vector does not list fails. */
function fixedRandom(values: string[]): RandomSource & {left: () => number} {
  const queue = values.map(hex);
  const random = (size: number): Buffer => {
    const next = queue.shift();
    if (next?.length !== size) throw new Error(`fixed random source: asked for ${size} bytes, had ${next?.length ?? 'nothing'}`);
    return next;
  };
  return Object.assign(random, {left: () => queue.length});
}

/** Every byte of `bytes` flipped in turn (all of them when `offsets` is not given). */
function* oneByteChanges(bytes: Buffer, offsets: Iterable<number> = bytes.keys()): Generator<[number, Buffer]> {
  for (const offset of offsets) {
    const changed = Buffer.from(bytes);
    changed[offset]! ^= 0x01;
    yield [offset, changed];
  }
}

let root: string;
let dir: InstallDir;
let keyring: LocalMasterKeyring;

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'dforge-vectors-'));
  dir = new InstallDir(root);
  await dir.ensureLayout();
  const random = fixedRandom([master.inputs.material]);
  keyring = (await LocalMasterKeyring.init(dir, fileKeySource(dir, random), new Date(master.inputs.createdAt))).keyring;
  expect(random.left()).toBe(0);
});

afterAll(async () => {
  await rm(root, {recursive: true, force: true});
});

/** Opens a backup as dforge does: parse, authenticate the header, decrypt every chunk. */
async function openBackup(file: Buffer, v: BackupVector, material = v.inputs.wrappingKey.material): Promise<Buffer> {
  const parsed = parseHeader(file, v.name);
  const key = {id: v.inputs.wrappingKey.id, version: v.inputs.wrappingKey.version, material: hex(material)};
  // A control backup is opened through the master keyring, with the keyring's recorded key check
  // value, as src/backup/verify.ts (wrapperFor) does; a tenant backup through its data key.
  const wrapper: FileKeyWrapper =
    parsed.header.kind === 'control' && material === v.inputs.wrappingKey.material
      ? {keyId: 'master', keyVersion: 1, keyCheck: hex(master.expected.keyCheck), wrap: (k, c) => keyring.wrap(k, c), unwrap: (w, c, what) => keyring.unwrap(w, c, what)}
      : dataKeyWrapper(key);
  const payloadKey = await openHeader(parsed, wrapper, v.name);
  return buffer(Readable.from([file.subarray(parsed.length)]).pipe(new DecryptStream(payloadKey, v.name)));
}

async function backupOpensToVector(file: Buffer, v: BackupVector): Promise<boolean> {
  return openBackup(file, v).then(
    (plain) => plain.length === v.inputs.plaintext.length && sha256(plain) === v.inputs.plaintext.sha256,
    () => false,
  );
}

describe('test vector: master key', () => {
  it('keys init with the vector key writes exactly the stored key file and keyring.json, and opens it', async () => {
    expect(await readFile(path.join(root, 'secrets', 'master', 'v1.key'), 'utf8')).toBe(master.expected.keyFile);
    expect(await readFile(path.join(root, 'secrets', 'master', 'keyring.json'), 'utf8')).toBe(master.expected.keyringJson);
    const opened = await LocalMasterKeyring.open(dir, fileKeySource(dir));
    expect((await opened.key(1)).material.toString('hex')).toBe(master.inputs.material);
  });

  it('the key check value pins the key: any one-byte change of the key or of the check value is told apart', () => {
    const check = (material: Buffer, kcv: Buffer): boolean => keyCheckValue(material).equals(kcv);
    expect(check(hex(master.inputs.material), hex(master.expected.keyCheck))).toBe(true);
    for (const [offset, changed] of oneByteChanges(hex(master.inputs.material))) expect(check(changed, hex(master.expected.keyCheck)), `key byte ${offset}`).toBe(false);
    for (const [offset, changed] of oneByteChanges(hex(master.expected.keyCheck))) expect(check(hex(master.inputs.material), changed), `check byte ${offset}`).toBe(false);
  });
});

describe('test vector: sealed secret', () => {
  const bytes = hex(sealed.expected.fileHex!);
  const name = sealed.inputs.secretName!;

  it('wrapping the plaintext with the vector nonce gives exactly the stored file', () => {
    expect(sealedSecretContext(name)).toBe(sealed.inputs.context);
    const out = wrap(masterKey(), Buffer.from(sealed.inputs.plaintextUtf8!), sealedSecretContext(name), fixedRandom([sealed.inputs.nonce]));
    expect(out.toString('hex')).toBe(sealed.expected.fileHex);
    expect(out.length).toBe(sealed.expected.length);
  });

  it('the sealed store opens the stored file to the plaintext, and rejects every one-byte change', async () => {
    await dir.writeSecret(`${name}.sealed`, bytes);
    expect((await new SealedStore(dir, keyring).get(name)).toString('utf8')).toBe(sealed.inputs.plaintextUtf8);
    for (const [offset, changed] of oneByteChanges(bytes)) {
      await expect(keyring.unwrap(changed, sealedSecretContext(name), 'sealed vector'), `byte ${offset}`).rejects.toBeInstanceOf(DforgeError);
    }
  });
});

describe('test vector: wrapped data key (dforge.data_keys.wrapped)', () => {
  const bytes = hex(dataKey.expected.wrappedHex!);

  it('wrapping the data key with the vector nonce gives exactly the stored bytes', () => {
    const out = wrap(masterKey(), hex(dataKey.inputs.dataKey!), dataKey.inputs.context, fixedRandom([dataKey.inputs.nonce]));
    expect(out.toString('hex')).toBe(dataKey.expected.wrappedHex);
  });

  it('DataKeys opens the stored row to the data key, and every one-byte change is rejected', async () => {
    const store = new FileDataKeyStore(dir);
    await store.replace([{owner: dataKey.inputs.owner!, version: dataKey.inputs.version!, state: 'active', createdAt: '2026-01-01T00:00:00.000Z', wrapped: bytes}]);
    expect((await new DataKeys(store, keyring).get(dataKey.inputs.owner!, dataKey.inputs.version!)).material.toString('hex')).toBe(dataKey.inputs.dataKey);
    for (const [offset, changed] of oneByteChanges(bytes)) {
      await expect(keyring.unwrap(changed, dataKey.inputs.context, 'data key vector'), `byte ${offset}`).rejects.toBeInstanceOf(DforgeError);
    }
  });
});

describe.each(backups)('test vector: $name', (v) => {
  const file = Buffer.from(v.expected.fileBase64, 'base64');

  it('the stored file is what its JSON says (length, SHA-256, header bytes, chunk lengths)', () => {
    expect(file.length).toBe(v.expected.length);
    expect(sha256(file)).toBe(v.expected.sha256);
    expect(file.subarray(0, v.expected.headerLength).toString('hex')).toBe(v.expected.headerHex);
    expect(v.expected.headerLength + v.expected.storedChunkLengths.reduce((a, b) => a + b, 0)).toBe(file.length);
    expect(sha256(pattern(v.inputs.plaintext.length))).toBe(v.inputs.plaintext.sha256);
  });

  it('the encoder, given the vector file key and nonce, writes exactly the stored file', async () => {
    const random = fixedRandom([v.inputs.fileKey, v.inputs.fileKeyNonce]);
    const {id, version, material} = v.inputs.wrappingKey;
    const header = await createHeader(v.inputs.header, dataKeyWrapper({id, version, material: hex(material)}, random), random);
    const out = await buffer(Readable.from([pattern(v.inputs.plaintext.length)]).pipe(new EncryptStream(header)));
    expect(random.left()).toBe(0);
    expect(out.equals(file)).toBe(true);
  });

  it('the reader opens the stored file to the stated dump bytes', async () => {
    expect(await backupOpensToVector(file, v)).toBe(true);
  });

  it('the reader rejects a one-byte change anywhere: every header byte, and the first, a middle and the last byte of every stored chunk', async () => {
    const offsets = new Set<number>(Array.from({length: v.expected.headerLength}, (_, i) => i));
    let start = v.expected.headerLength;
    for (const len of v.expected.storedChunkLengths) {
      for (const o of [start, start + Math.floor(len / 2), start + len - 17, start + len - 16, start + len - 1]) offsets.add(o);
      start += len;
    }
    for (const [offset, changed] of oneByteChanges(file, offsets)) expect(await backupOpensToVector(changed, v), `byte ${offset}`).toBe(false);
  });
});

const byName = new Map<string, Buffer>([
  ['sealed-secret', hex(sealed.expected.fileHex!)],
  ['data-key', hex(dataKey.expected.wrappedHex!)],
  ...backups.map((v): [string, Buffer] => [v.name, Buffer.from(v.expected.fileBase64, 'base64')]),
]);

function mutate(bytes: Buffer, m: NegativeVector['mutation']): Buffer {
  const out = Buffer.from(bytes);
  switch (m.kind) {
    case 'truncate':
      return out.subarray(0, m.length);
    case 'flip':
      out[m.offset]! ^= m.xor;
      return out;
    case 'swap':
      bytes.copy(out, m.offsetA, m.offsetB, m.offsetB + m.length);
      bytes.copy(out, m.offsetB, m.offsetA, m.offsetA + m.length);
      return out;
    default:
      return out;
  }
}

describe('negative test vectors', () => {
  it('covers truncation, reordering, flipped header, chunk and tag bytes, and a wrong key', () => {
    expect(negatives.map((n) => n.mutation.kind).sort()).toEqual(expect.arrayContaining(['truncate', 'swap', 'flip', 'none']));
    expect(negatives.filter((n) => n.wrongKey).length).toBeGreaterThanOrEqual(2);
  });

  it.each(negatives.map((n) => [n.name, n] as const))('%s fails as stated', async (_name, n) => {
    const bytes = mutate(byName.get(n.base)!, n.mutation);
    const backup = backups.find((v) => v.name === n.base);
    const context = n.mutation.kind === 'context' ? n.mutation.context : n.base === 'sealed-secret' ? sealed.inputs.context : dataKey.inputs.context;
    const what = n.base === 'sealed-secret' ? `sealed secret ${sealed.inputs.secretName}` : n.base;
    // A wrong master key is one whose material differs under the same id and version.
    const attempt = backup
      ? openBackup(bytes, backup, n.wrongKey)
      : n.wrongKey
        ? Promise.resolve().then(() => unwrap(masterKey(n.wrongKey), bytes, context, what))
        : keyring.unwrap(bytes, context, what);
    const err = await attempt.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, 'it must fail').toBeInstanceOf(DforgeError);
    expect((err as DforgeError).constructor.name).toBe(n.expect.error);
    expect((err as DforgeError).exitCode).toBe(n.expect.exitCode);
    expect((err as Error).message).toContain(n.expect.message);
  });
});
