/**
 * What dforge writes into an embedded cluster's data directory, as text: dforge.conf (included from
 * postgresql.conf), pg_hba.conf and the TLS files, and the checks on role names and TLS material
 * made before any of it is written. The security architecture of DESIGN §1 made concrete:
 * scram-sha-256 everywhere, TLS 1.3 only on TCP, the superuser only on a private unix socket, and a
 * pg_hba that lets each tenant role reach nothing but the database of its own name.
 */

import {X509Certificate, createPrivateKey} from 'node:crypto';

import {UserError} from '../errors.js';

export interface EmbeddedTls {
  /** The server certificate, optionally followed by its intermediates. */
  readonly certPem: string;
  readonly keyPem: string;
  /** The install CA. */
  readonly caPem: string;
}

/** Where the server listens, which its configuration names. */
export interface EmbeddedServer {
  readonly listenAddresses: readonly string[];
  readonly port: number;
  /** The unix socket directory and the server logs. */
  readonly runDir: string;
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
export const MAIN_CONF = 'postgresql.conf';
const INCLUDE_LINE = `include = '${CONF_FILE}'`;

// Role names are written unquoted into pg_hba.conf; these words mean something else there.
const ROLE_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const HBA_KEYWORDS = new Set(['all', 'sameuser', 'samerole', 'samegroup', 'replication']);
// A superuser with a database of its own name would match the sameuser lines over TCP.
const DATABASE_NAMES = new Set(['postgres', 'template0', 'template1', 'dforge_control']);

/** The files dforge owns in the data directory, by name relative to it, with the bytes each must hold. */
export function dataDirFiles(server: EmbeddedServer, options: {readonly tls: EmbeddedTls; readonly superuser: string; readonly provisionerRole: string}): Array<[string, string]> {
  return [
    [CERT_FILE, options.tls.certPem],
    [KEY_FILE, options.tls.keyPem],
    [CA_FILE, options.tls.caPem],
    [CONF_FILE, renderEmbeddedConf(server)],
    [HBA_FILE, renderHba(options.superuser, options.provisionerRole, server.runDir)],
  ];
}

/** postgresql.conf with dforge.conf included at its end, or undefined when it already is. */
export function withDforgeInclude(current: string): string | undefined {
  if (current.split('\n').some((line) => line.trim() === INCLUDE_LINE)) return undefined;
  const separator = current.endsWith('\n') || current === '' ? '' : '\n';
  const addition = `\n# dforge: its settings, rewritten on every install run. Settings below this line override them.\n${INCLUDE_LINE}\n`;
  return `${current}${separator}${addition}`;
}

/** dforge.conf, the settings dforge owns, included from postgresql.conf and replaced whole. */
export function renderEmbeddedConf(server: EmbeddedServer): string {
  const lines = [
    '# Written by dforge on every install run; edits here are replaced.',
    '# Local overrides belong in ALTER SYSTEM (postgresql.auto.conf), which PostgreSQL reads after this file.',
    '# Durability settings (fsync, synchronous_commit, full_page_writes) are deliberately absent:',
    "# PostgreSQL's defaults are the durable ones.",
    '',
    '# Loopback TCP for the provisioner and the tenants; a private unix socket for the superuser.',
    `listen_addresses = '${server.listenAddresses.join(',')}'`,
    `port = ${server.port}`,
    `unix_socket_directories = '${server.runDir}'`,
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
    `log_directory = '${server.runDir}'`,
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

export function validateRoles(superuser: string, provisioner: string): void {
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

export function validateTls(tls: EmbeddedTls): void {
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
