/**
 * Typed errors and the exit-code contract (DESIGN §9).
 *
 * Services throw these; only the base command turns them into text and an exit code, so
 * every failure an operator sees has the same "what happened / what to do" shape.
 */

import {dirname} from 'node:path';

export const ExitCode = {
  ok: 0,
  error: 1,
  usage: 2,
  checkFailed: 3,
  partial: 4,
  locked: 5,
  verification: 6,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** The machine-readable kind of a failure; it is the `error.kind` field of `--json` output. */
export type ErrorKind = 'user' | 'usage' | 'check' | 'partial' | 'locked' | 'verification' | 'bug';

export interface ErrorDetails {
  /** Concrete next steps, phrased as commands or edits the operator can make. */
  readonly nextSteps?: readonly string[];
  /** Structured context for `--json` consumers. Never put a secret here. */
  readonly data?: Record<string, unknown>;
  readonly cause?: unknown;
}

export abstract class DforgeError extends Error {
  abstract readonly kind: ErrorKind;
  abstract readonly exitCode: ExitCode;
  readonly nextSteps: readonly string[];
  readonly data: Record<string, unknown>;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.nextSteps = details.nextSteps ?? [];
    this.data = details.data ?? {};
  }

  /** Always carries `data` (`{}` when there is none), so `--json` consumers never test for it. */
  toJSON(): ErrorJson {
    return {
      kind: this.kind,
      code: this.name,
      message: this.message,
      exitCode: this.exitCode,
      nextSteps: this.nextSteps,
      data: this.data,
    };
  }
}

/** The `error` member of a failed command's `--json` output. */
export interface ErrorJson {
  /** What sort of failure; it decides the exit code. */
  readonly kind: ErrorKind;
  /** The error class name, e.g. UsageError. */
  readonly code: string;
  readonly message: string;
  readonly exitCode: ExitCode;
  readonly nextSteps: readonly string[];
  /** Structured context (a report, the offending items); `{}` when there is none. */
  readonly data: Record<string, unknown>;
}

/**
 * Version of the error envelope's shape. Like a success's `schemaVersion` it sits at the top level,
 * so a consumer reads one field before deciding how to parse either outcome.
 */
export const ERROR_SCHEMA_VERSION = 1;

/** What every failed command prints with `--json` (docs/schemas/error.schema.json). */
export interface ErrorEnvelope {
  readonly schemaVersion: typeof ERROR_SCHEMA_VERSION;
  readonly error: ErrorJson;
}

export function errorEnvelope(err: DforgeError): ErrorEnvelope {
  return {schemaVersion: ERROR_SCHEMA_VERSION, error: err.toJSON()};
}

/** Something the operator can fix: bad config, missing binary, wrong flag value. */
export class UserError extends DforgeError {
  readonly kind = 'user';
  readonly exitCode = ExitCode.error;
}

/** The command line itself is wrong (unknown flag, missing argument). */
export class UsageError extends DforgeError {
  readonly kind = 'usage';
  readonly exitCode = ExitCode.usage;
}

/** A preflight or posture check failed. */
export class CheckFailedError extends DforgeError {
  readonly kind = 'check';
  readonly exitCode = ExitCode.checkFailed;
}

/** Some items of an `--all` run failed; the others completed. */
export class PartialError extends DforgeError {
  readonly kind = 'partial';
  readonly exitCode = ExitCode.partial;
}

/** Another run holds the lock this operation needs. */
export class LockedError extends DforgeError {
  readonly kind = 'locked';
  readonly exitCode = ExitCode.locked;
}

/** Tampering, a bad signature, a checksum mismatch or an undecryptable payload. */
export class VerificationError extends DforgeError {
  readonly kind = 'verification';
  readonly exitCode = ExitCode.verification;
}

/** An invariant broke inside dforge. The message says so, because the operator cannot fix it. */
export class BugError extends DforgeError {
  readonly kind = 'bug';
  readonly exitCode = ExitCode.error;
}

/**
 * Operating-system failures an operator can fix (a full disk, a permission) become user errors
 * naming the path; anything else untyped is a bug.
 */
export function toDforgeError(err: unknown, context: {dir?: string} = {}): DforgeError {
  if (err instanceof DforgeError) return err;
  const sys = err as NodeJS.ErrnoException;
  const where = sys?.path ?? context.dir ?? 'the install directory';
  if (sys?.code === 'ENOSPC' || sys?.code === 'EDQUOT') {
    return new UserError(`no space left on the device holding ${where}; nothing was changed`, {
      nextSteps: [`Free space (check with: df -h ${sys.path ? dirname(sys.path) : (context.dir ?? '<dir>')}), then re-run.`],
      cause: err,
    });
  }
  if (sys?.code === 'EACCES' || sys?.code === 'EPERM' || sys?.code === 'EROFS') {
    return new UserError(`cannot write ${where}: ${sys.code}`, {
      nextSteps: ['Run dforge as the owner of the install directory (--dir), or fix its permissions.'],
      cause: err,
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new BugError(`unexpected internal error: ${message}`, {
    nextSteps: ['This is a bug in dforge. Re-run with DEBUG=dforge* and report the output.'],
    cause: err,
  });
}
