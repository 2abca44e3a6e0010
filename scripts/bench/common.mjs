// Helpers the benchmarks share: a free loopback port, wall-clock timing, medians and their confidence intervals.
import net from 'node:net';
import os from 'node:os';

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

/** The line every benchmark starts with: which machine produced the figures. */
export function machine(extra = '') {
  return `machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}${extra}`;
}
