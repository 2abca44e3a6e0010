'use strict';
// Entry point of the single executable (scripts/build-sea.mjs). The executable carries the whole
// installed package (dist/, templates/, the production node_modules, package.json, the oclif
// manifest) as one asset. On first run it is checked against the digest baked in at build time and
// extracted to $XDG_CACHE_HOME/dforge/<digest>/ (or ~/.cache/dforge/<digest>/); every later run
// only stats that directory and loads bin/run.js from it, so the code path is the npm install's.
//
// Why the cache is trusted: the executable runs whatever is in that directory, so a local user who
// could write there could plant code a root-run dforge would execute. Every level we rely on must
// be a real directory (not a link), owned by us, not writable by group or others; otherwise refuse.
// The levels above dforge/ matter as much: whoever can rename one of them can swap the whole tree
// after our checks (modules are imported lazily, so their code would run later, as us). So the
// cache base is resolved to its real path once, every level of that from / down is checked the way
// OpenSSH StrictModes checks paths, and everything after uses the real path, never the links again.
// A tree only gets its final name by an atomic rename after it was fully written and stamped, so a
// run killed during extraction leaves a .tmp-* directory that is never used (nor yet cleaned up).
//
// Only built-in modules can be require()d here; files on disk are loaded via createRequire.
const sea = require('node:sea');
const fs = require('node:fs');
const path = require('node:path');
const os = require('node:os');
const crypto = require('node:crypto');
const {createRequire} = require('node:module');

const STAMP = '.dforge-sea';

class CacheRefused extends Error {
  /** above: the bad level is above dforge/, so removing or fixing it is not ours to suggest. */
  constructor(message, above = false) {
    super(message);
    this.above = above;
  }
}

function uid() {
  return process.geteuid ? process.geteuid() : undefined;
}

/** A real directory owned by us that neither group nor others may write, or a refusal. */
function checkClosed(dir) {
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new CacheRefused(`${dir} is not a directory (a symbolic link or file is there)`);
  const me = uid();
  if (me !== undefined && st.uid !== me) throw new CacheRefused(`${dir} is owned by uid ${st.uid}, not by the running user (uid ${me})`);
  if (st.mode & 0o022) throw new CacheRefused(`${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)})`);
}

function mkdirClosed(dir) {
  try {
    fs.mkdirSync(dir, {mode: 0o700});
  } catch (err) {
    if (err.code !== 'EEXIST') throw err;
  }
  checkClosed(dir);
}

/**
 * A level above dforge/: a real directory owned by us or root, that group and others may not write
 * unless it is sticky (like /tmp), in which case the level below must be ours and closed (sticky
 * only stops others renaming what they do not own). parentSticky says the level above was such a dir.
 */
function checkAncestor(dir, parentSticky) {
  const st = fs.lstatSync(dir);
  const me = uid();
  const refuse = (why) => new CacheRefused(`${dir}, above the cache directory, ${why}`, true);
  if (!st.isDirectory()) throw refuse('is not a directory (a symbolic link or file is there)');
  if (me !== undefined && parentSticky && st.uid !== me) throw refuse(`is owned by uid ${st.uid} inside a directory others can write; it must be owned by the running user (uid ${me})`);
  if (me !== undefined && st.uid !== me && st.uid !== 0) throw refuse(`is owned by uid ${st.uid}, not by the running user (uid ${me}) or root`);
  const open = (st.mode & 0o022) !== 0;
  const mode = (st.mode & 0o7777).toString(8);
  if (open && parentSticky) throw refuse(`is writable by group or others inside a directory others can write (mode ${mode})`);
  if (open && !(st.mode & 0o1000)) throw refuse(`is writable by group or others and not sticky (mode ${mode})`);
  return open;
}

/** The real path of base, with every level from / down checked, missing levels created 0700 and re-checked. */
function closedBase(base) {
  // The deepest level that exists; realpath resolves every link in it once, here.
  let existing = base;
  const missing = [];
  let real;
  for (;;) {
    try {
      real = fs.realpathSync(existing);
      break;
    } catch (err) {
      if (err.code !== 'ENOENT' || path.dirname(existing) === existing) throw err;
      missing.unshift(path.basename(existing));
      existing = path.dirname(existing);
    }
  }
  let dir = path.parse(real).root;
  let sticky = checkAncestor(dir, false);
  for (const part of path.relative(dir, real).split(path.sep).filter(Boolean)) {
    dir = path.join(dir, part);
    sticky = checkAncestor(dir, sticky);
  }
  for (const part of missing) {
    dir = path.join(dir, part);
    try {
      fs.mkdirSync(dir, {mode: 0o700});
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
    }
    // Whatever is there now (ours, or someone else's that raced us) must pass the same check.
    sticky = checkAncestor(dir, sticky);
  }
  return dir;
}

