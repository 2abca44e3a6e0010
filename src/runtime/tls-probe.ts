import net from 'node:net';
import tls from 'node:tls';

/**
 * "TLS 1.3 only" checked by real handshakes, not by reading configuration: one handshake pinned
 * to TLS 1.3 must succeed with a verified chain and hostname, and one pinned to TLS 1.2 must be
 * refused.
 */
export interface TlsProbe {
  readonly endpoint: string;
  readonly tls13: boolean;
  readonly tls12Refused: boolean;
  /** Why the 1.3 handshake failed, or the 1.2 one succeeded. */
  readonly detail: string;
  /** The certificate the server presented in the verified TLS 1.3 handshake (PEM), for its expiry. */
  readonly certificatePem?: string;
}

export interface ProbeTarget {
  readonly host: string;
  readonly port: number;
  /** The name the certificate must carry. */
  readonly servername: string;
  readonly caPem: string;
  /** PostgreSQL speaks TLS only after an SSLRequest on the plain connection. */
  readonly protocol: 'tls' | 'postgres';
}

const TIMEOUT_MS = 10_000;
// How OpenSSL reports a server that will not speak the offered version (alert 70, or none in common).
const PROTOCOL_REFUSAL = /protocol version|unsupported protocol|wrong version number|no protocols available|version too low/i;
// The SSLRequest message: length 8, code 80877103.
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 4, 210, 22, 47]);

export async function probeTls(target: ProbeTarget): Promise<TlsProbe> {
  const modern = await handshake(target, 'TLSv1.3');
  const legacy = await handshake(target, 'TLSv1.2');
  // Only a refusal of the protocol version counts: a timeout or a reset proves nothing about 1.2.
  const refused = !legacy.ok && PROTOCOL_REFUSAL.test(legacy.detail);
  const detail = [
    modern.ok ? '' : `TLS 1.3 handshake failed: ${modern.detail}`,
    legacy.ok ? `a TLS 1.2 handshake succeeded (${legacy.detail})` : refused ? '' : `the TLS 1.2 attempt was inconclusive (${legacy.detail})`,
  ]
    .filter(Boolean)
    .join('; ');
  return {endpoint: `${target.host}:${target.port}`, tls13: modern.ok, tls12Refused: refused, detail, ...(modern.certificatePem ? {certificatePem: modern.certificatePem} : {})};
}

async function handshake(target: ProbeTarget, version: 'TLSv1.3' | 'TLSv1.2'): Promise<{ok: boolean; detail: string; certificatePem?: string}> {
  let plain: net.Socket | undefined;
  try {
    if (target.protocol === 'postgres') plain = await sslRequest(target);
    return await new Promise((resolve) => {
      const socket = tls.connect({
        ...(plain ? {socket: plain} : {host: target.host, port: target.port}),
        servername: target.servername,
        ca: target.caPem,
        minVersion: version,
        maxVersion: version,
        rejectUnauthorized: true,
        timeout: TIMEOUT_MS,
      });
      const finish = (ok: boolean, detail: string, certificatePem?: string): void => {
        socket.destroy();
        resolve({ok, detail, ...(certificatePem ? {certificatePem} : {})});
      };
      socket.once('secureConnect', () => finish(socket.getProtocol() === version, `negotiated ${socket.getProtocol() ?? 'nothing'}`, socket.getPeerX509Certificate()?.toString()));
      socket.once('error', (err: NodeJS.ErrnoException) => finish(false, `${err.code ?? ''} ${err.message}`.trim()));
      socket.once('timeout', () => finish(false, 'timed out'));
    });
  } catch (err) {
    plain?.destroy();
    return {ok: false, detail: (err as Error).message};
  }
}

function sslRequest(target: ProbeTarget): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({host: target.host, port: target.port, timeout: TIMEOUT_MS});
    socket.once('connect', () => socket.write(SSL_REQUEST));
    socket.once('data', (reply: Buffer) => {
      socket.removeAllListeners();
      if (reply[0] === 0x53) resolve(socket);
      else {
        socket.destroy();
        reject(new Error('the server does not offer TLS (SSLRequest answered N)'));
      }
    });
    socket.once('error', reject);
    socket.once('timeout', () => {
      socket.destroy();
      reject(new Error('timed out'));
    });
  });
}
