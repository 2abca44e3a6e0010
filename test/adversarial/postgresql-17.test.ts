/**
 * THE HOSTILE-TENANT SUITE AGAIN, ON POSTGRESQL 17.
 *
 * PostgreSQL 16 changed what the privilege model leans on: CREATEROLE no longer lets a role
 * administer roles it did not create, role memberships carry ADMIN, INHERIT and SET options (with
 * GRANT ... WITH INHERIT/SET defaults), and the grantor of a membership now matters. The rest of
 * test/adversarial/ runs on the host's PostgreSQL (Debian bookworm's 15). This file runs those same
 * files again, unchanged, against PostgreSQL 17, which bookworm does not have: inside a container
 * of dforge-test/runner:pg17 (Debian trixie with postgresql-17, built by test/helpers/test-images.ts),
 * with the repository and its node_modules bind-mounted read-only at their own paths, so the inner
 * run uses this checkout's dist/ and its Node.js (node_modules/node, which runs on trixie's glibc).
 * The inner run has CI=true (a missing component fails rather than skips) and EXPECTED_PG_MAJOR_ENV
 * set, so each file's clusterAccess() prints its cluster's server_version_num, read back here, and
 * fails unless it is 17. Here: exit 0, the summary line with nothing failed or skipped, every other
 * adversarial file run, and only 17 seen.
 */
import {existsSync, promises as fs, readdirSync} from 'node:fs';
import path from 'node:path';
import {PassThrough} from 'node:stream';
import {fileURLToPath} from 'node:url';

import type Docker from 'dockerode';
import {beforeAll, describe, expect, it} from 'vitest';

import {repoRoot} from '../helpers/cli.js';
import {connectDocker, dockerUnavailableReason, TEST_IMAGE_LABEL} from '../helpers/docker-engine.js';
import {EXPECTED_PG_MAJOR_ENV} from '../helpers/hostile-tenant.js';
import {missingComponent} from '../helpers/requirements.js';
import {ensureRunnerPg17Image} from '../helpers/test-images.js';

const MAJOR = 17;
/** The inner run takes about 40 s on two idle cores; the deadline allows for a machine busy with the rest of npm test. */
const INNER_DEADLINE_MS = 20 * 60_000;
const IMAGE_BUILD_TIMEOUT_MS = 15 * 60_000;

const self = path.relative(repoRoot, fileURLToPath(import.meta.url));
/** The files the inner run must run: every other adversarial file. */
const innerFiles = readdirSync(path.dirname(fileURLToPath(import.meta.url))).filter((f) => f.endsWith('.test.ts') && f !== path.basename(self));

// Inside the container this file is excluded; should it run there anyway, it must not recurse.
const inner = process.env[EXPECTED_PG_MAJOR_ENV] !== undefined;
const reason = inner ? undefined : await dockerUnavailableReason();
const available = !inner && (reason === undefined || missingComponent('Docker engine', reason!));

interface InnerRun {
  readonly exitCode: number | 'timeout';
  readonly output: string;
  readonly ms: number;
}

