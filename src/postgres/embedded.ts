/**
 * The embedded data plane: a PostgreSQL cluster run from the host's own binaries inside the
 * install directory, for installs without Docker or Kubernetes.
 *
 * Its configuration is the security architecture of DESIGN §1 made concrete: scram-sha-256
 * everywhere, TLS 1.3 only on TCP, the superuser only on a private unix socket, and a pg_hba
 * that lets each tenant role reach nothing but the database of its own name.
 */

import {spawn} from 'node:child_process';
import {X509Certificate, createPrivateKey, randomBytes} from 'node:crypto';
import {constants, promises as fs} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import {UserError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import {pgToolPath, supportsSystemdNotify, type PostgresBinaries, type PostgresTool} from './binaries.js';
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

export interface EmbeddedTls {
  /** The server certificate, optionally followed by its intermediates. */
  readonly certPem: string;
  readonly keyPem: string;
  /** The install CA. */
  readonly caPem: string;
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

/**
 * How every cluster dforge creates is initialised, whoever runs initdb: this data plane, or the
 * image's entrypoint through POSTGRES_INITDB_ARGS in compose and Kubernetes. With checksums,
 * PostgreSQL detects a page damaged on disk when it reads it, instead of serving it.
 */
export const INITDB_ARGS = ['--auth-local=scram-sha-256', '--auth-host=scram-sha-256', '--encoding=UTF8', '--data-checksums'] as const;
/** Byte-order collation under a UTF-8 character set; the embedded plane falls back to --no-locale without it. */
export const INITDB_LOCALE = '--locale=C.UTF-8';

// Files dforge owns inside the data directory, relative to it.
const CONF_FILE = 'dforge.conf';
const HBA_FILE = 'pg_hba.conf';
const CERT_FILE = 'server.crt';
const KEY_FILE = 'server.key';
const CA_FILE = 'root.crt';
const MAIN_CONF = 'postgresql.conf';
const INCLUDE_LINE = `include = '${CONF_FILE}'`;

/** What pg_ctl captures before the logging collector takes over: the reason a start failed, mostly. */
const STARTUP_LOG = 'startup.log';
const SERVER_LOG = /^postgresql-.*\.log$/;

const START_TIMEOUT_SECONDS = 300;
const STOP_TIMEOUT_SECONDS = 300;
const LOG_TAIL_LINES = 30;
const CHILD_ENV = {PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', TZ: 'UTC'} as const;

// Paths end up unquoted in a systemd unit and quoted in postgresql.conf: keep them plain.
const PLAIN_PATH = /^\/[A-Za-z0-9._/+@:,=-]*$/;
// Role names are written unquoted into pg_hba.conf; these words mean something else there.
const ROLE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const HBA_KEYWORDS = new Set(['all', 'sameuser', 'samerole', 'samegroup', 'replication']);
// A superuser with a database of its own name would match the sameuser lines over TCP.
const DATABASE_NAMES = new Set(['postgres', 'template0', 'template1', 'dforge_control']);
const TEMP_TREES = ['/tmp', '/var/tmp'];
// sun_path is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH = 107;

interface ToolRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

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
    const desired: Array<[string, string]> = [
      [CERT_FILE, options.tls.certPem],
      [KEY_FILE, options.tls.keyPem],
      [CA_FILE, options.tls.caPem],
      [CONF_FILE, this.renderConf()],
      [HBA_FILE, renderHba(options.superuser, options.provisionerRole, this.runDir)],
    ];
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
    const tail = await this.logTail(startedAt);
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

  private renderConf(): string {
    const lines = [
      '# Written by dforge on every install run; edits here are replaced.',
      '# Local overrides belong in ALTER SYSTEM (postgresql.auto.conf), which PostgreSQL reads after this file.',
      '# Durability settings (fsync, synchronous_commit, full_page_writes) are deliberately absent:',
      "# PostgreSQL's defaults are the durable ones.",
      '',
      '# Loopback TCP for the provisioner and the tenants; a private unix socket for the superuser.',
      `listen_addresses = '${this.listenAddresses.join(',')}'`,
      `port = ${this.port}`,
      `unix_socket_directories = '${this.runDir}'`,
      "cluster_name = 'dforge'",
      '',
      '# TLS 1.3 only; the certificates come from the install CA. Paths are relative to the data directory.',
      'ssl = on',
      "ssl_min_protocol_version = 'TLSv1.3'",
      '# ssl_ciphers governs TLS 1.2 and older only, which the line above refuses: should the minimum ever',
      '# be lowered, only forward-secret AEAD suites remain.',
      "ssl_ciphers = 'ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256'",
      'ssl_prefer_server_ciphers = on',
      `ssl_cert_file = '${CERT_FILE}'`,
      `ssl_key_file = '${KEY_FILE}'`,
      `ssl_ca_file = '${CA_FILE}'`,
      "password_encryption = 'scram-sha-256'",
      '# The socket is the superuser\'s way in: the server account alone may connect (root passes anyway).',
      'unix_socket_permissions = 0700',
      '',
      '# Who connected from where, and when. One file per weekday, truncated a week later, so disk use stays bounded.',
      'logging_collector = on',
      `log_directory = '${this.runDir}'`,
      "log_filename = 'postgresql-%a.log'",
      'log_truncate_on_rotation = on',
      "log_rotation_age = '1d'",
      'log_rotation_size = 0',
      'log_file_mode = 0600',
      'log_connections = on',
      'log_disconnections = on',
      '# The client\'s port is on its connection line, to which [%p] ties every later line of the session.',
      "log_line_prefix = '%m [%p] %q%u@%d %h app=%a '",
      'log_hostname = off',
      "log_timezone = 'UTC'",
      '# Errors with their SQLSTATE; checkpoints, lock waits past deadlock_timeout, every temporary file and',
      '# every replication command (a base backup copies every tenant).',
      'log_error_verbosity = verbose',
      'log_checkpoints = on',
      'log_lock_waits = on',
      'log_temp_files = 0',
      'log_replication_commands = on',
      '',
      '# A statement\'s text is logged when it fails (log_min_error_statement) or raises a LOG line (a lock',
      '# wait, a temporary file, RAISE LOG); with the log_parameter_* lines below, its bind parameters never',
      '# are. So a password verifier travels as a bind parameter only. log_statement stays none while dforge',
      '# still sends ALTER ROLE ... PASSWORD as SQL text, which ddl would log.',
      "log_statement = 'none'",
      'log_parameter_max_length = 0',
      'log_parameter_max_length_on_error = 0',
      '',
    ];
    return lines.join('\n');
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
    if (current.split('\n').some((line) => line.trim() === INCLUDE_LINE)) return false;
    const separator = current.endsWith('\n') || current === '' ? '' : '\n';
    const addition = `\n# dforge: its settings, rewritten on every install run. Settings below this line override them.\n${INCLUDE_LINE}\n`;
    await this.writeOwned(file, `${current}${separator}${addition}`);
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

  /** The startup log, then the collector log written since `sinceMs`, with any password literal masked. */
  private async logTail(sinceMs: number): Promise<string> {
    const sections: string[] = [];
    const startup = await readNoFollow(path.join(this.runDir, STARTUP_LOG));
    if (startup?.trim()) sections.push(lastLines(startup, LOG_TAIL_LINES));
    const logs = await Promise.all(
      (await fs.readdir(this.runDir).catch(() => [] as string[]))
        .filter((name) => SERVER_LOG.test(name))
        .map(async (name) => ({file: path.join(this.runDir, name), mtime: (await fs.lstat(path.join(this.runDir, name))).mtimeMs})),
    );
    const newest = logs.filter((l) => l.mtime >= sinceMs - 1000).sort((a, b) => b.mtime - a.mtime)[0];
    const collected = newest ? await readNoFollow(newest.file) : undefined;
    if (collected?.trim()) sections.push(lastLines(collected, LOG_TAIL_LINES));
    return redactPasswords(sections.join('\n'));
  }

  private pgCtl(args: string[], timeoutSeconds: number): Promise<ToolRun> {
    return this.tool('pg_ctl', args, timeoutSeconds);
  }

  private tool(tool: PostgresTool, args: string[], timeoutSeconds: number): Promise<ToolRun> {
    return this.exec(pgToolPath(this.bins, tool), args, timeoutSeconds);
  }

  /** Runs a child as the server account with a minimal environment; no secret is ever in `args`. */
  private exec(file: string, args: string[], timeoutSeconds: number): Promise<ToolRun> {
    return new Promise((resolve, reject) => {
      const child = spawn(file, args, {
        // The caller's working directory may be one the server account cannot enter.
        cwd: '/',
        env: CHILD_ENV,
        stdio: ['ignore', 'pipe', 'pipe'],
        timeout: timeoutSeconds * 1000,
        ...(this.account ? {uid: this.account.uid, gid: this.account.gid} : {}),
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      child.on('error', (err) =>
        reject(new UserError(`cannot run ${file}: ${err.message}`, {nextSteps: [`Check that ${file} exists and is executable by ${this.account?.user ?? 'the current user'}.`], cause: err})),
      );
      child.on('close', (code, signal) => resolve({code: code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1), stdout, stderr}));
    });
  }
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

/**
 * pg_hba.conf, replaced whole: the order matters (first match wins) and anything not listed is refused.
 * Posture compares the server's live rules with these lines (src/posture/probes/hba.ts).
 */
export function renderHba(superuser: string, provisioner: string, runDir: string): string {
  const widths = [10, 10, 24, 16];
  const row = (...cols: string[]): string => cols.map((c, i) => (i === cols.length - 1 ? c : `${c} `.padEnd(widths[i] ?? 0))).join('');
  return [
    '# pg_hba.conf: written by dforge; any edit here is replaced on the next install run.',
    '#',
    '# Every line requires scram-sha-256. Every TCP line is hostssl, and the server accepts TLS 1.3 only,',
    '# so a client that does not negotiate TLS matches no line and is refused.',
    '#',
    `# local/${superuser}: the superuser logs in only through the unix socket in ${runDir},`,
    '#   a directory only the server account and root can enter: administration never crosses a network.',
    `# hostssl all ${provisioner}: the provisioner reaches every database (tenant databases and`,
    '#   dforge_control) over TLS on loopback. It is not a superuser; CONNECT grants still apply.',
    '# hostssl sameuser all: every other role reaches only the database with the same name as the role,',
    '#   so tenant_acme opens tenant_acme and nothing else. REVOKE CONNECT FROM PUBLIC and a per-role',
    '#   CONNECTION LIMIT are the other two layers of tenant isolation.',
    '#',
    row('# TYPE', 'DATABASE', 'USER', 'ADDRESS', 'METHOD'),
    row('local', 'all', superuser, '', 'scram-sha-256'),
    row('hostssl', 'all', provisioner, '127.0.0.1/32', 'scram-sha-256'),
    row('hostssl', 'all', provisioner, '::1/128', 'scram-sha-256'),
    row('hostssl', 'sameuser', 'all', '127.0.0.1/32', 'scram-sha-256'),
    row('hostssl', 'sameuser', 'all', '::1/128', 'scram-sha-256'),
    '',
  ].join('\n');
}

function validateRoles(superuser: string, provisioner: string): void {
  for (const [what, name] of [['superuser', superuser], ['provisioner role', provisioner]] as const) {
    if (!ROLE_NAME.test(name) || HBA_KEYWORDS.has(name)) {
      throw new UserError(`invalid PostgreSQL ${what} name ${JSON.stringify(name)}`, {
        nextSteps: ['Role names use lowercase letters, digits and _, start with a letter or _, are at most 63 characters and are not a pg_hba keyword (all, sameuser, samerole, replication).'],
      });
    }
  }
  if (superuser === provisioner) {
    throw new UserError('the superuser and the provisioner role must be different roles', {
      nextSteps: ['The provisioner is deliberately not a superuser: give it its own name.'],
    });
  }
  if (DATABASE_NAMES.has(superuser)) {
    throw new UserError(`the superuser may not be named ${superuser}: a database of that name exists, and the sameuser rule would let the superuser reach it over TCP`, {
      nextSteps: ['Choose another superuser name, e.g. dforge_admin.'],
    });
  }
}

function validateTls(tls: EmbeddedTls): void {
  let matches: boolean;
  try {
    const cert = new X509Certificate(tls.certPem);
    new X509Certificate(tls.caPem);
    matches = cert.checkPrivateKey(createPrivateKey(tls.keyPem));
  } catch (err) {
    // The message never quotes the input: it holds a private key.
    throw new UserError('the PostgreSQL TLS material is not a PEM certificate, private key and CA certificate', {
      nextSteps: ['Regenerate it with: dforge certs generate'],
      cause: err,
    });
  }
  if (!matches) {
    throw new UserError('the PostgreSQL server certificate does not belong to the given private key', {
      nextSteps: ['Regenerate the pair with: dforge certs generate'],
    });
  }
}

/**
 * Reads a file the server account may control without following a symlink it planted, so root
 * never reads (or shows in an error) a file that account points it at. Undefined when absent or
 * not a regular file.
 */
async function readNoFollow(file: string): Promise<string | undefined> {
  let handle: fs.FileHandle;
  try {
    // O_NONBLOCK: a FIFO in place of the file must not hang the read.
    handle = await fs.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return undefined;
    throw err;
  }
  try {
    if (!(await handle.stat()).isFile()) return undefined;
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}

function redactPasswords(text: string): string {
  return text.replace(/(PASSWORD\s+)'(?:[^']|'')*'/gi, "$1'[redacted]'");
}

function lastLines(text: string, count: number): string {
  return text.trimEnd().split('\n').slice(-count).join('\n');
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0] ?? '';
}
