/**
 * The engine's multiplexed stream format (attach, exec and logs without a TTY): frames of an
 * 8-byte header (stream: 1 stdout, 2 stderr, 3 engine error; three zero bytes; big-endian
 * payload length) followed by the payload.
 */
export interface Frame {
  readonly stream: number;
  readonly payload: Buffer;
}

/** The whole frames at the start of `data`, and what is left of a frame not yet complete. */
export function splitFrames(data: Buffer): {frames: Frame[]; rest: Buffer} {
  const frames: Frame[] = [];
  let offset = 0;
  while (data.length - offset >= 8) {
    const size = data.readUInt32BE(offset + 4);
    if (data.length - offset < 8 + size) break;
    frames.push({stream: data[offset]!, payload: data.subarray(offset + 8, offset + 8 + size)});
    offset += 8 + size;
  }
  return {frames, rest: data.subarray(offset)};
}
