import {promises as fs} from 'node:fs';
import path from 'node:path';

import type {MountEntry} from './mountinfo.js';

/** What a file system sits on, as far as encryption at rest is concerned. */
export type Backing =
  /** tmpfs, overlay, NFS and the like: there is no block device of this host to ask. */
  | {readonly kind: 'not-block'; readonly fsType: string}
  | {
      readonly kind: 'block';
      /** e.g. /dev/vda1 or /dev/mapper/vg-data */
      readonly device: string;
      readonly encrypted: boolean;
      /** The dm-crypt device found below it, e.g. /dev/mapper/luks-3f2a... */
      readonly cryptDevice?: string;
    };

export interface SysfsRoots {
  /** Where sysfs is mounted; a test points this at a fake tree. */
  readonly sys?: string;
  /** Where device nodes live, to resolve mount sources such as /dev/mapper/x. */
  readonly dev?: string;
}

/** Stacking deeper than this (crypt under LVM under RAID under ...) is not a real layout. */
const MAX_DEPTH = 8;

/**
 * Whether a mount's block device is dm-crypt (LUKS or plain), directly or further down the
 * stack: device-mapper exposes each device's target in /sys/class/block/<dev>/dm/uuid
 * ("CRYPT-..." for dm-crypt) and the devices under it in slaves/, so LVM on LUKS is found by
 * walking down. A device over several slaves (LVM across PVs, RAID) counts as encrypted only
 * when every branch is.
 */
export async function backingOf(mount: MountEntry, roots: SysfsRoots = {}): Promise<Backing> {
  const sys = roots.sys ?? '/sys';
  const name = await blockDeviceName(mount, sys, roots.dev ?? '/dev');
  if (name === undefined) return {kind: 'not-block', fsType: mount.fsType};
  const crypt = await findCrypt(sys, name, 0);
  return {kind: 'block', device: await displayName(sys, name), encrypted: crypt !== undefined, ...(crypt ? {cryptDevice: await displayName(sys, crypt)} : {})};
}

/**
 * The kernel name (vda1, dm-3) of the device behind a mount. The device number is the reliable
 * key; file systems that report an anonymous one (major 0: btrfs, and every virtual file system)
 * are resolved from their source path instead, when it is a device node.
 */
async function blockDeviceName(mount: MountEntry, sys: string, dev: string): Promise<string | undefined> {
  if (mount.major !== 0) {
    const link = await fs.realpath(path.join(sys, 'dev', 'block', `${mount.major}:${mount.minor}`)).catch(() => undefined);
    if (link !== undefined) return path.basename(link);
  }
  if (!mount.source.startsWith('/dev/')) return undefined;
  const node = await fs.realpath(path.join(dev, path.relative('/dev', mount.source))).catch(() => undefined);
  if (node === undefined) return undefined;
  const name = path.basename(node);
  return (await exists(path.join(sys, 'class', 'block', name))) ? name : undefined;
}

/** The kernel name of the first dm-crypt device at or below `name`, if every branch has one. */
async function findCrypt(sys: string, name: string, depth: number): Promise<string | undefined> {
  if (depth > MAX_DEPTH) return undefined;
  const device = path.join(sys, 'class', 'block', name);
  const uuid = await fs.readFile(path.join(device, 'dm', 'uuid'), 'utf8').catch(() => '');
  if (uuid.startsWith('CRYPT-')) return name;
  const slaves = await fs.readdir(path.join(device, 'slaves')).catch(() => [] as string[]);
  if (slaves.length === 0) return undefined;
  const found = await Promise.all(slaves.sort().map((slave) => findCrypt(sys, slave, depth + 1)));
  return found.every((f) => f !== undefined) ? found[0] : undefined;
}

/** /dev/mapper/<name> for device-mapper devices (what operators know them by), else /dev/<kernel name>. */
async function displayName(sys: string, name: string): Promise<string> {
  const dmName = (await fs.readFile(path.join(sys, 'class', 'block', name, 'dm', 'name'), 'utf8').catch(() => '')).trim();
  return dmName ? `/dev/mapper/${dmName}` : `/dev/${name}`;
}

async function exists(file: string): Promise<boolean> {
  return fs.stat(file).then(
    () => true,
    () => false,
  );
}
