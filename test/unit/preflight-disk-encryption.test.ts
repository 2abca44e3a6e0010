import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {backingOf} from '../../src/preflight/disk-encryption.js';
import type {MountEntry} from '../../src/preflight/mountinfo.js';

/**
 * A fake sysfs and /dev laid out like the kernel's: /sys/dev/block/<maj:min> links to the device,
 * device-mapper devices have dm/uuid and dm/name, and slaves/ names the devices underneath.
 */
let root: string;
const sys = (): string => path.join(root, 'sys');
const dev = (): string => path.join(root, 'dev');

async function device(name: string, options: {number: string; dmUuid?: string; dmName?: string; slaves?: string[]}): Promise<void> {
  const dir = path.join(sys(), 'class', 'block', name);
  await fs.mkdir(path.join(dir, 'slaves'), {recursive: true});
  if (options.dmUuid) {
    await fs.mkdir(path.join(dir, 'dm'));
    await fs.writeFile(path.join(dir, 'dm', 'uuid'), `${options.dmUuid}\n`);
    await fs.writeFile(path.join(dir, 'dm', 'name'), `${options.dmName ?? name}\n`);
  }
  for (const slave of options.slaves ?? []) await fs.symlink(`../../${slave}`, path.join(dir, 'slaves', slave));
  await fs.symlink(`../../class/block/${name}`, path.join(sys(), 'dev', 'block', options.number));
  await fs.writeFile(path.join(dev(), name), '');
}

const mount = (number: string, fsType = 'ext4', source = '/dev/x'): MountEntry => {
  const [major, minor] = number.split(':').map(Number) as [number, number];
  return {major, minor, mountPoint: '/data', fsType, source};
};

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-sysfs-'));
  await fs.mkdir(path.join(sys(), 'dev', 'block'), {recursive: true});
  await fs.mkdir(path.join(dev(), 'mapper'), {recursive: true});
  await device('vda', {number: '254:0'});
  await device('vda1', {number: '254:1'});
  await device('vda2', {number: '254:2'});
  await device('dm-0', {number: '253:0', dmUuid: 'CRYPT-LUKS2-0f1e2d3c-luks-0f1e', dmName: 'luks-0f1e', slaves: ['vda2']});
  await device('dm-1', {number: '253:1', dmUuid: 'LVM-abcdef', dmName: 'vg-data', slaves: ['dm-0']});
  await device('dm-2', {number: '253:2', dmUuid: 'LVM-spanning', dmName: 'vg-span', slaves: ['dm-0', 'vda1']});
  await device('dm-3', {number: '253:3', dmUuid: 'LVM-plain', dmName: 'vg-plain', slaves: ['vda1']});
  await fs.symlink('../dm-1', path.join(dev(), 'mapper', 'vg-data'));
});

afterAll(async () => {
  await fs.rm(root, {recursive: true, force: true});
});

describe('dm-crypt detection over sysfs', () => {
  const backing = (m: MountEntry): ReturnType<typeof backingOf> => backingOf(m, {sys: sys(), dev: dev()});

  it('a plain disk is a block device, not encrypted', async () => {
    expect(await backing(mount('254:0'))).toEqual({kind: 'block', device: '/dev/vda', encrypted: false});
  });

  it('LUKS directly under the file system is encrypted', async () => {
    expect(await backing(mount('253:0'))).toEqual({kind: 'block', device: '/dev/mapper/luks-0f1e', encrypted: true, cryptDevice: '/dev/mapper/luks-0f1e'});
  });

  it('LVM on LUKS is found by walking the slaves', async () => {
    expect(await backing(mount('253:1'))).toEqual({kind: 'block', device: '/dev/mapper/vg-data', encrypted: true, cryptDevice: '/dev/mapper/luks-0f1e'});
  });

  it('a volume spanning an encrypted and a plain device is not encrypted', async () => {
    expect(await backing(mount('253:2'))).toMatchObject({device: '/dev/mapper/vg-span', encrypted: false});
  });

  it('LVM on a plain partition is not encrypted', async () => {
    expect(await backing(mount('253:3'))).toMatchObject({device: '/dev/mapper/vg-plain', encrypted: false});
  });

  it('an anonymous device number (btrfs) is resolved from the mount source', async () => {
    expect(await backing(mount('0:51', 'btrfs', '/dev/mapper/vg-data'))).toMatchObject({kind: 'block', encrypted: true, cryptDevice: '/dev/mapper/luks-0f1e'});
  });

  it('tmpfs, overlay and unknown devices are not block devices', async () => {
    expect(await backing(mount('0:45', 'tmpfs', 'tmpfs'))).toEqual({kind: 'not-block', fsType: 'tmpfs'});
    expect(await backing(mount('0:46', 'overlay', 'overlay'))).toEqual({kind: 'not-block', fsType: 'overlay'});
    expect(await backing(mount('8:99', 'ext4', '/dev/sdz'))).toEqual({kind: 'not-block', fsType: 'ext4'});
  });
});
