#!/usr/bin/env node
// PKI benchmark: the PKI an install makes (a name-constrained CA plus proxy, postgres and internal
// client leaves), by dforge's compiled library and by the openssl CLI, interleaved in one run so
// machine noise hits both alike. dforge is timed in-process (the library cost, as `install` pays
// it) and in a fresh Node process (adding Node startup and module loading, as `certs generate`
// pays it). Prints medians and the ratios to openssl.
// Usage: npm run build && node scripts/bench/pki.mjs [--scale 1] [--runs 15] [--algorithm ecdsa-p256|rsa-3072] [--json out.json]
import {spawnSync} from 'node:child_process';
import {mkdirSync, mkdtempSync, rmSync, writeFileSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath, pathToFileURL} from 'node:url';

import {benchOptions, median, report} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const options = benchOptions();
const runs = options.count('runs', 15, 3);
const algorithm = arg('--algorithm', 'ecdsa-p256');
if (!['ecdsa-p256', 'rsa-3072'].includes(algorithm)) throw new Error(`--algorithm must be ecdsa-p256 or rsa-3072, not ${algorithm}`);

const library = pathToFileURL(path.join(root, 'dist', 'pki', 'index.js')).href;
const {generateCa, issueLeaf} = await import(library);

const domain = 'dforge.example.com';
// The names a compose install's CA permits and its leaves carry (src/certs/service-names.ts).
const internalNames = ['dforge.internal', 'localhost'];
const leaves = [
  {name: 'proxy', commonName: domain, dnsNames: [domain, `*.${domain}`, 'localhost'], ipAddresses: [], usage: 'server'},
  {name: 'postgres', commonName: 'postgres.dforge.internal', dnsNames: ['postgres.dforge.internal', 'localhost'], ipAddresses: ['127.0.0.1'], usage: 'server'},
  {name: 'internal', commonName: 'auth.dforge.internal', dnsNames: ['auth.dforge.internal'], ipAddresses: [], usage: 'client'},
];

async function dforgePki() {
  const now = new Date();
  const ca = await generateCa({domain, internalNames, algorithm, now});
  const issued = [];
  for (const {name, ...leaf} of leaves) issued.push({name, ...(await issueLeaf(ca, {...leaf, now}))});
  return {ca, issued};
}

// The same PKI in a new Node process: what one `dforge certs generate` run costs end to end.
const freshScript = `const {generateCa, issueLeaf} = await import(${JSON.stringify(library)});
const spec = JSON.parse(process.argv[1]);
const now = new Date();
const ca = await generateCa({domain: spec.domain, internalNames: spec.internalNames, algorithm: spec.algorithm, now});
for (const {name, ...leaf} of spec.leaves) await issueLeaf(ca, {...leaf, now});`;
const freshSpec = JSON.stringify({domain, internalNames, algorithm, leaves});

const run = (cmd, args, cwd) => {
  const r = spawnSync(cmd, args, {cwd, stdio: ['ignore', 'pipe', 'pipe']});
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
};

// The openssl CLI doing the same: a key, a self-signed CA with the same extensions, then per leaf a
// key, a CSR and a signature with an extension file.
const keygen = (out) =>
  algorithm === 'rsa-3072'
    ? ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:3072', '-out', out]
    : ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', out];
const nameConstraints = [domain, ...internalNames].map((n) => `permitted;DNS:${n}`)
  .concat(['permitted;IP:127.0.0.1/255.255.255.255', 'permitted;IP:0:0:0:0:0:0:0:1/FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF', 'permitted;email:invalid', 'permitted;URI:invalid']).join(',');