describe.skipIf(!available)(`the hostile-tenant suite on PostgreSQL ${MAJOR} (Debian trixie, in a container)`, () => {
  let docker: Docker;
  let image: string;

  beforeAll(async () => {
    docker = await connectDocker();
    const started = Date.now();
    image = await ensureRunnerPg17Image(docker);
    process.stderr.write(`[pg${MAJOR}] image ${image} ready in ${Date.now() - started} ms\n`);
  }, IMAGE_BUILD_TIMEOUT_MS);

  it(`passes every test of ${innerFiles.join(', ')} against a ${MAJOR} server`, async () => {
    // npm test builds dist/ before vitest runs; the inner run uses the same files through the mount.
    expect(existsSync(path.join(repoRoot, 'dist', 'commands')), 'dist/ is missing: run npm run build first').toBe(true);
    const run = await runInner(docker, image);
    const tail = run.output.trimEnd().split('\n').slice(-150).join('\n');
    process.stderr.write(`[pg${MAJOR}] inner run exited ${run.exitCode} after ${Math.round(run.ms / 1000)} s: ${/^vitest: .*$/m.exec(run.output)?.[0] ?? 'no summary line'}\n`);

    expect(run.exitCode, `inner run on PostgreSQL ${MAJOR}:\n${tail}`).toBe(0);
    const summary = /^vitest: (\d+) passed, (\d+) failed, (\d+) skipped$/m.exec(run.output);
    expect(summary, `no summary line in the inner output:\n${tail}`).not.toBeNull();
    const [passed, failed, skipped] = summary!.slice(1).map(Number) as [number, number, number];
    expect({failed, skipped}, tail).toEqual({failed: 0, skipped: 0});
    expect(passed, tail).toBeGreaterThan(0);
    // Every inner file ran, and none of them is this one.
    for (const file of innerFiles) expect(run.output, tail).toContain(`test/adversarial/${file}`);
    expect(run.output).not.toContain(self);
    // clusterAccess() prints one line per cluster it reaches (and failed its file unless it was 17);
    // the image has no other PostgreSQL, so a cluster started without it is 17 as well.
    const versions = [...run.output.matchAll(/^\[hostile-tenant\] server_version_num (\d+)$/gm)].map((m) => Number(m[1]));
    expect(versions.length, `no server_version_num line in the inner output:\n${tail}`).toBeGreaterThan(0);
    for (const v of versions) expect(Math.floor(v / 10_000)).toBe(MAJOR);
  }, INNER_DEADLINE_MS + 60_000);
});

/**
 * Runs vitest on the other adversarial files in a container of `image`, as root (the embedded
 * server then runs as the image's `postgres` account), with no network but loopback. The container
 * removes itself when it exits; on the deadline it is killed.
 */
async function runInner(docker: Docker, image: string): Promise<InnerRun> {
  // node_modules may be a symlink out of the checkout (a git worktree sharing one install): mount its target too.
  const modules = await fs.realpath(path.join(repoRoot, 'node_modules'));
  const binds = [`${repoRoot}:${repoRoot}:ro`];
  if (!modules.startsWith(`${repoRoot}${path.sep}`)) binds.push(`${modules}:${modules}:ro`);
  const container = await docker.createContainer({
    Image: image,
    // --configLoader runner: the default bundles vitest.config.ts into node_modules/.vite-temp, which is read-only here.
    Cmd: ['node_modules/.bin/vitest', 'run', 'test/adversarial', '--exclude', self, '--configLoader', 'runner'],
    WorkingDir: repoRoot,
    Env: [
      'CI=true',
      `${EXPECTED_PG_MAJOR_ENV}=${MAJOR}`,
      'NO_COLOR=1',
      'HOME=/root',
      'LANG=C.UTF-8',
      // vitest's `#!/usr/bin/env node` must find the pinned Node.js: the image has none of its own.
      `PATH=${path.join(repoRoot, 'node_modules', '.bin')}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    ],
    Labels: {[TEST_IMAGE_LABEL]: '1'},
    HostConfig: {
      Binds: binds,
      NetworkMode: 'none',
      AutoRemove: true,
      // tini as pid 1 reaps the servers that pg_ctl detaches; a zombie postmaster would look alive.
      Init: true,
      // PostgreSQL's dynamic shared memory lives in /dev/shm; Docker's default is 64 MiB.
      ShmSize: 256 * 1024 * 1024,
    },
  });
  const started = Date.now();
  const chunks: Buffer[] = [];
  const sink = new PassThrough();
  sink.on('data', (c: Buffer) => chunks.push(c));
  try {
    const attach = await container.attach({stream: true, stdout: true, stderr: true});
    container.modem.demuxStream(attach, sink, sink);
    const ended = new Promise<void>((resolve) => attach.on('end', () => resolve()));
    // Registered before start: with AutoRemove the container may be gone by the time a later wait asks.
    const exited = container.wait({condition: 'next-exit'}) as Promise<{StatusCode: number}>;
    await container.start();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), INNER_DEADLINE_MS)));
    const outcome = await Promise.race([exited, deadline]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      await container.kill().catch(() => undefined);
      await exited.catch(() => undefined);
    }
    await Promise.race([ended, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    return {exitCode: outcome === 'timeout' ? 'timeout' : outcome.StatusCode, output: Buffer.concat(chunks).toString(), ms: Date.now() - started};
  } finally {
    // AutoRemove has usually done this already; this covers a failure between create and exit.
    await container.remove({force: true}).catch(() => undefined);
  }
}
