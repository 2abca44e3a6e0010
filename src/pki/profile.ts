/**
 * The certificate profile: lifetimes, renewal timing and serial numbers, in one place so that
 * `certs status` and the issuing code can never disagree about them.
 */

import {randomBytes} from 'node:crypto';

import {UserError} from '../errors.js';

export const DAY_MS = 86_400_000;

/** Ten years: the CA is replaced deliberately (it changes every client's trust store), not routinely. */
export const CA_VALIDITY_DAYS = 3650;

/**
 * 397 days for leaves: under the 398-day ceiling that browsers and Apple platforms have enforced
 * on publicly trusted TLS server certificates since 2020, with room for the backdated start.
 * Private roots like this CA are exempt from those rules (and from the CA/Browser Forum's shorter
 * schedule from 2026 on), but staying under the best-known cap spares surprises with clients that
 * apply it anyway, and keeps renewal a yearly routine. Client leaves use the same lifetime so one
 * renewal pass covers every leaf.
 */
export const LEAF_VALIDITY_DAYS = 397;

/** notBefore is set this far in the past, so hosts whose clocks run a little behind accept a new certificate. */
export const CLOCK_SKEW_MS = 5 * 60_000;

/** Renew once two thirds of the lifetime has passed, leaving a third of it to notice a failed renewal. */
export const RENEW_AFTER_FRACTION = 2 / 3;

/** Warn when less than this many days remain. */
export const EXPIRY_WARNING_DAYS = 30;

/**
 * A random positive 16-byte serial. The top bit is cleared so DER needs no sign byte, and the next
 * one set so no leading zero byte is dropped: always 16 bytes, with 126 random bits (the CA/Browser
 * Forum asks for at least 64).
 */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x40;
  return bytes.toString('hex');
}

export function validityDays(value: number | undefined, fallback: number): number {
  const days = value ?? fallback;
  if (!Number.isInteger(days) || days < 1) {
    throw new UserError(`validity must be a whole number of days, at least 1 (got ${String(value)})`, {
      nextSteps: [`Leave it unset for the default of ${fallback} days, or pass a positive integer.`],
    });
  }
  return days;
}
