/**
 * The server settings every PostgreSQL cluster dforge configures carries (the embedded data
 * plane, and postgres and auth-db in compose and Kubernetes), as SHOW reports them: one list for
 * the render tests, which read the templates, and the embedded test, which asks the live server.
 */
export const HARDENED_SETTINGS: Readonly<Record<string, string>> = {
  ssl: 'on',
  ssl_min_protocol_version: 'TLSv1.3',
  ssl_ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256',
  ssl_prefer_server_ciphers: 'on',
  password_encryption: 'scram-sha-256',
  unix_socket_permissions: '0700',
  log_connections: 'on',
  log_disconnections: 'on',
  log_line_prefix: '%m [%p] %q%u@%d %h app=%a ',
  log_hostname: 'off',
  log_timezone: 'UTC',
  log_error_verbosity: 'verbose',
  log_checkpoints: 'on',
  log_lock_waits: 'on',
  log_temp_files: '0',
  log_replication_commands: 'on',
  // ddl would log ALTER ROLE ... PASSWORD, verifier included, for as long as dforge sends it as SQL text.
  log_statement: 'none',
  log_parameter_max_length: '0',
  log_parameter_max_length_on_error: '0',
};

/** The settings a postgresql.conf text assigns, unquoted; a later line wins, as in PostgreSQL. */
export function confSettings(text: string): Record<string, string> {
  const settings: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^\s*([a-z_.]+)\s*=?\s*('(?:[^']|'')*'|[^\s#]+)/.exec(line);
    if (!match) continue;
    const raw = match[2]!;
    settings[match[1]!] = raw.startsWith("'") ? raw.slice(1, -1).replaceAll("''", "'") : raw;
  }
  return settings;
}
