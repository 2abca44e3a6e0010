import {describe, expect, it} from 'vitest';

import {formatBytes} from '../../src/ui/bytes.js';
import {formatDuration, formatTime, formatTimeAgo} from '../../src/ui/time.js';

describe('human formatters', () => {
  it('times are ISO 8601 in UTC with Z, to the second, whatever zone the input names', () => {
    expect(formatTime('2026-11-28T17:18:15.123Z')).toBe('2026-11-28T17:18:15Z');
    expect(formatTime('2026-11-28T18:18:15+01:00')).toBe('2026-11-28T17:18:15Z');
    expect(formatTime(new Date(Date.UTC(2026, 0, 2, 3, 4, 5)))).toBe('2026-01-02T03:04:05Z');
    // A value that is not a time is shown as it is rather than as "Invalid Date".
    expect(formatTime('soon')).toBe('soon');
    expect(formatTimeAgo('2026-11-28T05:00:00.000Z', 12)).toBe('2026-11-28T05:00:00Z (12 h ago)');
  });

  it('durations read as seconds, minutes or hours', () => {
    expect(formatDuration(0.42)).toBe('0.4 s');
    expect(formatDuration(12.4)).toBe('12 s');
    expect(formatDuration(185)).toBe('3 min 05 s');
    expect(formatDuration(7440)).toBe('2 h 04 min');
  });

  it('sizes are in binary units', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
  });
});
