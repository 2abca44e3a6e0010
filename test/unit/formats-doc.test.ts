import {createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {Readable} from 'node:stream';
import {buffer} from 'node:stream/consumers';

import {describe, expect, it} from 'vitest';

import {CHUNK_SIZE, CONTROL_OWNER, createHeader, dataKeyWrapper, EncryptStream} from '../../src/backup/format.js';
import {wrap} from '../../src/secrets/envelope.js';
import {fileKeySource, LocalMasterKeyring} from '../../src/secrets/master-key.js';
import {InstallDir} from '../../src/state/install-dir.js';

/**
 * docs/formats.md must be enough, alone, to write a reader. These readers are written from the
 * document with node:crypto only (no dforge decoding code), and must open what dforge writes; the
 * document's tables must name exactly the fields the code writes. A change to either side that the
 * other does not follow fails here.
 */

const doc = await fs.readFile(new URL('../../docs/formats.md', import.meta.url), 'utf8');

/** The rows of the markdown table whose header row starts with `first`: first cell of each row, backticks removed. */
function tableKeys(first: string): string[] {
  const lines = doc.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`| ${first} |`));
  expect(start, `a table starting with "${first}" in formats.md`).toBeGreaterThanOrEqual(0);
  const keys: string[] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    keys.push(...line.split('|')[1]!.split(',').map((c) => c.trim().replaceAll('`', '')));
  }
  return keys;
}

/** "Wrapped key (DFWK)", as the document describes it. */
function docUnwrap(blob: Buffer, key: Buffer, context: string): Buffer {
  expect(blob.subarray(0, 4).toString('latin1')).toBe('DFWK');
  expect(blob[4]).toBe(1);
  const L = blob[5]!;
  const check = createHmac('sha256', key).update('dforge key check v1').digest().subarray(0, 8);
  if (!check.equals(blob.subarray(10 + L, 18 + L))) throw new Error('wrong key');
  const d = createDecipheriv('aes-256-gcm', key, blob.subarray(18 + L, 30 + L));
  d.setAAD(Buffer.concat([blob.subarray(0, 18 + L), Buffer.from(context, 'utf8')]));
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(30 + L, blob.length - 16)), d.final()]);
}

/** "Backup file", the reader order of the document, steps 1 to 7. */
function docOpenBackup(file: Buffer, wrappingKey: Buffer): {header: Record<string, unknown>; plain: Buffer; chunks: number} {
  expect(file.subarray(0, 8).toString('latin1')).toBe('DFBACKUP');
  expect(file[8]).toBe(1);
  const J = file.readUInt32BE(9);
  expect(J).toBeLessThanOrEqual(65_536);
  const header = JSON.parse(file.subarray(13, 13 + J).toString('utf8')) as Record<string, unknown>;
  const W = file.readUInt16BE(13 + J);
  const H = 15 + J + W;
  const wrapped = file.subarray(15 + J, H);
  expect(header.chunkSize).toBe(65_536);
  expect(wrapped.subarray(6, 6 + wrapped[5]!).toString('utf8')).toBe(header.keyId);
  expect(wrapped.readUInt32BE(6 + wrapped[5]!)).toBe(header.keyVersion);
  const fileKey = docUnwrap(wrapped, wrappingKey, `backup-file-key:${String(header.backupId)}`);
  const macKey = Buffer.from(hkdfSync('sha256', fileKey, Buffer.alloc(0), 'dforge backup header', 32));
  // RFC 5869's default salt (HashLen zero bytes) gives the same key, as the document says.
  expect(Buffer.from(hkdfSync('sha256', fileKey, Buffer.alloc(32), 'dforge backup header', 32)).equals(macKey)).toBe(true);
  if (!timingSafeEqual(createHmac('sha256', macKey).update(file.subarray(0, H)).digest(), file.subarray(H, H + 32))) throw new Error('header MAC');
  const payloadKey = Buffer.from(hkdfSync('sha256', fileKey, createHash('sha256').update(file.subarray(0, H)).digest(), 'dforge backup payload', 32));
  const body = file.subarray(H + 32);
  const pieces: Buffer[] = [];
  for (let at = 0; at < body.length; at += 65_552) pieces.push(body.subarray(at, at + 65_552));
  if (pieces.length === 0 || pieces.at(-1)!.length < 16) throw new Error('truncated');
  const plain = pieces.map((piece, i) => {
    const nonce = Buffer.alloc(12);
    nonce.writeBigUInt64BE(BigInt(i), 3); // i as 11 bytes: the top 3 are zero below 2^64
    nonce[11] = i === pieces.length - 1 ? 1 : 0;
    const d = createDecipheriv('aes-256-gcm', payloadKey, nonce);
    d.setAuthTag(piece.subarray(piece.length - 16));
    return Buffer.concat([d.update(piece.subarray(0, piece.length - 16)), d.final()]);
  });
  return {header, plain: Buffer.concat(plain), chunks: pieces.length};
}

const dek = {id: 'dek/acme', version: 3, material: randomBytes(32)};
const described = {kind: 'tenant' as const, backupId: '20261127T000000Z-acme-a1b2c3', tenant: 'acme', region: 'eu', cluster: 'eu-1', pgVersion: '160004', createdAt: '2026-11-27T00:00:00.000Z'};

