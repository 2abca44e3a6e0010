// Writes docs/test-vectors/*.json from fixed inputs, through dforge's own code (dist/: run
// `npm run build` first). test/unit/test-vectors.test.ts checks the implementation against the
// written files in both directions, so a format change shows up as a failing test, not as a
// silently regenerated vector. Usage: node scripts/write-test-vectors.mjs
import {createHash} from 'node:crypto';
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises';
import {tmpdir} from 'node:os';
import path from 'node:path';
import {Readable} from 'node:stream';
import {buffer} from 'node:stream/consumers';
import {fileURLToPath} from 'node:url';

import {CHUNK_SIZE, createHeader, dataKeyWrapper, EncryptStream} from '../dist/backup/format.js';
import {keyCheckValue, wrap} from '../dist/secrets/envelope.js';
import {fileKeySource, LocalMasterKeyring} from '../dist/secrets/master-key.js';
import {sealedSecretContext} from '../dist/secrets/sealed-store.js';
import {InstallDir} from '../dist/state/install-dir.js';

const out = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'docs', 'test-vectors');
const hex = (b) => Buffer.from(b).toString('hex');
const sha256 = (b) => createHash('sha256').update(b).digest('hex');
/** 0x00, 0x01, … from `start`: fixed key material anyone can retype. */
const counting = (start, n) => Buffer.from(Array.from({length: n}, (_, i) => (start + i) & 0xff));
/** The dump bytes of the backup vectors: byte i is i mod 251 (a prime, so no chunk repeats another). */
const pattern = (n) => Buffer.from(Array.from({length: n}, (_, i) => i % 251));
/** Hands out the given byte strings in order, each exactly once and of exactly the asked size. */
function fixedRandom(values) {
  const queue = values.map((v) => Buffer.from(v, 'hex'));
  return (size) => {
    const next = queue.shift();
    if (!next || next.length !== size) throw new Error(`fixed random source: asked for ${size} bytes, had ${next?.length ?? 'nothing'}`);
    return Buffer.from(next);
  };
}

const MASTER = {material: hex(counting(0x00, 32)), createdAt: '2026-01-01T00:00:00.000Z'};
const DEK = {owner: 'acme', version: 1, material: hex(counting(0x40, 32))};

async function masterKeyVector() {
  const root = await mkdtemp(path.join(tmpdir(), 'dforge-vectors-'));
  try {
    const dir = new InstallDir(root);
    await dir.ensureLayout();
    await LocalMasterKeyring.init(dir, fileKeySource(dir, fixedRandom([MASTER.material])), new Date(MASTER.createdAt));
    return {
      name: 'master-key',
      description: 'Master key version 1 of the file provider: the key file secrets/master/v1.key and secrets/master/keyring.json as dforge keys init writes them.',
      inputs: {material: MASTER.material, version: 1, provider: 'file', createdAt: MASTER.createdAt},
      expected: {
        keyCheck: hex(keyCheckValue(Buffer.from(MASTER.material, 'hex'))),
        keyFile: (await readFile(path.join(root, 'secrets', 'master', 'v1.key'), 'utf8')),
        keyringJson: (await readFile(path.join(root, 'secrets', 'master', 'keyring.json'), 'utf8')),
      },
    };
  } finally {
    await rm(root, {recursive: true, force: true});
  }
}

function sealedVector() {
  const name = 'vectors/example';
  const plaintext = 'dforge sealed secret test vector';
  const nonce = hex(counting(0xa0, 12));
  const bytes = wrap({id: 'master', version: 1, material: Buffer.from(MASTER.material, 'hex')}, Buffer.from(plaintext), sealedSecretContext(name), fixedRandom([nonce]));
  return {
    name: 'sealed-secret',
    description: `The sealed secret file secrets/${name}.sealed: a DFWK blob under master v1 (master-key.json).`,
    inputs: {masterKey: MASTER.material, masterVersion: 1, secretName: name, context: sealedSecretContext(name), plaintextUtf8: plaintext, nonce},
    expected: {fileHex: hex(bytes), length: bytes.length},
  };
}

function dataKeyVector() {
  const context = `dek:${DEK.owner}:v${DEK.version}`;
  const nonce = hex(counting(0xb0, 12));
  const bytes = wrap({id: 'master', version: 1, material: Buffer.from(MASTER.material, 'hex')}, Buffer.from(DEK.material, 'hex'), context, fixedRandom([nonce]));
  return {
    name: 'data-key',
    description: 'A tenant data key as stored in dforge_control, table dforge.data_keys, column wrapped (bytea): the raw DFWK bytes under master v1 (master-key.json). Row: owner acme, version 1.',
    inputs: {masterKey: MASTER.material, masterVersion: 1, owner: DEK.owner, version: DEK.version, context, dataKey: DEK.material, nonce},
    expected: {wrappedHex: hex(bytes), length: bytes.length},
  };
}

