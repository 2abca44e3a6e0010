import {createHash, randomBytes} from 'node:crypto';
import {Readable} from 'node:stream';
import {buffer} from 'node:stream/consumers';

import fc from 'fast-check';
import {describe, expect, it} from 'vitest';

import {CHUNK_SIZE, createHeader, dataKeyWrapper, DecryptStream, EncryptStream, openHeader, parseHeader} from '../../src/backup/format.js';
import {retentionDecisions, type RetentionPolicy} from '../../src/backup/manage.js';
import type {BackupRecord} from '../../src/backup/catalog.js';
import {VerificationError} from '../../src/errors.js';

const dek = {id: 'dek/acme', version: 1, material: randomBytes(32)};
const otherDek = {id: 'dek/acme', version: 1, material: randomBytes(32)};

async function seal(plain: Buffer): Promise<Buffer> {
  const header = await createHeader({kind: 'tenant', backupId: 'b1', tenant: 'acme', region: 'eu', cluster: 'eu-1', pgVersion: '150018', createdAt: '2026-11-27T00:00:00.000Z'}, dataKeyWrapper(dek));
  return buffer(Readable.from([plain]).pipe(new EncryptStream(header)));
}

async function open(file: Buffer, key = dek): Promise<Buffer> {
  const parsed = parseHeader(file, 'test backup');
  const payloadKey = await openHeader(parsed, dataKeyWrapper(key), 'test backup');
  return buffer(Readable.from([file.subarray(parsed.length)]).pipe(new DecryptStream(payloadKey, 'test backup')));
}

describe('backup format (STREAM)', () => {
  it.each([0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17])('round-trips %i bytes', async (n) => {
    const plain = randomBytes(n);
    expect((await open(await seal(plain))).equals(plain)).toBe(true);
  });

  it('reports the SHA-256 and length of exactly the file it emitted', async () => {
    const header = await createHeader({kind: 'tenant', backupId: 'b2', tenant: 'acme', region: 'eu', cluster: 'eu-1', pgVersion: '150018', createdAt: '2026-11-27T00:00:00.000Z'}, dataKeyWrapper(dek));
    const encoder = new EncryptStream(header);
    const file = await buffer(Readable.from([randomBytes(2 * CHUNK_SIZE + 5)]).pipe(encoder));
    expect(encoder.digest()).toEqual({sha256: createHash('sha256').update(file).digest('hex'), size: file.length});
  });

  it('never seals the final chunk when the producer fails, so the output cannot pass as a complete backup', async () => {
    const header = await createHeader({kind: 'tenant', backupId: 'b3', tenant: 'acme', region: 'eu', cluster: 'eu-1', pgVersion: '150018', createdAt: '2026-11-27T00:00:00.000Z'}, dataKeyWrapper(dek));
    const emitted: Buffer[] = [];
    const encoder = new EncryptStream(header, Promise.reject(new Error('pg_dump failed (exit 1)')));
    encoder.on('data', (c: Buffer) => emitted.push(c));
    await expect(buffer(Readable.from([randomBytes(CHUNK_SIZE + 9)]).pipe(encoder))).rejects.toThrow('pg_dump failed (exit 1)');
    // What did get out (header and the first, non-final chunk) is refused as truncated.
    await expect(open(Buffer.concat(emitted))).rejects.toThrow(/truncated|final/i);
  });

  it('round-trips however the input is split into writes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({min: 0, max: 40_000}), {maxLength: 8}), async (sizes) => {
        const parts = sizes.map((s) => randomBytes(s));
        const header = await createHeader({kind: 'tenant', backupId: 'b', tenant: 'acme', region: 'eu', cluster: 'c', pgVersion: '150018', createdAt: '2026-11-27T00:00:00.000Z'}, dataKeyWrapper(dek));
        const file = await buffer(Readable.from(parts).pipe(new EncryptStream(header)));
        expect((await open(file)).equals(Buffer.concat(parts))).toBe(true);
      }),
      {numRuns: 25},
    );
  });

  const file = seal(randomBytes(3 * CHUNK_SIZE + 100));
  const expectRejected = async (bytes: Buffer, key = dek): Promise<VerificationError> => {
    const err = await open(bytes, key).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, 'tampering went undetected').toBeInstanceOf(VerificationError);
    return err as VerificationError;
  };

  it('detects a flipped bit anywhere (200 random positions)', async () => {
    const f = await file;
    for (let i = 0; i < 200; i++) {
      const tampered = Buffer.from(f);
      tampered[Math.floor(Math.random() * f.length)]! ^= 1 << Math.floor(Math.random() * 8);
      await expectRejected(tampered);
    }
  });

  it('detects truncation at a chunk boundary and mid-chunk', async () => {
    const f = await file;
    const headerLength = parseHeader(f, 'x').length;
    const boundary = headerLength + 2 * (CHUNK_SIZE + 16);
    expect((await expectRejected(f.subarray(0, boundary))).message).toMatch(/failed authentication, or the file was truncated or reordered/);
    await expectRejected(f.subarray(0, boundary + 1000));
    await expectRejected(f.subarray(0, f.length - 1));
    await expectRejected(f.subarray(0, headerLength));
  });

  it('detects two chunks swapped', async () => {
    const f = await file;
    const h = parseHeader(f, 'x').length;
    const c = CHUNK_SIZE + 16;
    const swapped = Buffer.concat([f.subarray(0, h), f.subarray(h + c, h + 2 * c), f.subarray(h, h + c), f.subarray(h + 2 * c)]);
    expect((await expectRejected(swapped)).message).toMatch(/chunk 0 failed authentication/);
  });

  it('detects an edited header: the tenant renamed (structurally, before any key) or the cluster (by the HMAC)', async () => {
    const f = await file;
    const renamed = Buffer.from(f.toString('latin1').replace('"tenant":"acme"', '"tenant":"acmf"'), 'latin1');
    expect((await expectRejected(renamed)).message).toMatch(/names key dek\/acme for a tenant backup of acmf/);
    const moved = Buffer.from(f.toString('latin1').replace('"cluster":"eu-1"', '"cluster":"eu-2"'), 'latin1');
    expect((await expectRejected(moved)).message).toMatch(/header failed authentication/);
  });

  it('refuses another key of the same name and version as tampering (exit 6), not as a configuration error', async () => {
    const err = await expectRejected(await file, otherDek);
    expect(err.message).toMatch(/its file key was wrapped by a different dek\/acme v1 than this install's/);
  });

  it('every header byte flipped, one at a time and each bit, is a VerificationError', async () => {
    const f = await file;
    const headerLength = parseHeader(f, 'x').length;
    const escaped: string[] = [];
    for (let i = 0; i < headerLength; i++) {
      for (let bit = 0; bit < 8; bit++) {
        const t = Buffer.from(f.subarray(0, headerLength + CHUNK_SIZE + 16));
        t[i]! ^= 1 << bit;
        const err = await open(t).then(
          () => undefined,
          (e: unknown) => e,
        );
        if (!(err instanceof VerificationError)) escaped.push(`byte ${i} bit ${bit}: ${err === undefined ? 'accepted' : String(err)}`);
      }
    }
    expect(escaped).toEqual([]);
  });

  it('a header whose fields are missing or mistyped is refused before any key is used', async () => {
    const f = await file;
    for (const [from, to] of [
      ['"kind":"tenant"', '"kind":"tenanT"'],
      ['"tenant":"acme"', '"tenanT":"acme"'],
      ['"keyVersion":1', '"keyVersion":0'],
      ['"pgVersion":"150018"', '"pgVersion":"15001x"'],
    ]) {
      const t = Buffer.from(f.toString('latin1').replace(from!, to!), 'latin1');
      expect(() => parseHeader(t, 'x'), `${from} -> ${to}`).toThrow(VerificationError);
    }
  });
});

