import {promises as fs} from 'node:fs';

import {combine, type CheckOutcome, type PreflightCheck, type PreflightContext} from '../check.js';
import {backingOf} from '../disk-encryption.js';
import {existingAncestor, findMount} from '../mountinfo.js';
import {formatBytes} from '../../ui/bytes.js';
import {DISK_USED_WARN_RATIO, HOST_THRESHOLDS, meets} from '../thresholds.js';

/** A directory dforge's data lands in. */
interface DataLocation {
  readonly label: string;
  readonly path: string;
  /** What to change when it is too small. */
  readonly move: string;
}

/**
 * Where the data of the target lands: the install directory (embedded PostgreSQL, backups,
 * secrets), and for compose also Docker's root, which holds the images and the database volumes.
 * An unreachable engine leaves the Docker root out; runtime.docker reports the engine.
 */
async function dataLocations(ctx: PreflightContext): Promise<DataLocation[]> {
  const locations: DataLocation[] = [{label: 'install directory', path: ctx.dir.root, move: 'or pass --dir on a larger file system'}];
  if (ctx.target === 'compose') {
    const engine = await ctx.docker().catch(() => undefined);
    if (engine) locations.push({label: 'Docker root', path: engine.rootDir, move: "or move Docker's data-root (/etc/docker/daemon.json) to a larger file system"});
  }
  return locations;
}

/** "<path>" or, before the directory exists, "<path> (measured at <ancestor>)". */
function where(location: DataLocation, measured: string): string {
  return measured === location.path ? location.path : `${location.path} (measured at ${measured})`;
}

export const diskCheck: PreflightCheck = {
  id: 'host.disk',
  title: 'Free disk space',
  async run(ctx) {
    const minFree = HOST_THRESHOLDS[ctx.target === 'embedded' ? 'embedded' : 'compose'].minFreeBytes;
    const findings = await Promise.all(
      (await dataLocations(ctx)).map(async (location): Promise<CheckOutcome> => {
        const measured = await existingAncestor(location.path);
        const st = await fs.statfs(measured);
        const free = st.bavail * st.bsize;
        const used = (st.blocks - st.bfree) * st.bsize;
        // df's Use%: blocks reserved for root count as neither used nor available.
        const usedRatio = used + free === 0 ? 1 : used / (used + free);
        const detail = `${location.label} ${where(location, measured)}: ${formatBytes(free)} free of ${formatBytes(st.blocks * st.bsize)}, ${Math.round(usedRatio * 100)}% used`;
        if (!meets(free, minFree)) return {status: 'fail', detail, remedy: `Free space on ${measured} to at least ${formatBytes(minFree)} (${ctx.target} minimum), ${location.move}.`};
        if (usedRatio > DISK_USED_WARN_RATIO) return {status: 'warn', detail, remedy: `${measured} is more than ${DISK_USED_WARN_RATIO * 100}% full: free space before PostgreSQL's WAL and backups fill it.`};
        return {status: 'pass', detail};
      }),
    );
    return combine(findings);
  },
};

export const encryptionCheck: PreflightCheck = {
  id: 'host.encryption',
  title: 'Data on an encrypted block device',
  async run(ctx) {
    const findings = await Promise.all(
      (await dataLocations(ctx)).map(async (location) => {
        const measured = await existingAncestor(location.path);
        const mount = await findMount(measured);
        const on = `${location.label} ${where(location, measured)}`;
        if (!mount) return {encrypted: false, detail: `${on}: mount not found in /proc/self/mountinfo`};
        const backing = await backingOf(mount);
        if (backing.kind === 'not-block') return {encrypted: false, detail: `${on}: ${backing.fsType} on ${mount.mountPoint}, not a block device`};
        if (backing.encrypted) return {encrypted: true, detail: `${on}: ${backing.device}, dm-crypt ${backing.cryptDevice ?? ''}`.trimEnd()};
        return {encrypted: false, detail: `${on}: ${backing.device}, not encrypted`};
      }),
    );
    const detail = findings.map((f) => f.detail).join('; ');
    if (findings.every((f) => f.encrypted)) return {status: 'pass', detail};
    return {
      status: 'warn',
      detail,
      // Backups and sealed secrets are encrypted regardless; this is about the live database files.
      remedy: 'Put the data on a LUKS (dm-crypt) volume, e.g. cryptsetup luksFormat, or LVM on LUKS, mounted where the data lives; backups and secrets are encrypted either way.',
    };
  },
};
