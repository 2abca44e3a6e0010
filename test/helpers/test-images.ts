import {spawn} from 'node:child_process';
import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import type Docker from 'dockerode';

import {TEST_IMAGE_LABEL} from './docker-engine.js';

/**
 * Images the tests run, built on this machine from Debian packages because no registry is
 * reachable (scripts/test-images/base.sh explains the route). Each image carries a hash of its
 * build inputs in a label, so a warm call costs one inspect per image and an edited input rebuilds
 * only the images it feeds. Each image's Dockerfile is in scripts/test-images/<name>/, and its FROM
 * line names the Debian suite of its base, dforge-test/base:<suite>, which base.sh debootstraps.
 */
export interface TestImages {
  readonly postgres: string;
  readonly proxy: string;
  readonly standin: string;
}

/** The images the Compose end-to-end tests run (PostgreSQL 15, as the product's default). */
const TAGS: TestImages = {postgres: 'dforge-test/postgres:15', proxy: 'dforge-test/proxy:1', standin: 'dforge-test/standin:1'};
/**
 * PostgreSQL 17 from Debian trixie with what the hostile-tenant suite needs to run inside it
 * (test/adversarial/postgresql-17.test.ts).
 */
export const RUNNER_PG17_TAG = 'dforge-test/runner:pg17';
const RUNNER_PG17 = 'runner-pg17';

const BASE_REPO = 'dforge-test/base';
const INPUTS_LABEL = `${TEST_IMAGE_LABEL}.inputs`;
const SOURCES = fileURLToPath(new URL('../../scripts/test-images/', import.meta.url));
const BASE_SCRIPT = path.join(SOURCES, 'base.sh');

/** Vitest workers call in parallel and one of them builds; a lock older than any build is stale. */
const LOCK_DIR = path.join(os.tmpdir(), 'dforge-test-images.lock');
const LOCK_STALE_MS = 30 * 60_000;
const LOCK_POLL_MS = 1_000;

interface Inputs {
  readonly tag: string;
  readonly hash: string;
}

interface BaseInputs extends Inputs {
  readonly suite: string;
}

interface DockerfileInputs extends Inputs {
  readonly context: string;
  readonly base: BaseInputs;
}

export async function ensureTestImages(docker: Docker): Promise<TestImages> {
  // Each image's Dockerfile directory is named like its key.
  await ensureImages(docker, (Object.keys(TAGS) as Array<keyof TestImages>).map((name) => ({name, tag: TAGS[name]})));
  return TAGS;
}

/** The PostgreSQL 17 runner image (scripts/test-images/runner-pg17/); returns its tag. */
export async function ensureRunnerPg17Image(docker: Docker): Promise<string> {
  await ensureImages(docker, [{name: RUNNER_PG17, tag: RUNNER_PG17_TAG}]);
  return RUNNER_PG17_TAG;
}

async function ensureImages(docker: Docker, wanted: ReadonlyArray<{name: string; tag: string}>): Promise<void> {
  const images = await Promise.all(
    wanted.map(async ({name, tag}): Promise<DockerfileInputs> => {
      const context = path.join(SOURCES, name);
      const files = await filesIn(context);
      const suite = await baseSuite(path.join(context, 'Dockerfile'));
      // base.sh and the suite feed every image built on that base.
      const base: BaseInputs = {tag: `${BASE_REPO}:${suite}`, suite, hash: await hashFiles([BASE_SCRIPT], suite)};
      return {tag, context, base, hash: await hashFiles([BASE_SCRIPT, ...files], suite)};
    }),
  );
  if ((await staleOf(docker, images)).length === 0) return;

  await withBuildLock(async () => {
    // Another worker may have finished the build while this one waited for the lock.
    const stale = await staleOf(docker, images);
    if (stale.length === 0) return;
    const started = Date.now();
    const bases = [...new Map(stale.map((image) => [image.base.tag, image.base])).values()];
    for (const base of await staleOf(docker, bases)) await importBase(docker, base);
    // allSettled: the lock must not be released while a sibling build still runs.
    const results = await Promise.allSettled(stale.map((image) => buildImage(docker, image)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    log(`built ${stale.map((i) => i.tag).join(', ')} in ${Math.round((Date.now() - started) / 1000)} s`);
  });
}

/** The suite of the base a Dockerfile builds on: its first FROM must be dforge-test/base:<suite>. */
async function baseSuite(dockerfile: string): Promise<string> {
  const from = /^\s*FROM\s+(\S+)/im.exec(await fs.readFile(dockerfile, 'utf8'))?.[1];
  const suite = from?.startsWith(`${BASE_REPO}:`) ? from.slice(BASE_REPO.length + 1) : undefined;
  if (!suite || !/^[a-z]+$/.test(suite)) throw new Error(`${dockerfile} must start FROM ${BASE_REPO}:<Debian suite>, not ${from ?? 'nothing'}`);
  return suite;
}

/** The build inputs in a directory: its files, sorted; a stray directory such as __pycache__ is not one. */
async function filesIn(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, {withFileTypes: true});
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => path.join(dir, entry.name))
    .sort();
}

async function hashFiles(files: readonly string[], suite: string): Promise<string> {
  const hash = createHash('sha256').update(`suite\0${suite}\0`);
  for (const file of files) {
    const content = await fs.readFile(file);
    hash.update(`${path.relative(SOURCES, file)}\0${content.length}\0`).update(content);
  }
  return hash.digest('hex');
}

