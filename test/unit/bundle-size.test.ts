import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {describe, expect, it} from 'vitest';


import {cycloneDxBytes, debPurl, imageStatus, parseDpkgStatus, sbomFileName} from '../../src/bundle/sbom.js';
import {encodeEntryHeader} from '../../src/bundle/tar-blocks.js';
import {PartWriter} from '../../src/bundle/part-writer.js';
import {DVD_PART_BYTES, MAX_PARTS, checkPartCount, parseSplitSize} from '../../src/bundle/size.js';

describe('--split sizes', () => {
  it('reads binary units and rounds down to whole 512-byte blocks', () => {
    expect(parseSplitSize('4G')).toBe(4 * 1024 ** 3);
    expect(parseSplitSize('700M')).toBe(700 * 1024 ** 2);
    expect(parseSplitSize('1048577')).toBe(1048576);
    expect(parseSplitSize('2GiB')).toBe(2 * 1024 ** 3);
  });

  it('dvd is a single-layer DVD less a file-system margin, in whole blocks', () => {
    expect(parseSplitSize('dvd')).toBe(DVD_PART_BYTES);
    expect(DVD_PART_BYTES).toBe(4_689_999_872);
    expect(DVD_PART_BYTES % 512).toBe(0);
  });

  it('refuses what is not a size, or a part too small to be meant, as a usage error', () => {
    for (const bad of ['', 'big', '-1G', '4.5G', '1K', '0']) expect(() => parseSplitSize(bad)).toThrow(expect.objectContaining({exitCode: 2}));
  });
});

describe('the 999-part cap', () => {
  it('refuses, as a usage error, a split whose estimate needs more than 999 parts, naming a size that fits', () => {
    const MiB = 1024 ** 2;
    expect(() => checkPartCount(999 * MiB, MiB)).not.toThrow();
    let thrown: unknown;
    try {
      checkPartCount(999 * MiB + 1, MiB);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toMatchObject({exitCode: 2});
    const next = (thrown as {nextSteps: string[]}).nextSteps.join(' ');
    const suggested = /--split ([0-9]+)M/.exec(next);
    expect(suggested).not.toBeNull();
    expect(Math.ceil((999 * MiB + 1) / (Number(suggested![1]) * MiB))).toBeLessThanOrEqual(MAX_PARTS);
  });

  it('PartWriter refuses to open part 1000 and discard leaves nothing behind', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-parts-'));
    try {
      const writer = await PartWriter.open(path.join(dir, 'b.bundle'), 512);
      await writer.write(Buffer.alloc(MAX_PARTS * 512));
      await expect(writer.write(Buffer.alloc(1))).rejects.toThrow(/more than 999 parts/);
      await writer.discard();
      expect(await fs.readdir(dir)).toEqual([]);
    } finally {
      await fs.rm(dir, {recursive: true, force: true});
    }
  });
});

describe('dpkg status to CycloneDX', () => {
  const status = [
    'Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\nDescription: compression\n library',
    'Package: removed-pkg\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0',
    'Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2',
    'Package: libpq5\nStatus: install ok installed\nArchitecture: amd64\nSource: postgresql-15 (15.5-0+deb12u1)\nVersion: 15.5-0+deb12u1+b1',
  ].join('\n\n');

  it('lists installed packages only, sorted, with the source package name and an encoded purl', () => {
    const pkgs = parseDpkgStatus(status);
    expect(pkgs.map((p) => p.name)).toEqual(['bash', 'libpq5', 'zlib1g']);
    expect(pkgs[1]!.source).toBe('postgresql-15');
    expect(debPurl(pkgs[2]!)).toBe('pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64');
  });

  it('is byte-identical for the same input', () => {
    const a = cycloneDxBytes({ref: 'x:1', configDigest: 'sha256:00'}, parseDpkgStatus(status), '2025-01-01T00:00:00.000Z');
    const b = cycloneDxBytes({ref: 'x:1', configDigest: 'sha256:00'}, parseDpkgStatus(status), '2025-01-01T00:00:00.000Z');
    expect(a.equals(b)).toBe(true);
    const bom = JSON.parse(a.toString()) as {specVersion: string; components: Array<{properties: Array<{value: string}>}>};
    expect(bom.specVersion).toBe('1.5');
    expect(bom.components[1]!.properties[0]!.value).toBe('postgresql-15');
  });

  it('the top-most layer decides: a whiteout above a status means no dpkg database', () => {
    const s = {kind: 'status' as const, bytes: Buffer.from('a')};
    expect(imageStatus([s, {kind: 'none'}])).toBe(s.bytes);
    expect(imageStatus([s, {kind: 'whiteout'}])).toBeUndefined();
    expect(imageStatus([{kind: 'whiteout'}, {kind: 'status', bytes: Buffer.from('b')}])?.toString()).toBe('b');
  });
});

describe('SBOM file names', () => {
  const c1 = `sha256:${'1'.repeat(12)}${'a'.repeat(52)}`;
  const c2 = `sha256:${'2'.repeat(12)}${'a'.repeat(52)}`;

  it('references that sanitise or case-fold alike still get distinct names', () => {
    const names = [sbomFileName('a/b:1', c1), sbomFileName('a_b:1', c2), sbomFileName('x:Tag', c1), sbomFileName('x:tag', c2)];
    expect(names[0]).toBe('a_b_1-111111111111.cdx.json');
    expect(new Set(names.map((n) => n.toLowerCase())).size).toBe(4);
  });

  it('a reference of 255 characters gives a name that fits one ustar header', () => {
    const ref = `registry.example.com:5000/${'n'.repeat(120)}:${'T'.repeat(128)}`.slice(0, 255);
    const name = sbomFileName(ref, c1);
    expect(name.length).toBeLessThanOrEqual(100);
    expect(name.endsWith('-111111111111.cdx.json')).toBe(true);
    expect(() => encodeEntryHeader({path: `sbom/${name}`, size: 1, mode: 0o644, mtime: new Date(0)})).not.toThrow();
  });
});