/** A backup file: `key` wraps the file key (a data key, or the master key for a control backup). */
async function backupVector({name, description, header, key, fileKey, fileKeyNonce, plaintextLength}) {
  const random = fixedRandom([fileKey, fileKeyNonce]);
  const wrapper = dataKeyWrapper({id: key.id, version: key.version, material: Buffer.from(key.material, 'hex')}, random);
  const made = await createHeader(header, wrapper, random);
  const plain = pattern(plaintextLength);
  const file = await buffer(Readable.from([plain]).pipe(new EncryptStream(made)));
  const chunks = Math.max(1, Math.ceil(plaintextLength / CHUNK_SIZE));
  return {
    name,
    description,
    inputs: {
      wrappingKey: key,
      header,
      fileKey,
      fileKeyNonce,
      plaintext: {pattern: 'byte i is i mod 251, for i = 0 … length-1', length: plaintextLength, sha256: sha256(plain)},
    },
    expected: {
      fileBase64: file.toString('base64'),
      length: file.length,
      sha256: sha256(file),
      headerLength: made.bytes.length,
      headerHex: hex(made.bytes),
      payloadKey: hex(made.payloadKey),
      chunks,
      storedChunkLengths: Array.from({length: chunks}, (_, i) => Math.min(CHUNK_SIZE, plaintextLength - i * CHUNK_SIZE) + 16),
    },
  };
}

const dekKey = {id: `dek/${DEK.owner}`, version: DEK.version, material: DEK.material};
const tenantHeader = (backupId) => ({kind: 'tenant', backupId, tenant: 'acme', region: 'eu', cluster: 'eu-1', pgVersion: '170002', createdAt: '2026-01-02T03:04:05.000Z'});

const vectors = [
  await masterKeyVector(),
  sealedVector(),
  dataKeyVector(),
  await backupVector({
    name: 'backup-two-chunk',
    description: 'A tenant backup of acme whose dump is 65,536 + 100 bytes: one full chunk, then a final chunk of 100 bytes. File key wrapped by dek/acme v1 (data-key.json).',
    header: tenantHeader('20260102T030405Z-acme-0a0b0c'),
    key: dekKey,
    fileKey: hex(counting(0xc0, 32)),
    fileKeyNonce: hex(counting(0xe0, 12)),
    plaintextLength: CHUNK_SIZE + 100,
  }),
  await backupVector({
    name: 'backup-exact-multiple',
    description: 'A tenant backup whose dump is exactly 2 × 65,536 bytes: two full chunks, the second carrying the final flag (no empty chunk after it).',
    header: tenantHeader('20260102T030405Z-acme-0d0e0f'),
    key: dekKey,
    fileKey: hex(counting(0x10, 32)),
    fileKeyNonce: hex(counting(0xf0, 12)),
    plaintextLength: 2 * CHUNK_SIZE,
  }),
  await backupVector({
    name: 'backup-control',
    description: 'A control backup (dforge_control): tenant _control, file key wrapped by master v1 (master-key.json), opsLogHead in the header; dump of 300 bytes, one final chunk.',
    header: {
      kind: 'control',
      backupId: '20260102T030405Z-_control-101112',
      tenant: '_control',
      region: 'eu',
      cluster: 'eu-1',
      pgVersion: '170002',
      createdAt: '2026-01-02T03:04:05.000Z',
      opsLogHead: {seq: 7, mac: hex(counting(0x70, 32)), keyId: 'k1'},
    },
    key: {id: 'master', version: 1, material: MASTER.material},
    fileKey: hex(counting(0x20, 32)),
    fileKeyNonce: hex(counting(0x90, 12)),
    plaintextLength: 300,
  }),
];

/**
 * Negative vectors: a positive vector's bytes, changed as `mutation` says, opened with its own key
 * (or `wrongKey`), must fail with `expect`. The offsets are computed here from the positive bytes;
 * the expectations are stated, not computed, so the test checks them against dforge.
 */
