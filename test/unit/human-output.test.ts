import {describe, expect, it} from 'vitest';

import type {BackupRecord} from '../../src/backup/catalog.js';
import {retentionDecisions} from '../../src/backup/manage.js';
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

describe('retention decisions say why a backup goes', () => {
  const at = (iso: string, id: string, verified = false): BackupRecord => ({
    id,
    kind: 'tenant',
    tenant: 'acme',
    region: 'r',
    cluster: 'c',
    destination: 'd',
    location: id,
    size: 1,
    sha256: '',
    pgVersion: '15',
    keyId: 'dek/acme',
    keyVersion: 1,
    createdAt: iso,
    verifiedAt: verified ? iso : null,
  });

  it('names each rule that passed a deleted backup over; a kept one carries no reason', () => {
    const backups = [at('2026-11-28T02:00:00Z', 'today-2'), at('2026-11-28T01:00:00Z', 'today-1'), at('2026-11-27T01:00:00Z', 'yesterday'), at('2026-10-01T01:00:00Z', 'october')];
    const decisions = retentionDecisions(backups, {keepLast: 1, keepDaily: 2, keepWeekly: 0, keepMonthly: 1});
    expect(decisions.get('today-2')).toEqual({keep: true});
    expect(decisions.get('yesterday')).toEqual({keep: true});
    expect(decisions.get('today-1')).toEqual({
      keep: false,
      why: 'not among the newest 1 (keep-last 1); a newer backup is kept for 2026-11-28, 2026-11 (keep-daily 2, keep-monthly 1)',
    });
    expect(decisions.get('october')).toEqual({
      keep: false,
      why: 'not among the newest 1 (keep-last 1); 2026-10-01 is beyond the 2 newest days with a backup (keep-daily 2); 2026-10 is beyond the newest month with a backup (keep-monthly 1)',
    });
  });

  it('keeps the newest verified backup whatever the rules say', () => {
    const decisions = retentionDecisions([at('2026-11-28T02:00:00Z', 'new'), at('2026-11-01T01:00:00Z', 'old-verified', true)], {keepLast: 1, keepDaily: 0, keepWeekly: 0, keepMonthly: 0});
    expect(decisions.get('old-verified')).toEqual({keep: true});
  });
});
