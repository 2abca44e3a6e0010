/**
 * Just enough DER to wrap and unwrap structures that @peculiar/x509 has no class for (the name
 * constraints extension). Single-byte tags and definite lengths only, which is all X.509 uses.
 */

export interface Tlv {
  readonly tag: number;
  readonly contents: Uint8Array;
  /** The whole element, tag and length included. */
  readonly encoded: Uint8Array;
}

export const Tag = {
  sequence: 0x30,
  /** `[0]` and `[1]`, constructed context-specific: the subtrees of NameConstraints. */
  context0: 0xa0,
  context1: 0xa1,
} as const;

export function encode(tag: number, ...parts: Uint8Array[]): Uint8Array {
  const length = parts.reduce((n, p) => n + p.length, 0);
  const lengthBytes: number[] = [];
  if (length < 0x80) {
    lengthBytes.push(length);
  } else {
    for (let n = length; n > 0; n >>>= 8) lengthBytes.unshift(n & 0xff);
    lengthBytes.unshift(0x80 | lengthBytes.length);
  }
  const out = new Uint8Array(1 + lengthBytes.length + length);
  out[0] = tag;
  out.set(lengthBytes, 1);
  let offset = 1 + lengthBytes.length;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/** Every element at one level of `bytes`; throws on anything malformed or truncated. */
export function decodeAll(bytes: Uint8Array): Tlv[] {
  const out: Tlv[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const start = offset;
    const tag = bytes[offset++]!;
    if ((tag & 0x1f) === 0x1f) throw new Error('DER: multi-byte tags are not supported');
    let length = bytes[offset++];
    if (length === undefined) throw new Error('DER: truncated length');
    if (length & 0x80) {
      const count = length & 0x7f;
      if (count === 0 || count > 4) throw new Error('DER: unsupported length encoding');
      length = 0;
      for (let i = 0; i < count; i++) {
        const b = bytes[offset++];
        if (b === undefined) throw new Error('DER: truncated length');
        length = length * 256 + b;
      }
    }
    const end = offset + length;
    if (end > bytes.length) throw new Error('DER: element runs past the end of its container');
    out.push({tag, contents: bytes.subarray(offset, end), encoded: bytes.subarray(start, end)});
    offset = end;
  }
  return out;
}
