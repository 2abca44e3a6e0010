#!/usr/bin/env node
// Offline bundle benchmarks, each against its baseline in the same run, on images built here
// (no registry): N images FROM dforge-test/base:bookworm, each adding one shared layer (the same
// COPY of the same deterministic bytes, which the builder's cache makes one layer) and one layer of
// its own. At scale 1: 3 images of 300 MB shared + 150 MB unique on the 117 MB base, 1.7 GB of
// images, 870 MB of distinct layers.
//  1. `bundle create --images FILE --key K --executable SMALL` vs `docker save -o F2 <images>`,
//     pairs in ABBA order; the bundle's size vs the distinct layers and vs docker save's tar;
//  2. `bundle verify F --trusted-key PUB` throughput vs `sha256sum F`, pairs in ABBA order;
//  3. `bundle load F --trusted-key PUB` vs `docker load -i F2`, pairs in ABBA order, each side
//     starting from the same engine state: the bench images and every layer of theirs that is not
//     the base's removed, checked against the engine before each run;
//  4. peak RSS of create, verify and load.
// The images are removed at the end. Needs about 5 GB of disk at scale 1.
// Usage: npm run build && node scripts/bench/bundle.mjs [--scale 1] [--images 3] [--shared-mb 300]
//   [--unique-mb 150] [--create-runs 4] [--verify-runs 6] [--load-runs 4] [--json out.json]
import {spawnSync} from 'node:child_process';
import {createCipheriv} from 'node:crypto';
import {closeSync, existsSync, linkSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {benchOptions, median, pairRatio, report, seconds} from './common.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const cliPath = path.join(root, 'bin/run.js');
const options = benchOptions();
const imageCount = options.value('images', 3);
const sharedMB = options.count('shared-mb', 300, 8);
const uniqueMB = options.count('unique-mb', 150, 4);
// Each create or load pair moves about a gigabyte at scale 1; verify pairs are cheaper.
const createRuns = options.count('create-runs', 4, 2);
const verifyRuns = options.count('verify-runs', 6, 3);
const loadRuns = options.count('load-runs', 4, 2);
const BASE = 'dforge-test/base:bookworm';
const RSS_BUDGET_MB = 150;
const RATIO_BUDGET = 1.1;
// A build from before `bundle load` landed measures the rest and says so in the section.
const hasLoad = existsSync(path.join(root, 'dist/commands/bundle/load.js'));

const GNU_TIME = '/usr/bin/time';
if (!existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} is missing: install the Debian package "time" (it gives the exact peak RSS of each command).`);
if (!existsSync(path.join(root, 'dist/commands/bundle/create.js'))) throw new Error('dist/ is missing the bundle commands: run npm run build first.');

const log = (line) => process.stderr.write(`${line}\n`);
const run = (cmd, args, opts = {}) => {
  const r = spawnSync(cmd, args, {encoding: 'utf8', maxBuffer: 1 << 26, ...opts});
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr}`);
  return r;
};
const docker = (...args) => run('docker', args);

const scratch = mkdtempSync(path.join(os.tmpdir(), 'dforge-bench-bundle-'));
const rssFile = path.join(scratch, 'rss');
/**
 * Runs a command under GNU time: wall ms, and the peak RSS in bytes of the command's process (its
 * ru_maxrss from wait4; neither dforge nor the docker CLI starts children of its own here).
 */
