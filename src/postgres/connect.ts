import type {Client, ClientConfig} from 'pg';

import {UserError} from '../errors.js';

/** How to reach one PostgreSQL cluster over verified TLS 1.3. */
export interface ClusterEndpoint {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  /** PEM of the CA that signs the server certificate. */
  readonly caPem: string;
  /** The name the server certificate must carry. */
  readonly servername: string;
}

export interface Credentials {
  readonly user: string;
  readonly password: string;
  readonly database: string;
}

/** Client options: full chain and hostname verification, TLS 1.3 only. */
export function clientConfig(endpoint: ClusterEndpoint, credentials: Credentials): ClientConfig {
  return {
    host: endpoint.host,
    port: endpoint.port,
    user: credentials.user,
    password: credentials.password,
    database: credentials.database,
    ssl: {ca: endpoint.caPem, servername: endpoint.servername, minVersion: 'TLSv1.3', rejectUnauthorized: true},
    connectionTimeoutMillis: 10_000,
    application_name: 'dforge',
  };
}

/** Opens a connection; failures become errors that say which cluster and what to check. */
export async function connect(endpoint: ClusterEndpoint, credentials: Credentials): Promise<Client> {
  const pg = (await import('pg')).default;
  const client = new pg.Client(clientConfig(endpoint, credentials));
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw describeConnectError(err, endpoint, credentials);
  }
  return client;
}

/**
 * The superuser over a cluster's unix socket: the only way in for it (pg_hba has no TCP line for
 * it; sockets carry no TLS, and their directory is 0700).
 */
export async function connectOverSocket(socketDir: string, port: number, credentials: Credentials): Promise<Client> {
  const pg = (await import('pg')).default;
  const client = new pg.Client({host: socketDir, port, user: credentials.user, password: credentials.password, database: credentials.database, application_name: 'dforge', connectionTimeoutMillis: 10_000});
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw new UserError(`cannot log in as ${credentials.user} through the socket in ${socketDir}: ${(err as Error).message}`, {
      nextSteps: ['Check that the server is running (dforge status / dforge db status) and that the sealed superuser password matches the cluster.'],
      cause: err,
    });
  }
  return client;
}

/** Runs `fn` with a connection and always closes it. */
export async function withConnection<T>(endpoint: ClusterEndpoint, credentials: Credentials, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await connect(endpoint, credentials);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

function describeConnectError(err: unknown, endpoint: ClusterEndpoint, credentials: Credentials): UserError {
  const e = err as NodeJS.ErrnoException & {code?: string};
  const where = `cluster ${endpoint.name} (${endpoint.host}:${endpoint.port})`;
  if (e.code === 'ECONNREFUSED' || e.code === 'EHOSTUNREACH' || e.code === 'ETIMEDOUT') {
    return new UserError(`cannot reach ${where}: ${e.code}`, {
      nextSteps: ['Check that the server is running (embedded: dforge db status) and that host and port in dforge.yaml are right.'],
      cause: err,
    });
  }
  if (e.code === '28P01' || e.code === '28000') {
    return new UserError(`${where} refused ${credentials.user} on database ${credentials.database}: ${e.message}`, {
      nextSteps: ["Check the role and its sealed password; pg_hba only admits TLS connections to a role's own database."],
      cause: err,
    });
  }
  if (/certificate|self.signed|altname|hostname/i.test(e.message ?? '')) {
    return new UserError(`TLS verification of ${where} failed: ${e.message}`, {
      nextSteps: ['The server certificate must chain to the configured CA and name the host; see dforge certs status.'],
      cause: err,
    });
  }
  return new UserError(`cannot connect to ${where} as ${credentials.user}: ${e.message}`, {cause: err});
}

/** The server's version number as PostgreSQL reports it ('150004' for 15.4): what pg_dump and pg_restore are chosen by. */
export async function serverVersionNum(c: Pick<Client, 'query'>): Promise<string> {
  return (await c.query<{v: string}>("SELECT current_setting('server_version_num') AS v")).rows[0]!.v;
}
