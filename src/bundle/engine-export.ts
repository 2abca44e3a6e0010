import {BugError} from '../errors.js';
import {BLOCK, decodeEntryHeader, paddedSize} from './tar-blocks.js';

/**
 * Reads the engine's legacy `docker save` tar (Docker 20.10: `<v1id>/layer.tar`, `<v1id>/json`,
 * `<v1id>/VERSION`, `<config hex>.json`, `manifest.json`, `repositories`) as it streams: layer
 * contents are handed on chunk by chunk and never held whole, so memory stays bounded by one
 * chunk plus the small JSON files.
 */

/** One image in the engine's manifest.json. */
export interface SavedImage {
  readonly Config: string;
  readonly RepoTags: string[] | null;
  readonly Layers: string[];
}

export interface ExportHandlers {
  /** A layer's bytes; `content` must be read to its end before the next entry is parsed. */
  layer(path: string, size: number, content: AsyncIterable<Buffer>): Promise<void>;
  /** `<hex>.json`: an image config, small. */
  config(path: string, bytes: Buffer): Promise<void>;
  /** The engine writes a second v1 id for an already-saved layer as a symlink to the first. */
  layerLink(path: string, target: string): void;
}

/** Small files (configs, manifest.json) larger than this are not what the engine writes. */
const SMALL_MAX = 64 * 1024 * 1024;

export async function readDockerSave(stream: AsyncIterable<Buffer | Uint8Array | string>, handlers: ExportHandlers): Promise<SavedImage[]> {
  const source = new ByteSource(stream[Symbol.asyncIterator]());
  let manifest: SavedImage[] | undefined;
  let longName: string | undefined;
  for (;;) {
    const block = await source.readExact(BLOCK);
    if (block === undefined) break;
    const h = decodeEntryHeader(block);
    if (h.nullBlock) break;
    if (!h.cksumValid) throw malformed('a tar header with a bad checksum');
    const name = longName ?? h.path;
    longName = undefined;
    if (h.typeKey === 'x' || h.typeKey === 'L') {
      const meta = await source.readSmall(h.size);
      longName = h.typeKey === 'L' ? meta.toString('utf8').replace(/\0.*$/s, '') : paxPath(meta);
      continue;
    }
    if (h.typeKey === '2' && /^[0-9a-f]{64}\/layer\.tar$/.test(name)) {
      handlers.layerLink(name, (block.subarray(157, 257).toString('utf8').split('\0')[0] ?? ''));
      continue;
    }
    const regular = h.typeKey === '0' || h.typeKey === '';
    if (regular && /^[0-9a-f]{64}\/layer\.tar$/.test(name)) {
      await handlers.layer(name, h.size, source.chunks(h.size));
      await source.skip(paddedSize(h.size) - h.size);
    } else if (regular && /^[0-9a-f]{64}\.json$/.test(name)) {
      await handlers.config(name, await source.readSmall(h.size));
    } else if (regular && name === 'manifest.json') {
      manifest = JSON.parse((await source.readSmall(h.size)).toString('utf8')) as SavedImage[];
    } else {
      await source.skip(paddedSize(h.size));
    }
  }
  // Close the engine's response: the padding after the end blocks is not needed, and an open socket keeps the process alive.
  await source.close();
  if (!manifest) throw malformed('no manifest.json');
  return manifest;
}

function malformed(what: string): BugError {
  return new BugError(`the Docker engine's image export is not a docker-save tar: ${what}`, {
    nextSteps: ['Check the engine (docker version; Docker 20.10 or later), and that `docker save IMAGE | tar -t` lists manifest.json.'],
  });
}

function paxPath(bytes: Buffer): string | undefined {
  const match = /(?:^|\n)[0-9]+ path=([^\n]*)\n/.exec(bytes.toString('utf8'));
  return match?.[1];
}

/** Pull-based reads over a byte stream: exact-length reads, skips, and bounded chunk streams. */
class ByteSource {
  private pending: Buffer = Buffer.alloc(0);
  private done = false;

  constructor(private readonly it: AsyncIterator<Buffer | Uint8Array | string>) {}

  private async fill(): Promise<boolean> {
    if (this.done) return false;
    const next = await this.it.next();
    if (next.done) {
      this.done = true;
      return false;
    }
    const value = typeof next.value === 'string' ? Buffer.from(next.value) : Buffer.from(next.value);
    this.pending = this.pending.length === 0 ? value : Buffer.concat([this.pending, value]);
    return true;
  }

  async close(): Promise<void> {
    await this.it.return?.();
  }

  /** Exactly n bytes, or undefined at a clean end of stream. */
  async readExact(n: number): Promise<Buffer | undefined> {
    while (this.pending.length < n) {
      if (!(await this.fill())) {
        if (this.pending.length === 0) return undefined;
        throw malformed('it ends in the middle of an entry');
      }
    }
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    return out;
  }

  async readSmall(size: number): Promise<Buffer> {
    if (size > SMALL_MAX) throw malformed(`a metadata file of ${size} bytes`);
    const bytes = size === 0 ? Buffer.alloc(0) : await this.readExact(size);
    if (bytes === undefined) throw malformed('it ends in the middle of an entry');
    await this.skip(paddedSize(size) - size);
    return Buffer.from(bytes);
  }

  async skip(n: number): Promise<void> {
    for await (const _ of this.chunks(n)) {
      // discarded
    }
  }

  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.pending.length === 0 && !(await this.fill())) throw malformed('it ends in the middle of an entry');
      const take = Math.min(left, this.pending.length);
      const out = this.pending.subarray(0, take);
      this.pending = this.pending.subarray(take);
      left -= take;
      yield out;
    }
  }
}
