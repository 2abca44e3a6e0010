import {execFile} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';

import type {CheckOutcome, PreflightCheck, PreflightContext} from '../check.js';
import {formatBytes} from '../../ui/bytes.js';
import {grade, HOST_THRESHOLDS, OPEN_FILES} from '../thresholds.js';

/** uname -m of the architectures dForge images and PostgreSQL packages exist for. */
const SUPPORTED_MACHINES = ['x86_64', 'aarch64'];

export const platformCheck: PreflightCheck = {
  id: 'host.platform',
  title: 'Operating system and architecture',
  async run() {
    const machine = os.machine();
    const detail = `${os.type()} ${machine} (kernel ${os.release()})`;
    if (process.platform === 'linux' && SUPPORTED_MACHINES.includes(machine)) return {status: 'pass', detail};
    return {status: 'fail', detail, remedy: 'dForge runs on Linux on x86_64 or arm64; use such a host.'};
  },
};

function sizing(ctx: PreflightContext): (typeof HOST_THRESHOLDS)['compose'] {
  return HOST_THRESHOLDS[ctx.target === 'embedded' ? 'embedded' : 'compose'];
}

export const cpuCheck: PreflightCheck = {
  id: 'host.cpu',
  title: 'CPU count',
  async run(ctx) {
    const band = sizing(ctx).cpus;
    // availableParallelism honours the CPU affinity dforge (and what it starts) is confined to.
    const cpus = os.availableParallelism();
    const status = grade(cpus, band);
    return {
      status,
      detail: `${cpus} CPUs (${ctx.target}: minimum ${band.minimum}, recommended ${band.recommended})`,
      ...(status === 'pass' ? {} : {remedy: `Give the host at least ${status === 'fail' ? band.minimum : band.recommended} CPUs.`}),
    };
  },
};

export const memoryCheck: PreflightCheck = {
  id: 'host.memory',
  title: 'Memory',
  async run(ctx) {
    const band = sizing(ctx).memoryBytes;
    const total = os.totalmem();
    const status = grade(total, band);
    return {
      status,
      detail: `${formatBytes(total)} (${ctx.target}: minimum ${formatBytes(band.minimum)}, recommended ${formatBytes(band.recommended)})`,
      ...(status === 'pass' ? {} : {remedy: `Give the host at least ${formatBytes(status === 'fail' ? band.minimum : band.recommended)} of memory.`}),
    };
  },
};

/** Parses the soft "Max open files" limit out of /proc/<pid>/limits; Infinity for "unlimited". */
export function parseOpenFilesLimit(limits: string): number | undefined {
  const match = /^Max open files\s+(\S+)/m.exec(limits);
  if (!match) return undefined;
  return match[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(match[1]);
}

export const openFilesCheck: PreflightCheck = {
  id: 'host.open-files',
  title: 'Open files limit (ulimit -n)',
  async run(ctx) {
    // Node has no getrlimit; procfs shows the limit this process (and what it starts) inherits.
    const limit = parseOpenFilesLimit(await fs.readFile('/proc/self/limits', 'utf8'));
    if (limit === undefined || Number.isNaN(limit)) return {status: 'warn', detail: 'no "Max open files" line in /proc/self/limits', remedy: 'Check ulimit -n by hand; it should be at least 65536.'};
    const status = grade(limit, OPEN_FILES, 0);
    // What dforge starts inherits this limit; a systemd unit sets its own.
    const services = ctx.target === 'embedded' ? 'or run PostgreSQL from the unit dforge db unit prints (it sets LimitNOFILE=65536)' : 'and check LimitNOFILE of docker.service';
    return {
      status,
      detail: `${limit === Number.POSITIVE_INFINITY ? 'unlimited' : limit} (minimum ${OPEN_FILES.minimum}, recommended ${OPEN_FILES.recommended})`,
      ...(status === 'pass' ? {} : {remedy: `Raise it to ${OPEN_FILES.recommended} ("nofile" in /etc/security/limits.conf, then log in again), ${services}.`}),
    };
  },
};

/** Asks a command, and gives up quietly: each clock source below is optional. */
function ask(file: string, args: string[], ctx: PreflightContext, signal: AbortSignal): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(file, args, {env: ctx.env, signal, timeout: 5_000, encoding: 'utf8'}, (err, stdout) => resolve(err ? undefined : stdout));
  });
}

export const timeSyncCheck: PreflightCheck = {
  id: 'host.time',
  title: 'Clock synchronised (NTP)',
  async run(ctx, signal): Promise<CheckOutcome> {
    // A skewed clock breaks TLS validity windows, JWT expiry and the order of the audit log.
    const remedy = 'Enable time synchronisation: systemctl enable --now systemd-timesyncd (or install chrony), then check with timedatectl.';
    const timedatectl = (await ask('timedatectl', ['show', '-p', 'NTPSynchronized', '--value'], ctx, signal))?.trim();
    if (timedatectl === 'yes') return {status: 'pass', detail: 'synchronised (timedatectl)'};
    if (timedatectl === 'no') return {status: 'warn', detail: 'not synchronised (timedatectl)', remedy};
    // systemd-timesyncd touches this file once it has synchronised.
    if (await fs.stat('/run/systemd/timesync/synchronized').then(() => true, () => false)) return {status: 'pass', detail: 'synchronised (systemd-timesyncd)'};
    const chrony = await ask('chronyc', ['-n', 'tracking'], ctx, signal);
    const leap = chrony && /^Leap status\s*:\s*(.+)$/m.exec(chrony)?.[1]?.trim();
    if (leap) return leap === 'Not synchronised' ? {status: 'warn', detail: 'not synchronised (chronyc)', remedy} : {status: 'pass', detail: `synchronised (chronyc: ${leap})`};
    return {status: 'warn', detail: 'unknown: no answer from timedatectl or chronyc, and no systemd-timesyncd mark', remedy};
  },
};

/** The Linux security modules confining containers and services, read from sysfs. */
export async function securityModules(sys = '/sys'): Promise<{selinux: 'enforcing' | 'permissive' | 'disabled'; apparmor: boolean}> {
  const read = (file: string): Promise<string | undefined> => fs.readFile(`${sys}/${file}`, 'utf8').then((s) => s.trim(), () => undefined);
  const [enforce, apparmor] = await Promise.all([read('fs/selinux/enforce'), read('module/apparmor/parameters/enabled')]);
  return {selinux: enforce === '1' ? 'enforcing' : enforce === '0' ? 'permissive' : 'disabled', apparmor: apparmor === 'Y'};
}

export const securityModulesCheck: PreflightCheck = {
  id: 'host.lsm',
  title: 'SELinux / AppArmor',
  async run() {
    const {selinux, apparmor} = await securityModules();
    const detail = `SELinux ${selinux}, AppArmor ${apparmor ? 'enabled' : 'disabled'}`;
    if (selinux === 'enforcing' || apparmor) return {status: 'pass', detail};
    return {
      status: 'warn',
      detail,
      remedy: 'No mandatory access control confines the services beyond namespaces; enable AppArmor (Debian, Ubuntu) or SELinux in enforcing mode (RHEL family).',
    };
  },
};