const byName = Object.fromEntries(vectors.map((v) => [v.name, v]));
const twoChunk = byName['backup-two-chunk'].expected;
const exact = byName['backup-exact-multiple'].expected;
const tamper = {error: 'VerificationError', exitCode: 6};
const regionOffset = Buffer.from(twoChunk.headerHex, 'hex').indexOf('"region":"eu"') + '"region":"'.length;
const negatives = [
  {name: 'backup-truncated-at-chunk-boundary', base: 'backup-two-chunk', mutation: {kind: 'truncate', length: twoChunk.headerLength + 65552}, why: 'the final chunk is dropped: the remaining full chunk does not open as a final one', expect: {...tamper, message: 'chunk 0 failed authentication, or the file was truncated or reordered'}},
  {name: 'backup-truncated-mid-chunk', base: 'backup-two-chunk', mutation: {kind: 'truncate', length: twoChunk.length - 1}, why: 'the last byte of the final tag is cut off', expect: {...tamper, message: 'chunk 1 failed authentication, or the file was truncated or reordered'}},
  {name: 'backup-truncated-in-header', base: 'backup-two-chunk', mutation: {kind: 'truncate', length: 40}, why: 'only the start of the header is left', expect: {...tamper, message: 'the header is truncated'}},
  {name: 'backup-chunks-reordered', base: 'backup-exact-multiple', mutation: {kind: 'swap', offsetA: exact.headerLength, offsetB: exact.headerLength + 65552, length: 65552}, why: 'the two full chunks are swapped', expect: {...tamper, message: 'chunk 0 failed authentication'}},
  {name: 'backup-header-json-byte-flipped', base: 'backup-two-chunk', mutation: {kind: 'flip', offset: regionOffset, xor: 1}, why: 'region "eu" becomes "du" in the header JSON: still valid, but the header HMAC fails', expect: {...tamper, message: 'the header failed authentication (it was edited)'}},
  {name: 'backup-header-mac-byte-flipped', base: 'backup-two-chunk', mutation: {kind: 'flip', offset: twoChunk.headerLength - 1, xor: 1}, why: 'the last byte of the header HMAC', expect: {...tamper, message: 'the header failed authentication (it was edited)'}},
  {name: 'backup-chunk-byte-flipped', base: 'backup-two-chunk', mutation: {kind: 'flip', offset: twoChunk.headerLength + 1000, xor: 1}, why: 'a ciphertext byte of chunk 0', expect: {...tamper, message: 'chunk 0 failed authentication'}},
  {name: 'backup-tag-byte-flipped', base: 'backup-two-chunk', mutation: {kind: 'flip', offset: twoChunk.length - 1, xor: 1}, why: 'the last byte of the final chunk\'s tag', expect: {...tamper, message: 'chunk 1 failed authentication, or the file was truncated or reordered'}},
  {name: 'backup-wrong-key', base: 'backup-two-chunk', mutation: {kind: 'none'}, wrongKey: hex(counting(0x41, 32)), why: 'opened with another dek/acme v1 (another install\'s): the file key\'s key check value differs', expect: {...tamper, message: 'its file key was wrapped by a different dek/acme v1 than this install\'s'}},
  {name: 'backup-control-wrong-master-key', base: 'backup-control', mutation: {kind: 'none'}, wrongKey: hex(counting(0x01, 32)), why: 'a control backup opened with another master v1', expect: {...tamper, message: 'its file key was wrapped by a different master v1 than this install\'s'}},
  {name: 'sealed-tag-byte-flipped', base: 'sealed-secret', mutation: {kind: 'flip', offset: byName['sealed-secret'].expected.length - 1, xor: 1}, why: 'the last byte of the GCM tag', expect: {...tamper, message: 'failed authentication: it was modified, corrupted or moved from another place'}},
  {name: 'sealed-wrong-master-key', base: 'sealed-secret', mutation: {kind: 'none'}, wrongKey: hex(counting(0x01, 32)), why: 'opened with another master v1: the key check value in the header differs, so nothing is decrypted', expect: {error: 'UserError', exitCode: 1, message: 'wrong key for sealed secret vectors/example'}},
  {name: 'data-key-moved-to-another-owner', base: 'data-key', mutation: {kind: 'context', context: 'dek:other:v1'}, why: 'the acme row\'s bytes opened as owner other\'s data key: the context is part of the AAD', expect: {...tamper, message: 'failed authentication'}},
];

await mkdir(path.join(out, 'negative'), {recursive: true});
for (const v of vectors) await writeFile(path.join(out, `${v.name}.json`), `${JSON.stringify(v, null, 2)}\n`);
for (const n of negatives) await writeFile(path.join(out, 'negative', `${n.name}.json`), `${JSON.stringify(n, null, 2)}\n`);
process.stdout.write(`${vectors.length} vectors, ${negatives.length} negative vectors in ${out}\n`);
