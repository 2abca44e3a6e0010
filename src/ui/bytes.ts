/** Byte counts and transfer progress as an operator reads them (df -h style binary units). */

/** Bytes in binary units with one decimal, as df -h and free -h print them. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/**
 * A progress callback for a long byte stream (bundle create, verify, load, push): at most one line
 * per interval, plus the last, with bytes done, the total (marked "~" when it is an estimate), the
 * share and the rate. Lines go to `emit`, which commands point at stderr.
 */
export function byteProgress(
  label: string,
  emit: (line: string) => void,
  options: {intervalMs?: number; estimatedTotal?: boolean; clock?: () => number} = {},
): (done: number, total: number) => void {
  const clock = options.clock ?? Date.now;
  const started = clock();
  let last = started;
  return (done, total) => {
    const now = clock();
    if (done < total && now - last < (options.intervalMs ?? 1000)) return;
    last = now;
    const seconds = Math.max((now - started) / 1000, 0.001);
    const share = total === 0 ? 100 : Math.min(100, Math.floor((done * 100) / total));
    emit(`${label}: ${formatBytes(done)} of ${options.estimatedTotal ? '~' : ''}${formatBytes(total)} (${share}%), ${formatBytes(done / seconds)}/s`);
  };
}
