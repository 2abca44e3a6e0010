import {promises as fs} from 'node:fs';
import path from 'node:path';

/** One line of /proc/<pid>/mountinfo (see proc(5)). */
export interface MountEntry {
  readonly major: number;
  readonly minor: number;
  readonly mountPoint: string;
  readonly fsType: string;
  /** The mount source, e.g. /dev/mapper/vg-data, or "tmpfs" for virtual file systems. */
  readonly source: string;
}

/** Fields containing space, tab, newline or backslash are written as octal escapes. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/**
 * Parses mountinfo text. Each line: id, parent id, major:minor, root, mount point, options,
 * optional fields, "-", fs type, source, super options. Malformed lines are skipped.
 */
export function parseMountinfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(' ');
    const separator = fields.indexOf('-', 6);
    const device = /^(\d+):(\d+)$/.exec(fields[2] ?? '');
    if (separator < 0 || !device || fields[4] === undefined || fields[separator + 2] === undefined) continue;
    entries.push({
      major: Number(device[1]),
      minor: Number(device[2]),
      mountPoint: unescape(fields[4]),
      fsType: fields[separator + 1]!,
      source: unescape(fields[separator + 2]!),
    });
  }
  return entries;
}

/**
 * The mount that holds `file` (an absolute, symlink-free path): the longest mount point that
 * contains it; of equal ones the last, because a later mount hides an earlier one at the same place.
 */
export function mountOf(entries: readonly MountEntry[], file: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const entry of entries) {
    const point = entry.mountPoint;
    const contains = point === '/' || file === point || file.startsWith(`${point}/`);
    if (contains && (!best || point.length >= best.mountPoint.length)) best = entry;
  }
  return best;
}

/**
 * The nearest existing ancestor of `file`, symlinks resolved: preflight runs before the install
 * creates its directory, and the data will land on whatever file system holds that ancestor.
 */
export async function existingAncestor(file: string): Promise<string> {
  let current = path.resolve(file);
  for (;;) {
    const real = await fs.realpath(current).catch(() => undefined);
    if (real !== undefined) return real;
    const parent = path.dirname(current);
    if (parent === current) return current;
    current = parent;
  }
}

/** The mount holding `file`, read from this process's mountinfo under `procRoot`. */
export async function findMount(file: string, procRoot = '/proc'): Promise<MountEntry | undefined> {
  const text = await fs.readFile(path.join(procRoot, 'self', 'mountinfo'), 'utf8');
  return mountOf(parseMountinfo(text), await existingAncestor(file));
}
