/**
 * The sizing rules preflight applies, and how it compares a measured value with them.
 *
 * Why a tolerance: hosts report less than what was bought. A "16 GB" machine shows about
 * 15.6 GiB in MemTotal (firmware and the kernel keep the rest), and a 10 GiB volume shows a little
 * less free once formatted. A rule is met when the value is within TOLERANCE below it, so the
 * machine the operator sized by the rule passes, and a clearly smaller one does not.
 */

export const TOLERANCE = 0.05;

/** Below `minimum` fails (dforge would not run reliably); below `recommended` warns. */
export interface Band {
  readonly minimum: number;
  readonly recommended: number;
}

export interface HostThresholds {
  readonly cpus: Band;
  readonly memoryBytes: Band;
  /** Free space needed at each data location. */
  readonly minFreeBytes: number;
}

const GiB = 1024 ** 3;

/**
 * Per target: compose runs PostgreSQL, the auth database, auth, app and the proxy in containers,
 * with images and volumes under Docker's root; embedded runs PostgreSQL alone from host binaries.
 * k8s has no entry: the cluster's nodes are sized by Kubernetes, not by the host running dforge.
 */
export const HOST_THRESHOLDS: Readonly<Record<'compose' | 'embedded', HostThresholds>> = {
  compose: {cpus: {minimum: 2, recommended: 4}, memoryBytes: {minimum: 4 * GiB, recommended: 16 * GiB}, minFreeBytes: 10 * GiB},
  embedded: {cpus: {minimum: 1, recommended: 2}, memoryBytes: {minimum: 2 * GiB, recommended: 4 * GiB}, minFreeBytes: 2 * GiB},
};

/** A file system fuller than this warns: PostgreSQL's WAL and backups grow in bursts. */
export const DISK_USED_WARN_RATIO = 0.85;

/**
 * `ulimit -n`: PostgreSQL and the proxy hold a descriptor per connection and per open file; 1024
 * (a common default) runs out under load, 65536 is what their packaging sets.
 */
export const OPEN_FILES: Band = {minimum: 1024, recommended: 65_536};

/** True when `value` meets `threshold` within the tolerance. */
export function meets(value: number, threshold: number, tolerance = TOLERANCE): boolean {
  return value >= threshold * (1 - tolerance);
}

export function grade(value: number, band: Band, tolerance = TOLERANCE): 'pass' | 'warn' | 'fail' {
  if (!meets(value, band.minimum, tolerance)) return 'fail';
  return meets(value, band.recommended, tolerance) ? 'pass' : 'warn';
}
