/**
 * How dforge runs programs for an embedded cluster: as the server account, from /, with a minimal
 * environment and a timeout; and how it tells that account cannot reach the cluster's directories.
 */

import {spawn} from 'node:child_process';
import os from 'node:os';
import path from 'node:path';

import {UserError} from '../errors.js';
import type {ServiceAccount} from './service-account.js';

const CHILD_ENV = {PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', TZ: 'UTC'} as const;

export interface ToolRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a child as the server account (or as dforge when undefined) with a minimal environment; no secret is ever in `args`. */
export function runAsServerAccount(account: ServiceAccount | undefined, file: string, args: string[], timeoutSeconds: number): Promise<ToolRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      // The caller's working directory may be one the server account cannot enter.
      cwd: '/',
      env: CHILD_ENV,
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: timeoutSeconds * 1000,
      ...(account ? {uid: account.uid, gid: account.gid} : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', (err) =>
      reject(new UserError(`cannot run ${file}: ${err.message}`, {nextSteps: [`Check that ${file} exists and is executable by ${account?.user ?? 'the current user'}.`], cause: err})),
    );
    child.on('close', (code, signal) => resolve({code: code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1), stdout, stderr}));
  });
}

/**
 * The first of `leaves` and their ancestors, shortest first, that `account` cannot traverse (x),
 * tested by the kernel as that account; undefined when it reaches all of them.
 */
export async function untraversable(account: ServiceAccount, leaves: readonly string[]): Promise<string | undefined> {
  const dirs = new Set<string>();
  for (const leaf of leaves) {
    for (let dir = path.resolve(leaf); ; dir = path.dirname(dir)) {
      dirs.add(dir);
      if (dir === path.dirname(dir)) break;
    }
  }
  const ordered = [...dirs].sort((a, b) => a.length - b.length);
  const run = await new Promise<{code: number | null; stdout: string}>((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', 'for d in "$@"; do [ -x "$d" ] || { printf %s "$d"; exit 1; }; done', 'sh', ...ordered], {
      cwd: '/',
      env: CHILD_ENV,
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 30_000,
      uid: account.uid,
      gid: account.gid,
    });
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({code, stdout}));
  });
  return run.code === 0 ? undefined : run.stdout || ordered[0] || '/';
}

/** The refusal for a directory the server account cannot traverse, with the two ways out. */
export function unreachableError(account: ServiceAccount, blocked: string): UserError {
  return new UserError(`the PostgreSQL server account ${account.user} cannot reach ${blocked}`, {
    nextSteps: [
      `Let it traverse the directory: chmod o+x ${blocked} (or chown it to ${account.user}), then re-run;`,
      `or choose an install directory every parent of which ${account.user} can enter, e.g. --dir /opt/dforge (a mktemp -d directory is 0700 and root's alone).`,
    ],
    data: {blocked, account: account.user},
  });
}

export function lastLines(text: string, count: number): string {
  return text.trimEnd().split('\n').slice(-count).join('\n');
}

export function firstLine(text: string): string {
  return text.trim().split('\n')[0] ?? '';
}
