import {describe, expect, it} from 'vitest';

import {splitFrames} from '../../src/runtime/docker-frames.js';

const frame = (stream: number, text: string): Buffer => {
  const payload = Buffer.from(text);
  const header = Buffer.alloc(8);
  header[0] = stream;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
};

describe('the engine stream format', () => {
  it('splits whole frames and keeps a partial one for the next chunk, at any cut', () => {
    const all = Buffer.concat([frame(1, 'dump bytes'), frame(2, 'a warning'), frame(3, 'engine error'), frame(1, '')]);
    for (let cut = 0; cut <= all.length; cut++) {
      const first = splitFrames(all.subarray(0, cut));
      const second = splitFrames(Buffer.concat([first.rest, all.subarray(cut)]));
      const frames = [...first.frames, ...second.frames].map((f) => `${f.stream}:${f.payload.toString()}`);
      expect(frames).toEqual(['1:dump bytes', '2:a warning', '3:engine error', '1:']);
      expect(second.rest.length).toBe(0);
    }
  });
});
