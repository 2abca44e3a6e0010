/**
 * The embedded data plane: a PostgreSQL cluster run from the host's own binaries inside the
 * install directory, for installs without Docker or Kubernetes. This module is its lifecycle
 * (init, start, stop, status, reload, the systemd unit); what it writes into the data directory is
 * embedded-config.ts, how it runs the tools is embedded-process.ts, its logs embedded-logs.ts.
 */

import {randomBytes} from 'node:crypto';
import {constants, promises as fs} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import {UserError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import {pgToolPath, supportsSystemdNotify, type PostgresBinaries, type PostgresTool} from './binaries.js';
import {dataDirFiles, INITDB_ARGS, INITDB_LOCALE, MAIN_CONF, validateRoles, validateTls, withDforgeInclude, type EmbeddedTls} from './embedded-config.js';
import {serverLogTail, STARTUP_LOG} from './embedded-logs.js';
import {firstLine, lastLines, runAsServerAccount, unreachableError, untraversable, type ToolRun} from './embedded-process.js';
import {readNoFollow} from './read-no-follow.js';
import type {ServiceAccount} from './service-account.js';
import {renderPostgresUnit} from './systemd-unit.js';

export interface EmbeddedPostgresOptions {
  /** The cluster's data directory, e.g. <install>/data/postgres. */
  readonly dataDir: string;
  /** The unix socket directory and the server logs, e.g. <install>/run/postgres. */
  readonly runDir: string;
  readonly port: number;
  readonly bins: PostgresBinaries;
  /** The account the server runs as; undefined when dforge is not root and runs it as itself. */
  readonly account: ServiceAccount | undefined;
  /** TCP addresses to listen on. Default: IPv4 loopback only. */
  readonly listenAddresses?: readonly string[];
  readonly clock?: () => Date;
}

export interface EmbeddedInitOptions {
  readonly superuser: string;
  /** Used only when the cluster is created; an existing cluster keeps its password. */
  readonly superuserPassword: string;
  readonly tls: EmbeddedTls;
  readonly provisionerRole: string;
}

export interface EmbeddedInitResult {
  /** True when initdb ran now; false when an existing cluster was found and its data left alone. */
  readonly initialised: boolean;
  /** Files in the data directory rewritten to the desired state (empty when everything already matched). */
  readonly changedFiles: readonly string[];
  /** True when a running server was told to re-read the changed files. */
  readonly reloaded: boolean;
}

export interface EmbeddedStatus {
  readonly initialised: boolean;
  readonly running: boolean;
  readonly pid?: number;
  readonly port: number;
  /** The major version the data directory was initialised with (its PG_VERSION). */
  readonly version?: string;
  readonly dataDir: string;
  readonly startedAt?: string;
  readonly uptimeSeconds?: number;
}

export interface SystemdUnitOptions {
  readonly description?: string;
  /** Overrides the account, e.g. when rendering on a machine other than the target host. */
  readonly execUser?: string;
  readonly execGroup?: string;
}

const START_TIMEOUT_SECONDS = 300;
const STOP_TIMEOUT_SECONDS = 300;

// Paths end up unquoted in a systemd unit and quoted in postgresql.conf: keep them plain.
const PLAIN_PATH = /^\/[A-Za-z0-9._/+@:,=-]*$/;
const TEMP_TREES = ['/tmp', '/var/tmp'];
// sun_path is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH = 107;

export class EmbeddedPostgres {
  readonly dataDir: string;
  readonly runDir: string;
  readonly port: number;
  readonly listenAddresses: readonly string[];
  private readonly bins: PostgresBinaries;
  private readonly account: ServiceAccount | undefined;
  private readonly clock: () => Date;

  constructor(options: EmbeddedPostgresOptions) {
    this.dataDir = path.resolve(options.dataDir);
    this.runDir = path.resolve(options.runDir);
    this.port = options.port;
    this.listenAddresses = options.listenAddresses ?? ['127.0.0.1'];
    this.bins = options.bins;
    this.account = options.account;
    this.clock = options.clock ?? (() => new Date());
    for (const dir of [this.dataDir, this.runDir]) {
      if (!PLAIN_PATH.test(dir)) {
        throw new UserError(`unsupported PostgreSQL directory ${JSON.stringify(dir)}`, {
          nextSteps: ['Use an install directory (--dir) whose path has only letters, digits and . _ - / + @ : , = (no spaces or quotes).'],
        });
      }
    }
    if (!Number.isInteger(this.port) || this.port < 1 || this.port > 65535) {
      throw new UserError(`invalid PostgreSQL port ${this.port}`, {nextSteps: ['Choose a TCP port between 1 and 65535.']});
    }
    const socketPath = path.join(this.runDir, `.s.PGSQL.${this.port}`);
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
      throw new UserError(`the PostgreSQL socket path ${socketPath} is longer than the ${MAX_SOCKET_PATH} bytes a unix socket allows`, {
        nextSteps: ['Use a shorter install directory path (--dir).'],
      });
    }
    for (const address of this.listenAddresses) {
      if (address !== 'localhost' && address !== '*' && net.isIP(address) === 0) {
        throw new UserError(`invalid PostgreSQL listen address ${JSON.stringify(address)}`, {
          nextSteps: ['List IP addresses (e.g. 127.0.0.1, ::1), localhost, or * for all interfaces.'],
        });
      }
    }
  }

  /**
   * Creates the cluster if there is none, then brings its configuration, pg_hba.conf and TLS files
   * to the desired state. Idempotent: an existing cluster's data is never touched.
   */
  async init(options: EmbeddedInitOptions): Promise<EmbeddedInitResult> {
    validateRoles(options.superuser, options.provisionerRole);
    // initdb reads the password file's first line only: anything after a line break would be lost.
    if (options.superuserPassword === '' || /[\r\n\0]/.test(options.superuserPassword)) {
      throw new UserError('the PostgreSQL superuser password is empty or contains a line break', {
        nextSteps: ['Generate a new password (dforge generates a random one when none is configured).'],
      });
    }
    validateTls(options.tls);
    const existingVersion = await this.dataVersion();
    if (existingVersion !== undefined) await this.checkExistingCluster(existingVersion);
    await this.prepareRunDir();
    if (existingVersion === undefined) {
      await this.prepareEmptyDataDir();
      await this.assertReachable();
      await this.initdb(options.superuser, options.superuserPassword);
    } else {
      await this.assertReachable();
    }

    const changedFiles: string[] = [];
    const desired = dataDirFiles(this, options);
    for (const [name, content] of desired) {
      if (await this.ensureFile(name, content)) changedFiles.push(name);
    }
    if (await this.ensureInclude()) changedFiles.push(MAIN_CONF);

    const reloaded = changedFiles.length > 0 && existingVersion !== undefined && (await this.isRunning());
    if (reloaded) await this.reloadConfig();
    return {initialised: existingVersion === undefined, changedFiles, reloaded};
  }

  /** Starts the server and waits until it accepts connections; a running server is left alone. */
  async start(): Promise<{started: boolean}> {
    if ((await this.dataVersion()) === undefined) {
      throw new UserError(`there is no PostgreSQL cluster in ${this.dataDir} to start`, {
        nextSteps: ['Run dforge install first; it creates the cluster.'],
      });
    }
    if (await this.isRunning()) return {started: false};
    await this.prepareRunDir();
    await this.assertReachable();
    const startupLog = path.join(this.runDir, STARTUP_LOG);
    // Only this attempt's output, so the tail shown on failure is about this attempt. pg_ctl
    // recreates it as the server account; root never writes into a directory that account controls.
    await fs.rm(startupLog, {force: true});
    const startedAt = this.clock().getTime();
    const run = await this.pgCtl(['start', '-D', this.dataDir, '-l', startupLog, '-w', '-t', String(START_TIMEOUT_SECONDS), '-s'], START_TIMEOUT_SECONDS + 30);
    if (run.code === 0) return {started: true};
    const tail = await serverLogTail(this.runDir, startedAt);
    throw new UserError(`PostgreSQL did not start (pg_ctl exit ${run.code}): ${firstLine(run.stderr) || 'see the server log below'}${tail ? `\n--- server log (last lines) ---\n${tail}` : ''}`, {
      nextSteps: [
        `Read the full server log in ${this.runDir} (${STARTUP_LOG} and postgresql-<day>.log).`,
        `If the port is taken, find the holder with: ss -ltnp 'sport = :${this.port}' and choose another port.`,
        `If a previous server crashed, check for a stale ${path.join(this.dataDir, 'postmaster.pid')} whose process no longer exists.`,
      ],
      data: {dataDir: this.dataDir, port: this.port, exitCode: run.code},
    });
  }

  /** fast: roll back open transactions and disconnect clients; immediate: no checkpoint, recovery on next start. */
  async stop(options: {mode?: 'fast' | 'immediate'} = {}): Promise<{stopped: boolean}> {
    if (!(await this.isRunning())) return {stopped: false};
    const run = await this.pgCtl(['stop', '-D', this.dataDir, '-m', options.mode ?? 'fast', '-w', '-t', String(STOP_TIMEOUT_SECONDS), '-s'], STOP_TIMEOUT_SECONDS + 30);
    if (run.code !== 0) {
      throw new UserError(`PostgreSQL did not stop (pg_ctl exit ${run.code}): ${firstLine(run.stderr)}`, {
        nextSteps: [`Retry with the immediate mode, or read the server log in ${this.runDir}.`],
        data: {dataDir: this.dataDir, exitCode: run.code},
      });
    }
    return {stopped: true};
  }

  async status(): Promise<EmbeddedStatus> {
    const version = await this.dataVersion();
    const base = {port: this.port, dataDir: this.dataDir};
    if (version === undefined) return {initialised: false, running: false, ...base};
    if (!(await this.isRunning())) return {initialised: true, running: false, version, ...base};
    const pidFile = (await readNoFollow(path.join(this.dataDir, 'postmaster.pid'))) ?? '';
    // postmaster.pid: pid, data directory, start time (epoch seconds), port, socket directory, ...
    const [pidLine, , startLine, portLine] = pidFile.split('\n');
    const pid = Number(pidLine);
    const startEpoch = Number(startLine);
    const port = Number(portLine);
    return {
      initialised: true,
      running: true,
      version,
      ...base,
      ...(Number.isInteger(port) && port > 0 ? {port} : {}),
      ...(Number.isInteger(pid) && pid > 0 ? {pid} : {}),
      ...(Number.isInteger(startEpoch) && startEpoch > 0
        ? {startedAt: new Date(startEpoch * 1000).toISOString(), uptimeSeconds: Math.max(0, Math.floor(this.clock().getTime() / 1000) - startEpoch)}
        : {}),
    };
  }

  /** Makes the running server re-read its configuration, pg_hba.conf and TLS files. */
  async reloadConfig(): Promise<void> {
    const run = await this.pgCtl(['reload', '-D', this.dataDir, '-s'], 60);
    if (run.code !== 0) {
      throw new UserError(`PostgreSQL could not be told to reload its configuration: ${firstLine(run.stderr)}`, {
        nextSteps: ['Check that the server is running (dforge status); start it if it is not.'],
        data: {dataDir: this.dataDir, exitCode: run.code},
      });
    }
  }

  renderSystemdUnit(options: SystemdUnitOptions = {}): string {
    const user = options.execUser ?? this.account?.user ?? os.userInfo().username;
    const group = options.execGroup ?? (options.execUser === undefined ? this.account?.group : undefined);
    const temporary = [this.dataDir, this.runDir].find((dir) => TEMP_TREES.some((t) => dir.startsWith(`${t}/`)));
    if (temporary) {
      throw new UserError(`${temporary} is under a temporary directory, which the service's PrivateTmp hides and systemd-tmpfiles ages out`, {
        nextSteps: ['Install into a persistent directory (the default --dir is /opt/dforge), then render the unit again.'],
      });
    }
    if (!supportsSystemdNotify(this.bins)) {
      throw new UserError(`the PostgreSQL server in ${this.bins.binDir} was built without systemd support, which the dforge unit needs to know when it is ready`, {
        nextSteps: ["Install the distribution's PostgreSQL server package (apt-get install postgresql, or dnf install postgresql-server), which is built with systemd support."],
      });
    }
    return renderPostgresUnit({
      description: options.description ?? `dForge embedded PostgreSQL ${this.bins.majorVersion}`,
      user,
      ...(group === undefined ? {} : {group}),
      postgresBinary: pgToolPath(this.bins, 'postgres'),
      dataDir: this.dataDir,
      runDir: this.runDir,
      listenAddresses: this.listenAddresses,
    });
  }

  private async dataVersion(): Promise<string | undefined> {
    const text = await readNoFollow(path.join(this.dataDir, 'PG_VERSION'));
    if (text === undefined) return undefined;
    const version = text.trim();
    if (!/^\d+(\.\d+)?$/.test(version)) {
      throw new UserError(`${path.join(this.dataDir, 'PG_VERSION')} does not hold a PostgreSQL version; the data directory is damaged or not a cluster`, {
        nextSteps: [`Inspect ${this.dataDir}; restore it from a backup if it was damaged.`],
      });
    }
    return version;
  }

  private async checkExistingCluster(version: string): Promise<void> {
    if (version !== String(this.bins.majorVersion)) {
      throw new UserError(`the data directory ${this.dataDir} holds a PostgreSQL ${version} cluster, but the server binaries are PostgreSQL ${this.bins.majorVersion}; it was left untouched`, {
        nextSteps: [
          `Install the PostgreSQL ${version} server package alongside, so dforge can run this cluster again,`,
          `or upgrade the cluster with pg_upgrade (after a backup: dforge backup --all).`,
        ],
        data: {dataDir: this.dataDir, clusterVersion: version, binaryVersion: this.bins.majorVersion},
      });
    }
    if (this.account) {
      const st = await fs.stat(this.dataDir);
      if (st.uid !== this.account.uid) {
        throw new UserError(`the data directory ${this.dataDir} is owned by uid ${st.uid}, not by ${this.account.user} (uid ${this.account.uid}), so PostgreSQL would refuse to start`, {
          nextSteps: [`If this is dforge's cluster, give it back to the server account: chown -R ${this.account.user}: ${this.dataDir}`],
        });
      }
    }
  }

  private async prepareEmptyDataDir(): Promise<void> {
    await fs.mkdir(path.dirname(this.dataDir), {recursive: true, mode: 0o755});
    await fs.mkdir(this.dataDir, {recursive: true, mode: 0o700});
    const entries = await fs.readdir(this.dataDir);
    if (entries.length > 0) {
      throw new UserError(`${this.dataDir} is not empty but holds no PostgreSQL cluster; dforge will not initialise over it`, {
        nextSteps: [`Move its contents away (found: ${entries.slice(0, 5).join(', ')}${entries.length > 5 ? ', ...' : ''}), then re-run.`],
      });
    }
    await this.own(this.dataDir);
    // PostgreSQL refuses a data directory that others can read.
    await fs.chmod(this.dataDir, 0o700);
  }

  private async prepareRunDir(): Promise<void> {
    await fs.mkdir(path.dirname(this.runDir), {recursive: true, mode: 0o755});
    await fs.mkdir(this.runDir, {recursive: true, mode: 0o700});
    await this.own(this.runDir);
    // 0700: only the server account and root reach the superuser's socket and read the logs.
    await fs.chmod(this.runDir, 0o700);
  }

  /** Names the first directory the server account cannot traverse, tested by the kernel as that account. */
  private async assertReachable(): Promise<void> {
    if (!this.account) return;
    const blocked = await untraversable(this.account, [this.dataDir, this.runDir]);
    if (blocked !== undefined) throw unreachableError(this.account, blocked);
  }

  private async initdb(superuser: string, password: string): Promise<void> {
    // The password reaches initdb through a 0600 file that only the server account can read,
    // never argv or the environment, and lives only as long as initdb runs.
    const pwfile = path.join(this.runDir, `.initdb-pw-${randomBytes(8).toString('hex')}`);
    const handle = await fs.open(pwfile, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    try {
      await handle.writeFile(`${password}\n`);
      await handle.close();
      await this.own(pwfile);
      const base = ['-D', this.dataDir, '-U', superuser, `--pwfile=${pwfile}`, ...INITDB_ARGS];
      let run = await this.tool('initdb', [...base, INITDB_LOCALE], 600);
      // Hosts without a C.UTF-8 locale (old glibc, minimal images) get byte-order collation, which sorts identically.
      if (run.code !== 0 && /locale/i.test(run.stderr) && (await fs.readdir(this.dataDir)).length === 0) {
        run = await this.tool('initdb', [...base, '--no-locale'], 600);
      }
      if (run.code !== 0) {
        throw new UserError(`initdb could not create the PostgreSQL cluster in ${this.dataDir}: ${lastLines(run.stderr, 5)}`, {
          nextSteps: ['Fix the cause above (disk space, permissions), empty the directory, then re-run.'],
          data: {dataDir: this.dataDir, exitCode: run.code},
        });
      }
    } finally {
      await handle.close().catch(() => {});
      await fs.rm(pwfile, {force: true});
    }
  }

  /** Writes `name` in the data directory when its bytes differ; reports whether it did. */
  private async ensureFile(name: string, content: string): Promise<boolean> {
    const file = path.join(this.dataDir, name);
    const current = await readNoFollow(file);
    if (current === content && (await this.hasOwnerAndMode(file))) return false;
    await this.writeOwned(file, content);
    return true;
  }

  private async hasOwnerAndMode(file: string): Promise<boolean> {
    const st = await fs.lstat(file);
    return (st.mode & 0o777) === 0o600 && (this.account === undefined || st.uid === this.account.uid);
  }

  private async ensureInclude(): Promise<boolean> {
    const file = path.join(this.dataDir, MAIN_CONF);
    const current = await readNoFollow(file);
    if (current === undefined) {
      throw new UserError(`${file} is missing; the cluster in ${this.dataDir} is incomplete`, {
        nextSteps: [`Restore ${MAIN_CONF} (a copy from initdb of the same major version works), then re-run.`],
      });
    }
    const included = withDforgeInclude(current);
    if (included === undefined) return false;
    await this.writeOwned(file, included);
    return true;
  }

  private async writeOwned(file: string, content: string): Promise<void> {
    await writeFileAtomic(file, content, {mode: 0o600});
    // PostgreSQL reads its private key only when the server account owns it with mode 0600.
    await this.own(file);
  }

  private async own(file: string): Promise<void> {
    // lchown: the server account controls these directories and could swap a file for a symlink
    // to one of root's; following it would hand that file over.
    if (this.account) await fs.lchown(file, this.account.uid, this.account.gid);
  }

  private async isRunning(): Promise<boolean> {
    if ((await this.dataVersion()) === undefined) return false;
    // pg_ctl status: 0 running, 3 not running, 4 data directory not accessible.
    const run = await this.pgCtl(['status', '-D', this.dataDir], 30);
    if (run.code === 0) return true;
    if (run.code === 3) return false;
    throw new UserError(`cannot tell whether PostgreSQL is running: ${firstLine(run.stderr) || `pg_ctl status exit ${run.code}`}`, {
      nextSteps: [`Check that ${this.account?.user ?? 'the current user'} can read ${this.dataDir}.`],
      data: {dataDir: this.dataDir, exitCode: run.code},
    });
  }

  private pgCtl(args: string[], timeoutSeconds: number): Promise<ToolRun> {
    return this.tool('pg_ctl', args, timeoutSeconds);
  }

  private tool(tool: PostgresTool, args: string[], timeoutSeconds: number): Promise<ToolRun> {
    return runAsServerAccount(this.account, pgToolPath(this.bins, tool), args, timeoutSeconds);
  }
}