const timed = (cmd, args) => {
  const start = process.hrtime.bigint();
  const r = spawnSync(GNU_TIME, ['-f', '%M', '-o', rssFile, cmd, ...args], {cwd: scratch, encoding: 'utf8', maxBuffer: 1 << 26});
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr}`);
  const kib = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop());
  return {ms, rss: kib * 1024, stdout: r.stdout};
};
const dforge = (...args) => timed(process.execPath, [cliPath, ...args]);
/** Runs `a` and `b` as one pair, `b` first on odd pairs: over pairs that is ABBA, which cancels linear drift. */
const abba = (i, a, b) => {
  if (i % 2 === 1) {
    const y = b();
    return [a(), y];
  }
  const x = a();
  return [x, b()];
};

/** `mb` MB of AES-CTR keystream under a fixed key: incompressible, and the same bytes every run. */
const writeDeterministic = (file, mb, stream) => {
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 0x5a), Buffer.from(String(stream).padStart(16, '0')));
  const zeros = Buffer.alloc(1_000_000);
  const fd = openSync(file, 'w');
  try {
    for (let i = 0; i < mb; i++) writeSync(fd, cipher.update(zeros));
  } finally {
    closeSync(fd);
  }
};

const benchId = `b${Date.now().toString(36)}`;
const refs = Array.from({length: imageCount}, (_, i) => `dforge-bench/bundle-${i}:${benchId}`);
/** Every layer of the bench images above the base, which each load side must start without. */
let benchLayers = [];
const expectedIds = new Map();

const removeBenchImages = () => {
  // Untagging the last reference deletes the image and every layer no other image holds.
  spawnSync('docker', ['rmi', '-f', ...refs], {encoding: 'utf8'});
  for (const id of new Set(expectedIds.values())) spawnSync('docker', ['rmi', '-f', id], {encoding: 'utf8'});
};
/** Throws unless no image in the engine holds a bench layer: both load sides start from this state. */
const assertEngineClean = () => {
  const ids = docker('images', '-aq', '--no-trunc').stdout.split('\n').filter(Boolean);
  const layers = ids.length === 0 ? [] : docker('image', 'inspect', '--format', '{{json .RootFS.Layers}}', ...new Set(ids)).stdout.split('\n').filter(Boolean).flatMap((l) => JSON.parse(l) ?? []);
  const left = benchLayers.filter((l) => layers.includes(l));
  if (left.length) throw new Error(`the engine still holds bench layers ${left.join(', ')} after removing the bench images`);
};
const assertLoaded = (side) => {
  for (const ref of refs) {
    const id = docker('image', 'inspect', '--format', '{{.Id}}', ref).stdout.trim();
    if (id !== expectedIds.get(ref)) throw new Error(`${side} left ${ref} as ${id}, not ${expectedIds.get(ref)}`);
  }
};

try {
  if (spawnSync('docker', ['image', 'inspect', BASE], {stdio: 'ignore'}).status !== 0) {
    throw new Error(`${BASE} is missing: the test suite's ensureTestImages (test/helpers/test-images.ts) builds it.`);
  }
  const baseLayers = JSON.parse(docker('image', 'inspect', '--format', '{{json .RootFS.Layers}}', BASE).stdout);

  // One build context per image: the shared file hard-linked into each (same bytes, same
  // metadata, so the classic builder's cache gives the one layer), plus the image's own file.
  log(`writing ${sharedMB} MB shared and ${imageCount} x ${uniqueMB} MB unique data...`);
  const shared = path.join(scratch, 'shared.bin');
  writeDeterministic(shared, sharedMB, 0);
  for (const [i, ref] of refs.entries()) {
    const ctx = path.join(scratch, `ctx-${i}`);
    mkdirSync(ctx);
    linkSync(shared, path.join(ctx, 'shared.bin'));
    writeDeterministic(path.join(ctx, 'unique.bin'), uniqueMB, i + 1);
    writeFileSync(path.join(ctx, 'Dockerfile'), `FROM ${BASE}\nCOPY shared.bin /bench/shared.bin\nCOPY unique.bin /bench/unique.bin\nLABEL dforge.bench.id=${benchId} dforge.bench.image=${i}\n`);
    log(`building ${ref}...`);
    run('docker', ['build', '-q', '-t', ref, ctx], {env: {...process.env, DOCKER_BUILDKIT: '0'}});
    rmSync(ctx, {recursive: true});
  }
  rmSync(shared);
  const rootfs = refs.map((ref) => JSON.parse(docker('image', 'inspect', '--format', '{{json .RootFS.Layers}}', ref).stdout));
  for (const ref of refs) expectedIds.set(ref, docker('image', 'inspect', '--format', '{{.Id}}', ref).stdout.trim());
  // The workload is only what it claims if the middle layer is one layer and the top ones differ.
  const sharedLayer = rootfs[0][baseLayers.length];
  for (const [i, layers] of rootfs.entries()) {
    if (layers.length !== baseLayers.length + 2 || layers[baseLayers.length] !== sharedLayer) throw new Error(`${refs[i]} does not have the shared layer on the base: ${layers.join(', ')}`);
  }
  if (new Set(rootfs.map((l) => l.at(-1))).size !== imageCount) throw new Error('two bench images have the same unique layer');
  benchLayers = [sharedLayer, ...rootfs.map((l) => l.at(-1))];

  const imagesFile = path.join(scratch, 'images.txt');
  writeFileSync(imagesFile, `${refs.join('\n')}\n`);
  // A small stand-in for the single executable: the benchmark is about the images.
  const executable = path.join(scratch, 'dforge-exe');
  writeDeterministic(executable, 1, 99);
  const keys = path.join(scratch, 'keys');
  run(process.execPath, [cliPath, 'bundle', 'keygen', '--out', keys]);
  const key = path.join(keys, 'bundle-signing.key');
  const pub = path.join(keys, 'bundle-signing.pub');
  const bundle = path.join(scratch, 'bench.bundle');
  const saved = path.join(scratch, 'bench.tar');
  const release = '0.0.0-bench';

  // 1. create vs docker save.
  const create = [];
  const save = [];
  let createRss = 0;
  let saveRss = 0;
  let createResult;
  for (let i = 0; i < createRuns; i++) {
    rmSync(bundle, {force: true});
    rmSync(saved, {force: true});
    const [c, s] = abba(
      i,
      () => dforge('bundle', 'create', '--release', release, '--images', imagesFile, '--key', key, '--executable', executable, '--out', bundle, '--json'),
      () => timed('docker', ['save', '-o', saved, ...refs]),
    );
    create.push(c.ms);
    save.push(s.ms);
    createRss = Math.max(createRss, c.rss);
    saveRss = Math.max(saveRss, s.rss);
    createResult = JSON.parse(c.stdout);
    log(`create pair ${i + 1}: dforge ${seconds(c.ms)}, docker save ${seconds(s.ms)}`);
  }
  const bundleBytes = statSync(bundle).size;
  const savedBytes = statSync(saved).size;
  // docker save writes each distinct layer once, as <v1id>/layer.tar: their sum is what any
  // copy of these images must carry.
  const layerBytes = run('tar', ['-tvf', saved])
    .stdout.split('\n')
    .filter((l) => l.endsWith('/layer.tar'))
    .reduce((n, l) => n + Number(l.trim().split(/\s+/)[2]), 0);

  // 2. verify vs sha256sum.
  const verify = [];
  const sha = [];
  let verifyRss = 0;
  for (let i = 0; i < verifyRuns; i++) {
    const [v, h] = abba(
      i,
      () => dforge('bundle', 'verify', bundle, '--trusted-key', pub, '--json'),
      () => timed('sha256sum', [bundle]),
    );
    verify.push(v.ms);
    sha.push(h.ms);
    verifyRss = Math.max(verifyRss, v.rss);
    log(`verify pair ${i + 1}: dforge ${seconds(v.ms)}, sha256sum ${seconds(h.ms)}`);
  }

  // 3. load vs docker load, each from an engine without the bench images and their layers.
  const load = [];
  const dload = [];
  let loadRss = 0;
  let loadResult;
  const fromClean = (side, fn) => () => {
    removeBenchImages();
    assertEngineClean();
    const r = fn();
    assertLoaded(side);
    return r;
  };
  for (let i = 0; hasLoad && i < loadRuns; i++) {
    const [l, d] = abba(
      i,
      fromClean('bundle load', () => dforge('bundle', 'load', bundle, '--trusted-key', pub, '--json')),
      fromClean('docker load', () => timed('docker', ['load', '-q', '-i', saved])),
    );
    load.push(l.ms);
    dload.push(d.ms);
    loadRss = Math.max(loadRss, l.rss);
    loadResult = JSON.parse(l.stdout);
    log(`load pair ${i + 1}: dforge ${seconds(l.ms)}, docker load ${seconds(d.ms)}`);
  }

  const fmt = (x) => x.toFixed(3);
  const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;
  const mbps = (bytes, ms) => (bytes / 1e6 / (ms / 1000)).toFixed(1);
  let over = false;
  const budget = (value, limit, text) => {
    if (value > limit) over = true;
    return `${text}${value > limit ? ' OVER' : ''}`;
  };
  const ratioRow = (label, xs, ys, limit) => {
    const r = pairRatio(xs, ys);
    return [label, seconds(median(xs)), seconds(median(ys)), fmt(r.ratio), `${r.label} ${fmt(r.low)}-${fmt(r.high)}`, fmt(r.ratioOfMedians), limit ? budget(r.ratio, limit, `<= ${limit.toFixed(2)}`) : ''];
  };
  const rssCell = (bytes) => budget(bytes / 1e6, RSS_BUDGET_MB, `<= ${RSS_BUDGET_MB} MB`);
  const layersSent = loadResult?.images.reduce((n, img) => n + img.layersSent, 0);
  const layersPresent = loadResult?.images.reduce((n, img) => n + img.layersPresent, 0);
  const version = docker('version', '--format', '{{.Server.Version}}').stdout.trim();
  report(options, {
    name: 'bundle',
    title: 'Offline bundles',
    script: 'scripts/bench/bundle.mjs',
    command: `npm run bench:bundle -- --images ${imageCount} --shared-mb ${sharedMB} --unique-mb ${uniqueMB} --create-runs ${createRuns} --verify-runs ${verifyRuns} --load-runs ${loadRuns}`,
    software: `Docker Engine ${version}`,
    workload: `${imageCount} images built here FROM ${BASE}, each with one shared layer (${sharedMB} MB of deterministic incompressible bytes, one layer through the builder's cache) and one layer of its own (${uniqueMB} MB); ${mb(layerBytes)} of distinct layers, base included. Each pair runs its two sides back to back, the baseline first on every other pair (ABBA), so drift between pairs cancels in the pair's ratio. Every load side starts from an engine without the bench images and their ${benchLayers.length} layers above the base (checked against every image's layers before each run), and ends with each image's id checked. dforge runs as \`node bin/run.js\`, with a 1 MB file as --executable.`,
    tables: [
      {
        columns: ['case', 'dforge median', 'baseline median', 'ratio (median of pairs)', 'interval', 'ratio of the medians', 'budget'],
        rows: [
          ratioRow(`\`bundle create --images FILE --key K\` vs \`docker save -o F2\` (${createRuns} pairs)`, create, save, RATIO_BUDGET),
          ratioRow(`\`bundle verify F --trusted-key PUB\` vs \`sha256sum F\` (${verifyRuns} pairs)`, verify, sha),
          ['throughput of verify / sha256sum, MB/s', mbps(bundleBytes, median(verify)), mbps(bundleBytes, median(sha)), '', '', '', ''],
          ...(hasLoad ? [ratioRow(`\`bundle load F --trusted-key PUB\` (verify, then load) vs \`docker load -i F2\` (${loadRuns} pairs)`, load, dload, RATIO_BUDGET)] : []),
        ],
      },
      {
        title: 'Sizes',
        columns: ['what', 'bytes', 'vs distinct layers', 'vs docker save'],
        rows: [
          ['distinct layers (sum of the layer tars)', mb(layerBytes), '1.000', ''],
          ['`docker save` tar', mb(savedBytes), fmt(savedBytes / layerBytes), '1.000'],
          [`bundle (signed, with the 1 MB executable, templates and SBOMs; create reports ${mb(createResult.sharedBytesSaved)} stored once instead of per image)`, mb(bundleBytes), fmt(bundleBytes / layerBytes), fmt(bundleBytes / savedBytes)],
        ],
      },
      {
        title: 'Peak RSS (ru_maxrss from GNU time; for docker, the CLI process, not the engine)',
        columns: ['command', 'peak RSS', 'budget'],
        rows: [
          ['`bundle create`', mb(createRss), rssCell(createRss)],
          ['`bundle verify`', mb(verifyRss), rssCell(verifyRss)],
          ...(hasLoad ? [['`bundle load`', mb(loadRss), rssCell(loadRss)]] : []),
          ['`docker save` (CLI)', mb(saveRss), ''],
        ],
      },
    ],
    notes: [
      'A ratio is the median of the per-pair ratios, with a distribution-free 95% interval for that median (with fewer than 6 pairs, the range).',
      '`bundle create` fsyncs the bundle before renaming it into place; `docker save` does not fsync, so part of its writing is still in the page cache when it exits.',
      hasLoad
        ? `\`bundle load\` verifies every hash and the signature before it loads; it sent ${layersSent} layers and found ${layersPresent} (the base's) already in the engine, as \`docker load\` skips them too.`
        : '`bundle load` not measured: the dist/ this ran on has no bundle load command.',
      'Throughput is the bundle\'s bytes over the median wall time; the bundle is in the page cache for both sides.',
    ],
  });
  process.exitCode = over ? 1 : 0;
} finally {
  removeBenchImages();
  rmSync(scratch, {recursive: true, force: true});
}
