// Helpers the benchmarks share: running dforge and tools, a free loopback port, wall-clock timing,
// ABBA pairs, medians and their confidence intervals.
import {spawn, spawnSync} from 'node:child_process';
import {readFileSync, writeFileSync} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The built CLI (run `npm run build` first), as `npx dforge` runs it. */
export const cliPath = path.join(repoRoot, 'bin/run.js');

/** Progress goes to stderr: a benchmark's stdout is its report. */
export const log = (line) => process.stderr.write(`${line}\n`);

/**
 * dforge against the install in `dir`, synchronously: returns its stdout, throws with its output
 * on a non-zero exit. `.stop()` stops the install's embedded clusters (a benchmark's last step).
 */
export function dforgeAt(dir) {
  const cli = (...args) => {
    const r = spawnSync(process.execPath, [cliPath, ...args, '--dir', dir, '--quiet'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 256 * 1024 * 1024});
    if (r.status !== 0) throw new Error(`dforge ${args.join(' ')} exited ${r.status}: ${r.stderr}\n${r.stdout.slice(0, 4000)}`);
    return r.stdout;
  };
  cli.stop = () => spawnSync(process.execPath, [cliPath, 'db', 'stop', '--immediate', '--dir', dir, '--quiet']);
  return cli;
}

/**
 * dforge against the install in `dir`, asynchronously and timed: `{ms, rssKiB, stdout}`, where
 * rssKiB is the peak RSS of the dforge process itself, read from its /proc VmHWM while it runs
 * (GNU time would report the largest child: pg_dump or pg_restore).
 */
export function timedDforgeAt(dir) {
  return async (...args) => {
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, [cliPath, ...args, '--dir', dir, '--quiet'], {stdio: ['ignore', 'pipe', 'pipe']});
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr += c));
    let rssKiB = 0;
    const poll = setInterval(() => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (m) rssKiB = Math.max(rssKiB, Number(m[1]));
      } catch {
        // exited between polls
      }
    }, 20);
    const code = await new Promise((resolve) => child.on('close', resolve));
    clearInterval(poll);
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    if (code !== 0) throw new Error(`dforge ${args.join(' ')} exited ${code}: ${stderr}${stdout.slice(0, 4000)}`);
    return {ms, rssKiB, stdout};
  };
}

/** Runs a tool and returns its result; a non-zero exit throws with its stderr. */
export function checkedRun(cmd, args, env, opts = {}) {
  const r = spawnSync(cmd, args, {env, encoding: 'utf8', maxBuffer: 1 << 26, ...opts});
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r;
}

