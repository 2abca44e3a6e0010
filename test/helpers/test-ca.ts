import {execFile as execFileCb} from 'node:child_process';
import {promises as fs} from 'node:fs';
import path from 'node:path';
import {promisify} from 'node:util';

const execFile = promisify(execFileCb);

/**
 * A throwaway ECDSA P-256 CA and one server certificate, made with the openssl CLI. Test
 * infrastructure only: dforge's own PKI is product code and is tested on its own.
 */
export interface TestCa {
  readonly dir: string;
  readonly caCertFile: string;
  readonly caCertPem: string;
  readonly serverCertFile: string;
  readonly serverKeyFile: string;
}

export async function createTestCa(dir: string, options: {serverNames: string[]; serverIps: string[]}): Promise<TestCa> {
  await fs.mkdir(dir, {recursive: true, mode: 0o700});
  const f = (name: string): string => path.join(dir, name);
  const openssl = async (...args: string[]): Promise<void> => {
    await execFile('openssl', args);
  };
  await openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', f('ca.key'));
  await openssl('req', '-x509', '-new', '-key', f('ca.key'), '-sha256', '-days', '2', '-subj', '/CN=dforge test CA', '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', f('ca.crt'));
  await openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', f('server.key'));
  await openssl('req', '-new', '-key', f('server.key'), '-subj', `/CN=${options.serverNames[0] ?? 'localhost'}`, '-out', f('server.csr'));
  const sans = [...options.serverNames.map((n) => `DNS:${n}`), ...options.serverIps.map((ip) => `IP:${ip}`)].join(',');
  await fs.writeFile(f('server.ext'), `subjectAltName=${sans}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`);
  await openssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-sha256', '-extfile', f('server.ext'), '-out', f('server.crt'));
  await fs.chmod(f('server.key'), 0o600);
  await fs.chmod(f('ca.key'), 0o600);
  return {
    dir,
    caCertFile: f('ca.crt'),
    caCertPem: await fs.readFile(f('ca.crt'), 'utf8'),
    serverCertFile: f('server.crt'),
    serverKeyFile: f('server.key'),
  };
}