async function staleOf<T extends Inputs>(docker: Docker, images: readonly T[]): Promise<T[]> {
  const labels = await Promise.all(
    images.map((image) =>
      docker
        .getImage(image.tag)
        .inspect()
        .then((info) => info.Config.Labels?.[INPUTS_LABEL])
        .catch(() => undefined),
    ),
  );
  return images.filter((image, i) => labels[i] !== image.hash);
}

async function withBuildLock(build: () => Promise<void>): Promise<void> {
  let announced = false;
  for (;;) {
    try {
      await fs.mkdir(LOCK_DIR);
      await fs.writeFile(path.join(LOCK_DIR, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (await lockIsStale()) {
      // Renaming first lets exactly one waiter claim a stale lock. A waiter that instead moves a
      // lock taken a moment ago only causes a duplicate build, which Docker tolerates.
      const grave = `${LOCK_DIR}.stale-${process.pid}`;
      if (await fs.rename(LOCK_DIR, grave).then(() => true, () => false)) await fs.rm(grave, {recursive: true, force: true});
      continue;
    }
    if (!announced) log(`waiting for another process to build the test images (lock ${LOCK_DIR})`);
    announced = true;
    await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
  }
  try {
    await build();
  } finally {
    await fs.rm(LOCK_DIR, {recursive: true, force: true});
  }
}

/** Stale: its owner died, or it is older than any build. */
async function lockIsStale(): Promise<boolean> {
  const stat = await fs.stat(LOCK_DIR).catch(() => undefined);
  if (!stat) return false;
  if (Date.now() - stat.mtimeMs > LOCK_STALE_MS) return true;
  const pid = Number(await fs.readFile(path.join(LOCK_DIR, 'pid'), 'utf8').catch(() => ''));
  // No pid yet: the owner is between mkdir and writing it.
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/** debootstrap (base.sh) into a tarball, imported only once the script has succeeded. */
async function importBase(docker: Docker, base: BaseInputs): Promise<void> {
  log(`building ${base.tag} with debootstrap (about a minute)`);
  const previous = await imageId(docker, base.tag);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-base-'));
  try {
    const rootfs = path.join(dir, 'rootfs.tar');
    await runScript(BASE_SCRIPT, [base.suite, rootfs]);
    const [repo, tag] = base.tag.split(':') as [string, string];
    const stream = await docker.importImage(rootfs, {
      repo,
      tag,
      changes: [
        // An imported image has no environment; Dockerfiles that extend PATH need a value to extend.
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        'ENV LANG=C.UTF-8',
        `LABEL ${TEST_IMAGE_LABEL}=1`,
        `LABEL ${INPUTS_LABEL}=${base.hash}`,
      ],
    });
    await followProgress(docker, stream, base.tag);
  } finally {
    await fs.rm(dir, {recursive: true, force: true});
  }
  await removeSuperseded(docker, base.tag, previous);
}

async function runScript(script: string, args: readonly string[]): Promise<void> {
  const child = spawn('sh', [script, ...args], {stdio: ['ignore', 'pipe', 'pipe']});
  const output: Buffer[] = [];
  child.stdout.on('data', (chunk: Buffer) => output.push(chunk));
  child.stderr.on('data', (chunk: Buffer) => output.push(chunk));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  if (code !== 0) throw new Error(`${script} exited with ${code}:\n${tail(Buffer.concat(output).toString())}`);
}

async function buildImage(docker: Docker, {tag, hash, context}: DockerfileInputs): Promise<void> {
  log(`building ${tag}`);
  const previous = await imageId(docker, tag);
  const src = (await filesIn(context)).map((file) => path.basename(file));
  const stream = await docker.buildImage({context, src}, {t: tag, labels: {[INPUTS_LABEL]: hash}, rm: true, forcerm: true});
  await followProgress(docker, stream, tag);
  await removeSuperseded(docker, tag, previous);
}

async function imageId(docker: Docker, tag: string): Promise<string | undefined> {
  return docker
    .getImage(tag)
    .inspect()
    .then((info) => info.Id)
    .catch(() => undefined);
}

/**
 * A rebuilt image would otherwise leave its predecessor untagged; one a container still uses stays.
 * An unchanged build (all layers cached) yields the same id, which must not be removed.
 */
async function removeSuperseded(docker: Docker, tag: string, previous: string | undefined): Promise<void> {
  if (previous && previous !== (await imageId(docker, tag))) await docker.getImage(previous).remove().catch(() => undefined);
}

async function followProgress(docker: Docker, stream: NodeJS.ReadableStream, tag: string): Promise<void> {
  const events = await new Promise<Array<{stream?: string; error?: string}>>((resolve, reject) => {
    docker.modem.followProgress(stream, (err: Error | null, result: Array<{stream?: string; error?: string}>) => (err ? reject(err) : resolve(result)));
  });
  const failed = events.find((e) => e.error);
  if (failed) throw new Error(`building ${tag} failed: ${failed.error}\n${tail(events.map((e) => e.stream ?? '').join(''))}`);
}

function tail(text: string): string {
  return text.trimEnd().split('\n').slice(-40).join('\n');
}

function log(message: string): void {
  process.stderr.write(`[test-images] ${message}\n`);
}