describe('retention', () => {
  const at = (iso: string, id: string, verified = false): BackupRecord => ({
    id,
    kind: 'tenant',
    tenant: 'acme',
    region: 'eu',
    cluster: 'c',
    destination: 'd',
    location: id,
    size: 1,
    sha256: '',
    pgVersion: '15',
    keyId: 'dek/acme',
    keyVersion: 1,
    createdAt: iso,
    verifiedAt: verified ? iso : null,
  });

  const selectRetained = (backups: BackupRecord[], policy: RetentionPolicy): string[] => [...retentionDecisions(backups, policy)].filter(([, d]) => d.keep).map(([id]) => id);

  it('orders by recorded time, not by name, and keeps the newest verified backup', () => {
    // Ids sort the opposite way to time, so ordering by name would keep the wrong ones.
    const backups = [at('2026-11-01T01:00:00Z', 'z-oldest', true), at('2026-11-20T01:00:00Z', 'm-middle'), at('2026-11-27T01:00:00Z', 'a-newest'), at('2026-11-27T02:00:00Z', '0-newer')];
    const keep = selectRetained(backups, {keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0});
    expect([...keep].sort()).toEqual(['0-newer', 'z-oldest']);
  });

  it('keeps one backup per day, week and month, newest first', () => {
    const backups = Array.from({length: 60}, (_, i) => at(new Date(Date.UTC(2026, 9, 1) + i * 86_400_000).toISOString(), `b${i}`));
    // Day i is 2026-10-01 + i; b59 is Sunday 2026-11-29, the end of its ISO week.
    const keep = selectRetained(backups, {keepLast: 2, keepDaily: 7, keepWeekly: 4, keepMonthly: 3});
    const daily = ['b53', 'b54', 'b55', 'b56', 'b57', 'b58', 'b59'];
    const weekly = ['b38', 'b45', 'b52', 'b59']; // the newest of each of the last four ISO weeks
    const monthly = ['b30', 'b59']; // 31 October and the newest of November (September has none)
    expect([...keep].sort()).toEqual([...new Set([...daily, ...weekly, ...monthly])].sort());
  });

  it('names each rule that passed a deleted backup over; a kept one carries no reason', () => {
    const backups = [at('2026-11-28T02:00:00Z', 'today-2'), at('2026-11-28T01:00:00Z', 'today-1'), at('2026-11-27T01:00:00Z', 'yesterday'), at('2026-10-01T01:00:00Z', 'october')];
    const decisions = retentionDecisions(backups, {keepLast: 1, keepDaily: 2, keepWeekly: 0, keepMonthly: 1});
    expect(decisions.get('today-2')).toEqual({keep: true});
    expect(decisions.get('yesterday')).toEqual({keep: true});
    expect(decisions.get('today-1')).toEqual({
      keep: false,
      why: 'not among the newest 1 (keep-last 1); a newer backup is kept for 2026-11-28, 2026-11 (keep-daily 2, keep-monthly 1)',
    });
    expect(decisions.get('october')).toEqual({
      keep: false,
      why: 'not among the newest 1 (keep-last 1); 2026-10-01 is beyond the 2 newest days with a backup (keep-daily 2); 2026-10 is beyond the newest month with a backup (keep-monthly 1)',
    });
  });

  it('keeps the newest verified backup whatever the rules say', () => {
    const decisions = retentionDecisions([at('2026-11-28T02:00:00Z', 'new'), at('2026-11-01T01:00:00Z', 'old-verified', true)], {keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0});
    expect(decisions.get('old-verified')).toEqual({keep: true});
  });
});