/** Runs `a` and `b` as pair `i`, `b` first on odd pairs: over pairs that is ABBA, which cancels linear drift. */
export async function abba(i, a, b) {
  if (i % 2 === 1) {
    const y = await b();
    return [await a(), y];
  }
  const x = await a();
  return [x, await b()];
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const {port} = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Milliseconds a synchronous function takes. */
export function wall(fn) {
  const start = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * The median with a distribution-free confidence interval, from the order statistics (the count
 * of values below the median is B(n, 1/2)). On a shared VM, run-to-run noise is as large as the
 * effects measured, so a median alone would claim more than it knows. Below 6 values no 95%
 * interval exists, and the whole range is returned.
 */
export function medianInterval(xs, confidence = 0.95) {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  const tail = (1 - confidence) / 2;
  // Largest m with P(X <= m) <= tail; then [s[m], s[n-1-m]] covers the median.
  let term = 0.5 ** n;
  let cdf = term;
  let m = -1;
  while (cdf <= tail && m + 1 < n / 2) {
    m++;
    term *= (n - m) / (m + 1);
    cdf += term;
  }
  if (m < 0) return {median: median(s), low: s[0], high: s[n - 1], label: 'range'};
  return {median: median(s), low: s[m], high: s[n - 1 - m], label: `${Math.round(confidence * 100)}% interval`};
}

/**
 * The options every benchmark takes:
 *  --scale S (or BENCH_SCALE=S): 1 is the documented size; 0.05 is a quick smoke run. Each script
 *    scales its data sets and run counts by it, never below what its statistics need.
 *  --json FILE (or BENCH_JSON=FILE): also write the results as JSON, which run-all.mjs turns into
 *    docs/benchmarks.md, so no figure is copied by hand.
 *  --<name> N: a script's own knobs (runs, concurrency), overriding what the scale gives.
 */
export function benchOptions(argv = process.argv) {
  const flag = (name) => {
    const i = argv.indexOf(`--${name}`);
    return i > 0 ? argv[i + 1] : undefined;
  };
  const scale = Number(flag('scale') ?? process.env.BENCH_SCALE ?? 1);
  if (!(scale > 0)) throw new Error(`--scale must be a positive number, not ${flag('scale') ?? process.env.BENCH_SCALE}`);
  return {
    scale,
    loadAverageAtStart: os.loadavg().map((x) => Number(x.toFixed(2))),
    jsonFile: flag('json') ?? process.env.BENCH_JSON,
    /** A knob that does not scale (concurrency): --<name> N, else `fallback`. */
    value(name, fallback) {
      const given = flag(name);
      return given !== undefined ? Number(given) : fallback;
    },
    /** A count at this scale: `full` at scale 1, never below `min`; --<name> overrides it. */
    count(name, full, min = 1) {
      const given = flag(name);
      return given !== undefined ? Number(given) : Math.max(min, Math.round(full * scale));
    },
  };
}

/** The machine and its state, recorded with every result: load from other users skews all figures. */
export function machineFacts() {
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    loadAverage: os.loadavg().map((x) => Number(x.toFixed(2))),
  };
}

/**
 * Prints a benchmark's result as Markdown tables (stdout is data) and, with --json, writes it for
 * run-all.mjs. `tables` are {title?, columns, rows}; every cell is already formatted text.
 */
export function report(options, result) {
  const full = {...result, scale: options.scale, date: new Date().toISOString(), machine: {...machineFacts(), loadAverageAtStart: options.loadAverageAtStart}};
  process.stdout.write(renderMarkdown(full));
  if (options.jsonFile) writeFileSync(options.jsonFile, `${JSON.stringify(full, null, 2)}\n`);
}

/** One benchmark's section: how it was produced, on what, then its tables and notes. */
export function renderMarkdown(r) {
  const m = r.machine;
  const lines = [
    `### ${r.title}`,
    '',
    `Script \`${r.script}\`, command \`${r.command}\`, scale ${r.scale}. Measured ${r.date.slice(0, 16).replace('T', ' ')} UTC on ${m.cpus} x ${m.cpuModel}, ${m.memGiB} GiB, ${m.kernel}, Node ${m.node}${r.software ? `, ${r.software}` : ''}; 1-minute load average ${m.loadAverageAtStart[0]} at the start, ${m.loadAverage[0]} at the end.`,
    '',
  ];
  if (r.workload) lines.push(`Workload: ${r.workload}`, '');
  for (const t of r.tables) {
    if (t.title) lines.push(`${t.title}:`, '');
    lines.push(`| ${t.columns.join(' | ')} |`, `|${t.columns.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
    for (const row of t.rows) lines.push(`| ${row.join(' | ')} |`);
    lines.push('');
  }
  for (const n of r.notes ?? []) lines.push(`- ${n}`);
  if (r.notes?.length) lines.push('');
  return `${lines.join('\n')}\n`;
}

/** A pair-wise ratio summary: the median of per-pair ratios with its interval, and the ratio of the medians. */
export function pairRatio(xs, ys) {
  const {median: m, low, high, label} = medianInterval(xs.map((x, i) => x / ys[i]));
  return {ratio: m, low, high, label, ratioOfMedians: median(xs) / median(ys)};
}

export const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;
export const millis = (ms) => `${ms.toFixed(1)} ms`;
