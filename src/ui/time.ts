/**
 * Times and durations as an operator reads them. Every time printed for a human carries its zone:
 * UTC with the ISO 8601 `Z`, the zone the ops log, the catalog and certificates record in, so a
 * time read off a table can be compared with a log line or pasted into `--since` as it is.
 * `--json` keeps the recorded ISO strings untouched; these are for human output only.
 */

/** `2026-11-28T17:18:15Z`: ISO 8601 to the second, in UTC. An unparseable value is shown as it is. */
export function formatTime(at: string | Date): string {
  const date = typeof at === 'string' ? new Date(at) : at;
  if (Number.isNaN(date.getTime())) return String(at);
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A time with how long ago it was, in whole hours: `2026-11-28T05:00:00Z (12 h ago)`. */
export function formatTimeAgo(at: string, hoursAgo: number): string {
  return `${formatTime(at)} (${hoursAgo} h ago)`;
}

/** A duration as `0.4 s`, `12 s`, `3 min 05 s` or `2 h 04 min`. */
export function formatDuration(seconds: number): string {
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  const whole = Math.round(seconds);
  if (whole < 60) return `${whole} s`;
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, '0')} s`;
  return `${Math.floor(whole / 3600)} h ${String(Math.floor((whole % 3600) / 60)).padStart(2, '0')} min`;
}
