import {createReadStream, createWriteStream, promises as fs} from 'node:fs';
import path from 'node:path';
import type {Readable, Writable} from 'node:stream';
import {pipeline} from 'node:stream/promises';

import type {DestinationConfig, DforgeConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import {fsyncDir, writeFileAtomic} from '../state/atomic-file.js';
import {crashPoint} from '../state/crash-point.js';
import {SMALL_OBJECT_LIMIT, tooLargeToRead, type BackupDestination, type DestinationPlacement} from './backup-destination.js';
import {S3Destination, type SecretReader} from './s3-destination.js';

const PARTIAL = '.partial';

export class LocalDirectoryDestination implements BackupDestination {
  constructor(
    readonly name: string,
    readonly region: string,
    private readonly root: string,
  ) {}

  private file(location: string): string {
    const root = path.resolve(this.root);
    const full = path.resolve(root, location);
    if (full !== root && !full.startsWith(`${root}${path.sep}`)) throw new UserError(`backup location ${location} escapes destination ${this.name}`);
    return full;
  }

  describe(location: string): string {
    return this.file(location);
  }

  locate(file: string): string | undefined {
    const root = path.resolve(this.root);
    const full = path.resolve(file);
    return full.startsWith(`${root}${path.sep}`) ? path.relative(root, full) : undefined;
  }

  async where(): Promise<DestinationPlacement> {
    const root = path.resolve(this.root);
    // The directory may not exist before the first backup; its nearest existing parent is where it will be.
    let probe = root;
    for (;;) {
      const st = await fs.stat(probe).catch(() => undefined);
      if (st) return {kind: 'local', path: root, device: deviceId(st.dev), mountPoint: await mountPointOf(st.dev)};
      const parent = path.dirname(probe);
      if (parent === probe) throw new UserError(`destination ${this.name}: no part of ${root} exists`);
      probe = parent;
    }
  }

  async put(location: string, source: Readable): Promise<{size: number}> {
    const target = this.file(location);
    await fs.mkdir(path.dirname(target), {recursive: true, mode: 0o700});
    const partial = `${target}${PARTIAL}`;
    // Large buffering lets the stream hand the file system batches (writev) instead of one write per chunk.
    const out = createWriteStream(partial, {mode: 0o600, flags: 'wx', highWaterMark: 1024 * 1024});
    try {
      await pipeline(source, out as Writable);
      const handle = await fs.open(partial, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      crashPoint('backup.partial-written');
      await fs.rename(partial, target);
      await fsyncDir(path.dirname(target));
      crashPoint('backup.renamed');
      return {size: (await fs.stat(target)).size};
    } catch (err) {
      out.destroy();
      await fs.rm(partial, {force: true});
      throw err;
    }
  }

  async putSmall(location: string, data: string): Promise<void> {
    const target = this.file(location);
    await fs.mkdir(path.dirname(target), {recursive: true, mode: 0o700});
    await writeFileAtomic(target, data, {mode: 0o600});
  }

  async get(location: string): Promise<Readable> {
    const file = this.file(location);
    await fs.access(file).catch(() => {
      throw new UserError(`no backup at ${file}`, {nextSteps: ['List backups with: dforge backup list']});
    });
    return createReadStream(file, {highWaterMark: 256 * 1024});
  }

  async readSmall(location: string): Promise<string> {
    const size = await this.size(location);
    if (size > SMALL_OBJECT_LIMIT) throw tooLargeToRead(this.describe(location), size);
    return fs.readFile(this.file(location), 'utf8');
  }

  async size(location: string): Promise<number> {
    return (await fs.stat(this.file(location))).size;
  }

  async list(prefix: string, options: {everything?: boolean} = {}): Promise<string[]> {
    const base = this.file(prefix);
    const out: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await fs.readdir(dir, {withFileTypes: true}).catch(() => [])) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (options.everything || (!entry.name.endsWith(PARTIAL) && !entry.name.startsWith('.'))) out.push(path.relative(this.root, full));
      }
    };
    await walk(base);
    return out.sort();
  }

  async remove(location: string): Promise<void> {
    await fs.rm(this.file(location), {force: true});
  }

  async removeIncomplete(prefix: string, olderThanMs: number): Promise<string[]> {
    const removed: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await fs.readdir(dir, {withFileTypes: true}).catch(() => [])) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) await walk(full);
        else if (entry.name.endsWith(PARTIAL) || /^\..*\.tmp$/.test(entry.name)) {
          const st = await fs.stat(full).catch(() => undefined);
          if (st && Date.now() - st.mtimeMs >= olderThanMs) {
            await fs.rm(full, {force: true});
            removed.push(path.relative(this.root, full));
          }
        }
      }
    };
    await walk(this.file(prefix));
    return removed;
  }
}

/** `major:minor` of a st_dev, as /proc/self/mountinfo writes it (glibc's encoding). */
export function deviceId(dev: number): string {
  const major = ((dev >>> 8) & 0xfff) | Math.floor(dev / 2 ** 32) & ~0xfff;
  const minor = (dev & 0xff) | ((dev >>> 12) & ~0xff);
  return `${major}:${minor}`;
}

/** The mount point of a device from /proc/self/mountinfo (Linux), or null where that is unreadable. */
async function mountPointOf(dev: number): Promise<string | null> {
  const info = await fs.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const id = deviceId(dev);
  const mounts = info
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f[2] === id && f[4] !== undefined)
    .map((f) => f[4]!.replace(/\\040/g, ' '));
  // Bind mounts share a device; the shortest path is the file system's own mount.
  return mounts.sort((a, b) => a.length - b.length)[0] ?? null;
}

/**
 * The destination a config entry describes. An S3 destination reads its sealed credentials from
 * `secrets` when first used; callers that only handle local destinations may leave it out.
 */
export function destinationFor(region: string, config: DestinationConfig, secrets?: SecretReader): BackupDestination {
  if (config.kind === 'local') return new LocalDirectoryDestination(config.name, region, config.path);
  return new S3Destination(region, config, secrets);
}

/** Destination name → its region and config, across the install (names are unique, see config/schema.ts). */
export function destinationsOf(config: DforgeConfig): Map<string, {region: string; config: DestinationConfig}> {
  const map = new Map<string, {region: string; config: DestinationConfig}>();
  for (const [region, r] of Object.entries(config.regions)) for (const d of r.backup?.destinations ?? []) map.set(d.name, {region, config: d});
  return map;
}

/** The destinations of a region, from dforge.yaml. */
export function regionDestinations(plane: {readonly config: DforgeConfig; readonly keys: {readonly sealed: SecretReader}}, region: string): BackupDestination[] {
  const configured = plane.config.regions[region]?.backup?.destinations ?? [];
  return configured.map((d) => destinationFor(region, d, plane.keys.sealed));
}