function cacheRoot() {
  const xdg = process.env.XDG_CACHE_HOME;
  // The XDG spec says a relative value is invalid and must be ignored.
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache');
  if (!path.isAbsolute(base)) throw new CacheRefused(`no absolute cache directory (HOME is ${JSON.stringify(os.homedir())})`, true);
  // dforge/ itself must be ours and closed, which is also all a sticky base (e.g. /tmp) asks of it.
  const root = path.join(closedBase(path.resolve(base)), 'dforge');
  mkdirClosed(root);
  return root;
}

function readStamp(dir) {
  try {
    const st = fs.lstatSync(path.join(dir, STAMP));
    if (!st.isFile() || st.uid !== uid() || st.mode & 0o022) return undefined;
    return fs.readFileSync(path.join(dir, STAMP), 'utf8');
  } catch {
    return undefined;
  }
}

/** Writes the verified payload into a fresh private temp dir, stamps it, and renames it into place. */
function extract(root, digest, target) {
  const index = JSON.parse(sea.getAsset('index.json', 'utf8'));
  const payload = Buffer.from(sea.getRawAsset('payload.bin'));
  const actual = crypto.createHash('sha256').update(JSON.stringify(index)).update(payload).digest('hex');
  if (actual !== digest) throw new CacheRefused(`the embedded package does not match its digest (${actual} != ${digest}): the executable is damaged`);
  const tmp = fs.mkdtempSync(path.join(root, `.tmp-${digest.slice(0, 12)}-`));
  for (const e of index.files) {
    const file = path.join(tmp, e.path);
    fs.mkdirSync(path.dirname(file), {recursive: true, mode: 0o700});
    // wx: never write through something that already exists (the tree is ours and fresh).
    fs.writeFileSync(file, payload.subarray(e.offset, e.offset + e.size), {flag: 'wx', mode: e.mode});
  }
  fs.writeFileSync(path.join(tmp, STAMP), digest, {flag: 'wx', mode: 0o600});
  try {
    fs.renameSync(tmp, target);
  } catch (err) {
    // Another dforge finished first: its tree is as good as ours.
    fs.rmSync(tmp, {recursive: true, force: true});
    if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
  }
}

function ensureTree() {
  const digest = sea.getAsset('digest', 'utf8');
  const root = cacheRoot();
  const target = path.join(root, digest);
  let exists = true;
  try {
    checkClosed(target);
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
    exists = false;
  }
  if (exists && readStamp(target) !== digest) {
    // Ours, closed, but not a tree this executable finished writing: move it aside and start over.
    const aside = path.join(root, `.stale-${digest.slice(0, 12)}-${process.pid}-${Date.now()}`);
    fs.renameSync(target, aside);
    fs.rmSync(aside, {recursive: true, force: true});
    exists = false;
  }
  if (!exists) {
    const started = process.hrtime.bigint();
    extract(root, digest, target);
    checkClosed(target);
    if (readStamp(target) !== digest) throw new CacheRefused(`${target} changed while it was being created`);
    if (process.env.DFORGE_SEA_TIMING === '1') process.stderr.write(`dforge: extracted to ${target} in ${(Number(process.hrtime.bigint() - started) / 1e6).toFixed(0)} ms\n`);
  }
  return target;
}

let tree;
try {
  tree = ensureTree();
} catch (err) {
  const what = err instanceof CacheRefused ? err.message : `${err.code ?? ''} ${err.message}`.trim();
  const fix = err instanceof CacheRefused && err.above
    ? ''
    : '  - Remove that directory (or fix its owner and mode to the running user, 0700) and run dforge again, or\n';
  process.stderr.write(
    `Error: dforge cannot use its unpack directory: ${what}\n` +
      'Next steps:\n' +
      fix +
      '  - set XDG_CACHE_HOME to a directory only you can write, with every level above it owned by you or root\n' +
      '    and not writable by group or others (a sticky directory such as /tmp is fine: use a 0700 directory of yours in it).\n',
  );
  process.exit(1);
}
// process.argv in a single executable is [exe, exe, ...args]; oclif reads argv from index 2 on.
// bin/run.js is ESM with top-level await, which require() cannot load: import() it from a file on disk.
createRequire(path.join(tree, 'package.json'))('./scripts/sea/import.cjs')(path.join(tree, 'bin', 'run.js'));
