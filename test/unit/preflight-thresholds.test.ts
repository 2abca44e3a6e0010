import {describe, expect, it} from 'vitest';

import {parseOpenFilesLimit} from '../../src/preflight/checks/host.js';
import {versionAtLeast} from '../../src/preflight/checks/runtime.js';
import {grade, HOST_THRESHOLDS, meets, OPEN_FILES, TOLERANCE} from '../../src/preflight/thresholds.js';
import {formatBytes} from '../../src/ui/bytes.js';

const GiB = 1024 ** 3;

describe('preflight tolerance bands', () => {
  it('a host reporting 15.6 GiB meets a 16 GiB rule; 15 GiB does not', () => {
    expect(meets(15.6 * GiB, 16 * GiB)).toBe(true);
    expect(meets(16 * GiB * (1 - TOLERANCE), 16 * GiB)).toBe(true);
    expect(meets(15 * GiB, 16 * GiB)).toBe(false);
  });

  it('grades below the minimum as fail, below the recommendation as warn, else pass', () => {
    const memory = HOST_THRESHOLDS.compose.memoryBytes;
    expect(grade(3 * GiB, memory)).toBe('fail');
    expect(grade(3.9 * GiB, memory)).toBe('warn');
    expect(grade(8 * GiB, memory)).toBe('warn');
    expect(grade(15.6 * GiB, memory)).toBe('pass');
    expect(grade(64 * GiB, memory)).toBe('pass');
  });

  it('does not round CPU counts up: one CPU fails a two-CPU minimum', () => {
    expect(grade(1, HOST_THRESHOLDS.compose.cpus)).toBe('fail');
    expect(grade(2, HOST_THRESHOLDS.compose.cpus)).toBe('warn');
    expect(grade(4, HOST_THRESHOLDS.compose.cpus)).toBe('pass');
    expect(grade(1, HOST_THRESHOLDS.embedded.cpus)).toBe('warn');
  });

  it('grades exact limits without tolerance when asked (ulimit -n)', () => {
    expect(grade(1023, OPEN_FILES, 0)).toBe('fail');
    expect(grade(1024, OPEN_FILES, 0)).toBe('warn');
    expect(grade(65_000, OPEN_FILES, 0)).toBe('warn');
    expect(grade(65_536, OPEN_FILES, 0)).toBe('pass');
    expect(grade(Number.POSITIVE_INFINITY, OPEN_FILES, 0)).toBe('pass');
  });

  it('formats bytes in binary units', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(16 * 1024 ** 2)).toBe('16.0 MiB');
    expect(formatBytes(15.6 * GiB)).toBe('15.6 GiB');
  });
});

describe('preflight parsers', () => {
  it('reads the soft open-files limit from /proc/self/limits', () => {
    const limits = [
      'Limit                     Soft Limit           Hard Limit           Units     ',
      'Max cpu time              unlimited            unlimited            seconds   ',
      'Max open files            20000                1048576              files     ',
    ].join('\n');
    expect(parseOpenFilesLimit(limits)).toBe(20_000);
    expect(parseOpenFilesLimit(limits.replace('20000 ', 'unlimited'))).toBe(Number.POSITIVE_INFINITY);
    expect(parseOpenFilesLimit('Max processes 10 10 processes')).toBeUndefined();
  });

  it('compares engine versions on the parts given', () => {
    expect(versionAtLeast('20.10.24+dfsg1', [20, 10])).toBe(true);
    expect(versionAtLeast('26.1.0', [20, 10])).toBe(true);
    expect(versionAtLeast('20.9.9', [20, 10])).toBe(false);
    expect(versionAtLeast('19.03.15', [20, 10])).toBe(false);
    expect(versionAtLeast('v20.10', [20, 10])).toBe(true);
    expect(versionAtLeast('garbage', [20, 10])).toBe(false);
  });
});
