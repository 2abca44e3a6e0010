import {describe, expect, it} from 'vitest';

import {mountOf, parseMountinfo} from '../../src/preflight/mountinfo.js';

const MOUNTINFO = `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 27 253:1 / /srv rw,relatime shared:12 master:3 - xfs /dev/mapper/vg-data rw,attr2
31 30 0:45 / /srv/dforge\\040data rw,relatime - tmpfs tmpfs rw,size=16384k
32 27 0:46 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=/x
33 30 253:2 / /srv rw - ext4 /dev/mapper/vg-other rw
malformed line
`;

describe('mountinfo', () => {
  const entries = parseMountinfo(MOUNTINFO);

  it('parses device numbers, mount points, types and sources, with optional fields and escapes', () => {
    expect(entries).toHaveLength(6);
    expect(entries[2]).toEqual({major: 253, minor: 1, mountPoint: '/srv', fsType: 'xfs', source: '/dev/mapper/vg-data'});
    expect(entries[3]).toMatchObject({mountPoint: '/srv/dforge data', fsType: 'tmpfs', major: 0});
  });

  it('finds the longest mount point that contains a path, on path-segment boundaries', () => {
    expect(mountOf(entries, '/opt/dforge')?.mountPoint).toBe('/');
    expect(mountOf(entries, '/srv/dforge data/secrets')?.fsType).toBe('tmpfs');
    expect(mountOf(entries, '/srv/dforge')?.mountPoint).toBe('/srv');
    expect(mountOf(entries, '/srvx')?.mountPoint).toBe('/');
    expect(mountOf(entries, '/')?.mountPoint).toBe('/');
  });

  it('takes the later of two mounts at the same place: it hides the earlier one', () => {
    expect(mountOf(entries, '/srv/x')?.source).toBe('/dev/mapper/vg-other');
  });
});
