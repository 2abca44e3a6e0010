/**
 * The journal of one `bundle push`: which blobs (in which repository) and which manifests the
 * registry has confirmed, so a re-run after a kill or a lost connection resumes instead of
 * starting over.
 *
 * The journal is a hint, never a proof: a recorded blob is still HEAD-checked before it is
 * skipped (the registry may have been wiped or garbage-collected since), and it also tells the
 * push which repository to mount a shared layer from instead of uploading it again.
 *
 * It lives under $XDG_STATE_HOME/dforge/push/ (default ~/.local/state/dforge/push/): a push often
 * runs on a staging host with no install directory, and the bundle itself is often on read-only
 * media (a DVD, a mounted image), so neither "the install's state/" nor "next to the bundle" is
 * always writable. One file per (registry, bundle): key = registry host + the bundle.json sha256.
 */

import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type {Readable} from 'node:stream';

import {z} from 'zod';

import {UserError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import {digestSchema} from './manifest.js';
import type {BlobOutcome, RegistryClient} from './registry-client.js';

const JOURNAL_FORMAT = 1;

const journalSchema = z
  .object({
    format: z.literal(JOURNAL_FORMAT),
    registry: z.string().min(1),
    bundleSha256: z.string().regex(/^[0-9a-f]{64}$/),
    blobs: z.array(z.object({digest: digestSchema, repo: z.string().min(1)}).strict()),
    manifests: z.array(z.object({repo: z.string().min(1), reference: z.string().min(1), digest: digestSchema}).strict()),
  })
  .strict();
type JournalData = z.infer<typeof journalSchema>;

/** Where push journals live when the caller does not say: $XDG_STATE_HOME/dforge/push, else ~/.local/state/dforge/push. */
export function defaultPushJournalDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_STATE_HOME && path.isAbsolute(env.XDG_STATE_HOME) ? env.XDG_STATE_HOME : path.join(os.homedir(), '.local', 'state');
  return path.join(base, 'dforge', 'push');
}

/** The journal's file name: a hash of the key, because a host may hold `:` and `[]`. */
export function pushJournalFile(dir: string, registryHost: string, bundleSha256: string): string {
  const key = createHash('sha256').update(`${registryHost.toLowerCase()}\n${bundleSha256}`).digest('hex').slice(0, 32);
  return path.join(dir, `${key}.json`);
}

export interface PushJournal {
  readonly file: string;
  /** Whether the journal says `repo` has `digest` (still to be HEAD-checked before trusting it). */
  hasBlob(repo: string, digest: string): boolean;
  /** The repositories this push already put `digest` into: mount sources for the next repository. */
  reposWithBlob(digest: string): string[];
  recordBlob(repo: string, digest: string): Promise<void>;
  manifest(repo: string, reference: string): string | undefined;
  recordManifest(repo: string, reference: string, digest: string): Promise<void>;
  /** The push finished: nothing is left to resume. */
  remove(): Promise<void>;
}

export async function openPushJournal(options: {dir: string; registryHost: string; bundleSha256: string}): Promise<PushJournal> {
  const {dir, registryHost, bundleSha256} = options;
  const file = pushJournalFile(dir, registryHost, bundleSha256);
  let data: JournalData = {format: JOURNAL_FORMAT, registry: registryHost.toLowerCase(), bundleSha256, blobs: [], manifests: []};
  let text: string | undefined;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (text !== undefined) {
    let parsed: ReturnType<typeof journalSchema.safeParse> | undefined;
    try {
      parsed = journalSchema.safeParse(JSON.parse(text));
    } catch {
      parsed = undefined;
    }
    if (!parsed?.success || parsed.data.registry !== data.registry || parsed.data.bundleSha256 !== bundleSha256) {
      throw new UserError(`push journal ${file} is unreadable or belongs to another push`, {
        nextSteps: [`Remove it (rm ${file}) and re-run: the push then HEAD-checks every blob and skips those the registry has.`],
        data: {file},
      });
    }
    data = parsed.data;
  }
  const blobKeys = new Set(data.blobs.map((b) => `${b.repo}@${b.digest}`));

  const save = async (): Promise<void> => {
    await fs.mkdir(dir, {recursive: true, mode: 0o700});
    await writeFileAtomic(file, `${JSON.stringify(data)}\n`, {mode: 0o600});
  };

  return {
    file,
    hasBlob: (repo, digest) => blobKeys.has(`${repo}@${digest}`),
    reposWithBlob: (digest) => data.blobs.filter((b) => b.digest === digest).map((b) => b.repo),
    recordBlob: async (repo, digest) => {
      if (blobKeys.has(`${repo}@${digest}`)) return;
      blobKeys.add(`${repo}@${digest}`);
      data = {...data, blobs: [...data.blobs, {repo, digest}]};
      await save();
    },
    manifest: (repo, reference) => data.manifests.find((m) => m.repo === repo && m.reference === reference)?.digest,
    recordManifest: async (repo, reference, digest) => {
      data = {...data, manifests: [...data.manifests.filter((m) => !(m.repo === repo && m.reference === reference)), {repo, reference, digest}]};
      await save();
    },
    remove: async () => {
      await fs.rm(file, {force: true});
    },
  };
}

/**
 * Makes one blob present in `repo`, recording it in the journal: a blob the journal and a HEAD
 * both confirm is skipped; one this push already put into another repository is mounted from
 * there; anything else is uploaded.
 */
export async function pushBlobJournaled(
  client: RegistryClient,
  journal: PushJournal,
  blob: {repo: string; digest: string; size: number; open: () => Readable},
): Promise<BlobOutcome> {
  const outcome = await client.ensureBlob(blob.repo, blob.digest, blob.size, blob.open, journal.reposWithBlob(blob.digest));
  await journal.recordBlob(blob.repo, blob.digest);
  return outcome;
}