function opensslPki(dir) {
  run('openssl', keygen('ca.key'), dir);
  run('openssl', ['req', '-x509', '-new', '-key', 'ca.key', '-sha256', '-days', '3650', '-subj', `/CN=dforge CA ${domain}/O=dforge`,
    '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-addext', 'subjectKeyIdentifier=hash', '-addext', `nameConstraints=critical,${nameConstraints}`, '-out', 'ca.pem'], dir);
  for (const leaf of leaves) {
    const san = [...leaf.dnsNames.map((n) => `DNS:${n}`), ...leaf.ipAddresses.map((ip) => `IP:${ip}`)].join(',');
    const eku = leaf.usage === 'server' ? 'serverAuth' : 'clientAuth';
    writeFileSync(path.join(dir, `${leaf.name}.ext`), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=${eku}\nsubjectAltName=${san}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n`);
    run('openssl', keygen(`${leaf.name}.key`), dir);
    run('openssl', ['req', '-new', '-key', `${leaf.name}.key`, '-subj', `/CN=${leaf.commonName}/O=dforge`, '-out', `${leaf.name}.csr`], dir);
    run('openssl', ['x509', '-req', '-in', `${leaf.name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', `0x${Date.now().toString(16)}`, '-days', '397', '-sha256', '-extfile', `${leaf.name}.ext`, '-out', `${leaf.name}.pem`], dir);
  }
}

const work = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-pki-'));
try {
  // Both sides must produce a PKI that openssl verifies, or the comparison means nothing.
  const check = path.join(work, 'check');
  const ours = await dforgePki();
  mkdirSync(check);
  writeFileSync(path.join(check, 'ca.pem'), ours.ca.certPem);
  for (const leaf of ours.issued) writeFileSync(path.join(check, `${leaf.name}.pem`), leaf.certPem);
  for (const leaf of leaves) run('openssl', ['verify', '-CAfile', 'ca.pem', `${leaf.name}.pem`], check);
  const theirs = path.join(work, 'openssl-check');
  mkdirSync(theirs);
  opensslPki(theirs);
  for (const leaf of leaves) run('openssl', ['verify', '-CAfile', 'ca.pem', `${leaf.name}.pem`], theirs);

  let round = 0;
  const cases = [
    {name: 'dforge (in-process)', fn: () => dforgePki()},
    {name: 'dforge (fresh node)', fn: () => run(process.execPath, ['--input-type=module', '-e', freshScript, freshSpec], work)},
    {
      name: 'openssl CLI',
      fn: () => {
        const dir = path.join(work, `openssl-${round++}`);
        mkdirSync(dir);
        opensslPki(dir);
      },
    },
  ];
  const time = async (fn) => {
    const start = process.hrtime.bigint();
    await fn();
    return Number(process.hrtime.bigint() - start) / 1e6;
  };

  for (const c of cases) for (let i = 0; i < 2; i++) await time(c.fn);
  const samples = new Map(cases.map((c) => [c.name, []]));
  for (let i = 0; i < runs; i++) {
    // Rotate the order every round so no case always runs first.
    for (let j = 0; j < cases.length; j++) {
      const c = cases[(i + j) % cases.length];
      samples.get(c.name).push(await time(c.fn));
    }
  }
  const baseline = median(samples.get('openssl CLI'));
  report(options, {
    name: algorithm === 'ecdsa-p256' ? 'pki' : `pki-${algorithm}`,
    title: `PKI (${algorithm})`,
    script: 'scripts/bench/pki.mjs',
    command: `npm run bench:pki -- --runs ${runs} --algorithm ${algorithm}`,
    software: spawnSync('openssl', ['version']).stdout.toString().trim(),
    workload: `a CA plus three leaves (proxy, postgres, internal client), ${algorithm}, ${runs} interleaved rounds (the order rotates every round), against the \`openssl\` CLI making the same set; both sides' certificates pass \`openssl verify\` first.`,
    tables: [
      {
        columns: ['case', 'median ms', 'ratio vs openssl'],
        rows: cases.map((c) => {
          const m = median(samples.get(c.name));
          return [c.name, m.toFixed(1), (m / baseline).toFixed(2)];
        }),
      },
    ],
  });
} finally {
  rmSync(work, {recursive: true, force: true});
}
