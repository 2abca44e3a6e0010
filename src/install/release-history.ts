import {promises as fs} from 'node:fs';
import path from 'node:path';

import {z} from 'zod';

import type {DforgeConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import {resolvedImages} from '../render/values.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';

/**
 * The releases an install ran, oldest first: what `dforge upgrade --rollback` returns to. Entries
 * are only ever added (the file is rewritten atomically with one more entry), and each keeps its
 * own copy of the dforge.yaml it ran with, written once and never replaced, so a later upgrade or
 * an edit of dforge.yaml cannot change what an old entry points at.
 */

export const historyFile = (dir: InstallDir): string => path.join(dir.root, 'state', 'releases.json');
const copiesDir = (dir: InstallDir): string => path.join(dir.root, 'state', 'releases');

const imageSchema = z.strictObject({
  ref: z.string(),
  /** The local engine's image id (compose); absent on Kubernetes, where the cluster pulls. */
  id: z.string().optional(),
});

const entrySchema = z.strictObject({
  seq: z.number().int().min(1),
  /** baseline: the release found at the first upgrade (installed before history was kept). */
  action: z.enum(['baseline', 'upgrade', 'rollback']),
  release: z.string(),
  images: z.record(z.string(), imageSchema),
  /** The copy of dforge.yaml this release ran with, relative to the install directory. */
  config: z.string(),
  /** The entry a rollback from this one returns to; null: none (the first release known). */
  previous: z.number().int().nullable(),
  /** upgrade: the backups taken of the previous release's data just before; what --restore-backups restores. */
  backups: z.array(z.strictObject({tenant: z.string(), backupId: z.string()})),
  /** Backups of dforge_control taken with them. */
  controlBackups: z.array(z.string()),
  /** rollback: the copy of the dforge.yaml it replaced, so no edit is lost. */
  replacedConfig: z.string().optional(),
  /** rollback: the tenants restored from the pre-upgrade backups. */
  restored: z.array(z.string()).optional(),
  at: z.string(),
  dforgeVersion: z.string(),
});

const historySchema = z.strictObject({schemaVersion: z.literal(1), entries: z.array(entrySchema)});

export type ReleaseEntry = z.infer<typeof entrySchema>;
export type ReleaseHistory = z.infer<typeof historySchema>;
export type NewReleaseEntry = Omit<ReleaseEntry, 'seq' | 'config' | 'replacedConfig'>;

/** The history, empty when none was kept yet. A file that does not parse is an error, never "no history". */
export async function readReleaseHistory(dir: InstallDir): Promise<ReleaseHistory> {
  let text: string;
  try {
    text = await fs.readFile(historyFile(dir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {schemaVersion: 1, entries: []};
    throw err;
  }
  const parsed = historySchema.safeParse(JSON.parse(text));
  if (!parsed.success) {
    throw new UserError(`${historyFile(dir)} is not a release history dforge can read: ${parsed.error.issues[0]!.message}`, {
      nextSteps: ['It is written only by dforge upgrade; restore it from a copy of the install directory, or move it aside to start a new history (rollback then goes no further back than the next upgrade).'],
    });
  }
  return parsed.data;
}

/** The images a config runs, each with its local id when the engine was asked. */
export async function releaseImages(config: DforgeConfig, imageId?: (ref: string) => Promise<string | undefined>): Promise<ReleaseEntry['images']> {
  // The dforge image is what the Kubernetes backup CronJob runs (src/render/k8s.ts).
  const refs: Record<string, string> = {...resolvedImages(config), dforge: config.images.dforge ?? `dforge/dforge:${config.release}`};
  const out: ReleaseEntry['images'] = {};
  for (const [service, ref] of Object.entries(refs)) {
    const id = config.target === 'compose' && service !== 'dforge' ? await imageId?.(ref) : undefined;
    out[service] = id ? {ref, id} : {ref};
  }
  return out;
}

/**
 * Adds one entry: its dforge.yaml copy first, then the history file with the entry appended. A
 * crash between the two leaves an unreferenced copy (replaced by the next append, whose number it
 * has), never an entry without its copy. Copies are named by entry number, so a referenced one is
 * never written again.
 */
export async function appendRelease(dir: InstallDir, entry: NewReleaseEntry, configText: string, replacedConfigText?: string): Promise<ReleaseEntry> {
  const history = await readReleaseHistory(dir);
  const seq = (history.entries.at(-1)?.seq ?? 0) + 1;
  await fs.mkdir(copiesDir(dir), {recursive: true, mode: 0o755});
  const save = async (name: string, text: string): Promise<string> => {
    const file = path.join(copiesDir(dir), name);
    await writeFileAtomic(file, text, {mode: 0o644});
    return path.relative(dir.root, file);
  };
  const config = await save(`${seq}-${entry.release}.dforge.yaml`, configText);
  const replacedConfig = replacedConfigText === undefined ? undefined : await save(`${seq}-replaced.dforge.yaml`, replacedConfigText);
  const full: ReleaseEntry = {seq, ...entry, config, ...(replacedConfig ? {replacedConfig} : {})};
  await writeFileAtomic(historyFile(dir), `${JSON.stringify({schemaVersion: 1, entries: [...history.entries, full]}, null, 2)}\n`, {mode: 0o644});
  return full;
}

/** The saved dforge.yaml of an entry. */
export async function entryConfigText(dir: InstallDir, entry: ReleaseEntry): Promise<string> {
  return fs.readFile(path.join(dir.root, entry.config), 'utf8');
}