async function tenantBackup(plain: Buffer): Promise<Buffer> {
  return buffer(Readable.from([plain]).pipe(new EncryptStream(await createHeader(described, dataKeyWrapper(dek)))));
}

describe('docs/formats.md against the code', () => {
  it('states the constants the code uses', () => {
    expect(CHUNK_SIZE).toBe(65_536);
    expect(CONTROL_OWNER).toBe('_control');
    for (const fact of ['magic `DFBACKUP`', 'magic `DFWK`', '65,536-byte pieces', 'a full chunk is 65,552 bytes', 'info = `dforge backup header`', 'info =\n  `dforge backup payload`', '`backup-file-key:<backupId>`', '`dek:<owner>:v<v>`', '`sealed:<name>`', '`tenant-password:<slug>`']) {
      expect(doc, fact).toContain(fact);
    }
  });

  it.each([0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE])('a reader written from the document opens a %i-byte dump dforge wrote', async (n) => {
    const plain = randomBytes(n);
    const file = await tenantBackup(plain);
    const opened = docOpenBackup(file, dek.material);
    expect(opened.plain.equals(plain)).toBe(true);
    // An exact multiple of 64 KiB ends with a full final chunk, never an empty one after it.
    expect(opened.chunks).toBe(Math.max(1, Math.ceil(n / CHUNK_SIZE)));
    expect(opened.header).toMatchObject({...described, keyId: 'dek/acme', keyVersion: 3, chunkSize: 65_536});
  });

  it('the document reader refuses an edited header, a flipped body bit and a cut final chunk, and opens the file again once undone', async () => {
    const file = await tenantBackup(randomBytes(CHUNK_SIZE + 100));
    const J = file.readUInt32BE(9);
    const edited = Buffer.from(file);
    edited[13 + J - 3]! ^= 1; // inside the header JSON's last value
    expect(() => docOpenBackup(edited, dek.material)).toThrow();
    const flipped = Buffer.from(file);
    flipped[file.length - 40]! ^= 1;
    expect(() => docOpenBackup(flipped, dek.material)).toThrow();
    // Cut exactly at the chunk boundary: the first chunk, now last, lacks the final flag.
    const cut = file.subarray(0, file.length - (100 + 16));
    expect(() => docOpenBackup(cut, dek.material)).toThrow();
    flipped[file.length - 40]! ^= 1;
    expect(docOpenBackup(flipped, dek.material).plain.length).toBe(CHUNK_SIZE + 100);
  });

  it('the header table names exactly the fields a control backup header carries, and pgVersion is a string', async () => {
    const header = await createHeader({...described, kind: 'control', tenant: CONTROL_OWNER, opsLogHead: {seq: 7, mac: 'ab'.repeat(32), keyId: 'k1'}}, dataKeyWrapper({id: 'master', version: 1, material: randomBytes(32)}));
    const J = header.bytes.readUInt32BE(9);
    const json = JSON.parse(header.bytes.subarray(13, 13 + J).toString('utf8')) as Record<string, unknown>;
    expect(Object.keys(json).sort()).toEqual(tableKeys('header field').sort());
    expect(typeof json.pgVersion).toBe('string');
    expect(json.tenant).toBe('_control');
  });

  it('a data key blob opens with the document reader under its dek context', () => {
    const master = {id: 'master', version: 2, material: randomBytes(32)};
    const key = randomBytes(32);
    const blob = wrap(master, key, 'dek:acme:v3');
    expect(docUnwrap(blob, master.material, 'dek:acme:v3').equals(key)).toBe(true);
    expect(() => docUnwrap(blob, master.material, 'dek:acme:v2')).toThrow();
  });

  it('the keyring table names the fields keys init writes, and the active version has no retiredAt key', async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-formats-'));
    try {
      const dir = new InstallDir(root);
      const {keyring} = await LocalMasterKeyring.init(dir, fileKeySource(dir), new Date('2026-11-27T00:00:00Z'));
      const stored = JSON.parse(await fs.readFile(path.join(root, 'secrets/master/keyring.json'), 'utf8')) as {versions: Array<Record<string, unknown>>};
      expect(Object.keys(stored).sort()).toEqual(['format', 'provider', 'versions']);
      const active = stored.versions[0]!;
      expect(active).not.toHaveProperty('retiredAt');
      expect(Object.keys(active).every((k) => tableKeys('version field').includes(k))).toBe(true);
      expect(active.keyCheck).toMatch(/^[0-9a-f]{16}$/);
      // The file provider's v1.key is base64 of the 32 bytes whose check value is keyCheck.
      const material = Buffer.from((await fs.readFile(path.join(root, 'secrets/master/v1.key'), 'utf8')).trim(), 'base64');
      expect(createHmac('sha256', material).update('dforge key check v1').digest().subarray(0, 8).toString('hex')).toBe(active.keyCheck);
      expect(keyring.activeVersion()).toBe(1);
    } finally {
      await fs.rm(root, {recursive: true, force: true});
    }
  });
});
