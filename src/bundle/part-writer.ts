import {randomBytes} from 'node:crypto';
import {constants, promises as fs, rmSync} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';
import {describeWriteError, fsyncDir, writeFileStreamed} from '../state/atomic-file.js';
import {onTermination} from '../util/termination.js';
import {partName, partsIndexFile} from './manifest.js';
import {MAX_PARTS} from './size.js';

/**
 * The bundle's byte stream on disk, as one file or as parts of `partBytes` each. Everything is
 * written inside a hidden `.<name>.<random>.incomplete` directory beside the output and renamed
 * out only when the bundle is complete, so an interrupted run never leaves a file under the
 * bundle's name. Supports the two moves the streaming writer needs: patching bytes already
 * written (a blob header whose name is learnt after its content) and truncating back to an
 * offset (a blob that turned out to be a duplicate), both across part boundaries.
 */
export class PartWriter {
  private readonly parts: fs.FileHandle[] = [];
  private length = 0;
  private unregister: (() => void) | undefined;

  private constructor(
    readonly out: string,
    readonly tempDir: string,
    private readonly partBytes: number,
  ) {}

  /** `partBytes` Infinity: one file. */
  static async open(out: string, partBytes: number): Promise<PartWriter> {
    const dir = path.dirname(out);
    const tempDir = path.join(dir, `.${path.basename(out)}.${randomBytes(6).toString('hex')}.incomplete`);
    await fs.mkdir(tempDir, {mode: 0o700}).catch((err: unknown) => {
      throw describeWriteError(err, out);
    });
    const writer = new PartWriter(out, tempDir, partBytes);
    // SIGINT, SIGTERM or SIGHUP removes the temporaries before the process ends; SIGKILL leaves
    // the hidden .incomplete directory, which no reader mistakes for a bundle.
    writer.unregister = onTermination(() => rmSync(tempDir, {recursive: true, force: true}));
    return writer;
  }

  get offset(): number {
    return this.length;
  }

  get split(): boolean {
    return Number.isFinite(this.partBytes);
  }

  async write(chunk: Uint8Array): Promise<void> {
    await this.pwrite(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength), this.length);
    this.length += chunk.byteLength;
  }

  /** Overwrites bytes already written (never past the end). */
  async patch(offset: number, bytes: Buffer): Promise<void> {
    if (offset + bytes.length > this.length) throw new Error(`patch at ${offset} runs past the end (${this.length})`);
    await this.pwrite(bytes, offset);
  }

  /** Drops everything from `offset` on, closing and deleting parts that lie wholly beyond it. */
  async truncate(offset: number): Promise<void> {
    const keep = this.split ? Math.max(1, Math.ceil(offset / this.partBytes)) : 1;
    while (this.parts.length > keep) {
      const index = this.parts.length - 1;
      await this.parts.pop()!.close();
      await fs.rm(this.tempPart(index));
    }
    const last = this.parts.length - 1;
    if (last >= 0) await this.parts[last]!.truncate(offset - last * this.partBytesOrZero());
    this.length = offset;
  }

  /** fsyncs and closes the parts; returns their temp paths with sizes, in order. */
  async close(): Promise<Array<{file: string; size: number}>> {
    const result: Array<{file: string; size: number}> = [];
    for (const [index, handle] of this.parts.entries()) {
      await handle.sync();
      await handle.close();
      result.push({file: this.tempPart(index), size: Math.min(this.length - index * this.partBytesOrZero(), this.partBytes)});
    }
    this.parts.length = 0;
    return result;
  }

  /** A file in the temp directory, renamed out by publish(); fsynced before it is named, like the parts. */
  async writeSide(name: string, bytes: Buffer): Promise<void> {
    await writeFileStreamed(path.join(this.tempDir, name), (write) => write(bytes), {exclusive: true});
  }

  /**
   * Gives each temp file its final name (temp name -> final path), then removes the temp
   * directory. An existing output is refused unless `force`, which replaces it and then removes
   * what is left of the bundle it replaced (see removeStale).
   */
  async publish(moves: ReadonlyArray<{from: string; to: string}>, force: boolean): Promise<void> {
    try {
      for (const {to} of moves) {
        if (!force && (await exists(to))) throw refuseOverwrite(to);
      }
      for (const {from, to} of moves) {
        const temp = path.join(this.tempDir, from);
        if (force) {
          await fs.rename(temp, to);
        } else {
          // link(2) fails if a file appeared under the name meanwhile: nothing is ever replaced without --force.
          await fs.link(temp, to).catch((err: NodeJS.ErrnoException) => {
            throw err.code === 'EEXIST' ? refuseOverwrite(to) : err;
          });
          await fs.rm(temp);
        }
      }
      if (force) await this.removeStale(new Set(moves.map((m) => path.resolve(m.to))));
      await fsyncDir(path.dirname(this.out));
    } catch (err) {
      throw describeWriteError(err, this.out);
    }
    await this.discard();
  }

  /**
   * After --force has put the new outputs in place: removes the files of the replaced bundle that
   * the new one did not overwrite. A stale F.parts.json.sig beside a new unsigned index would make
   * it look signed, parts beyond the new count break `cat F.0* > F`, and a stale F beside new
   * parts (or parts beside a new F) is a second, older bundle under the same name.
   */
  private async removeStale(kept: ReadonlySet<string>): Promise<void> {
    const dir = path.dirname(this.out);
    const base = path.basename(this.out);
    const index = path.basename(partsIndexFile(this.out));
    const ours = (name: string): boolean =>
      name === base || name === index || name === `${index}.sig` || (name.startsWith(`${base}.`) && /^[0-9]{3}$/.test(name.slice(base.length + 1)));
    for (const name of await fs.readdir(dir)) {
      const file = path.resolve(dir, name);
      if (ours(name) && !kept.has(file)) await fs.rm(file);
    }
  }

  /** Removes every temporary; called on any failure. */
  async discard(): Promise<void> {
    for (const handle of this.parts) await handle.close().catch(() => {});
    this.parts.length = 0;
    await fs.rm(this.tempDir, {recursive: true, force: true});
    this.unregister?.();
  }

  /** Temp name of part `index` (0-based): the final part name's basename, or the single file's. */
  tempName(index: number): string {
    return this.split ? path.basename(partName(this.out, index)) : path.basename(this.out);
  }

  private tempPart(index: number): string {
    return path.join(this.tempDir, this.tempName(index));
  }

  private partBytesOrZero(): number {
    return this.split ? this.partBytes : 0;
  }

  private async handle(index: number): Promise<fs.FileHandle> {
    while (this.parts.length <= index) {
      // The estimate checked before writing can be short (it does not know every byte); a part
      // past MAX_PARTS could never be verified, so the run fails and the caller discards it all.
      if (this.parts.length >= MAX_PARTS) {
        throw new UserError(`${this.out} needs more than ${MAX_PARTS} parts of ${this.partBytes} bytes; a split bundle has at most ${MAX_PARTS}, so nothing was written`, {
          nextSteps: [`Pass a larger --split size (at least ${Math.ceil(((this.length + 1) * 1.1) / MAX_PARTS / 1024 ** 2)}M).`],
          data: {file: this.out, maxParts: MAX_PARTS, partBytes: this.partBytes},
        });
      }
      const file = this.tempPart(this.parts.length);
      this.parts.push(await fs.open(file, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644));
    }
    return this.parts[index]!;
  }

  private async pwrite(bytes: Buffer, offset: number): Promise<void> {
    try {
      let done = 0;
      while (done < bytes.length) {
        const at = offset + done;
        const index = this.split ? Math.floor(at / this.partBytes) : 0;
        const within = at - index * this.partBytesOrZero();
        const room = this.split ? this.partBytes - within : bytes.length - done;
        const n = Math.min(room, bytes.length - done);
        const handle = await this.handle(index);
        let written = 0;
        while (written < n) {
          const r = await handle.write(bytes, done + written, n - written, within + written);
          written += r.bytesWritten;
        }
        done += n;
      }
    } catch (err) {
      throw describeWriteError(err, this.out);
    }
  }
}

async function exists(file: string): Promise<boolean> {
  return fs.lstat(file).then(
    () => true,
    () => false,
  );
}

export function refuseOverwrite(file: string): UserError {
  return new UserError(`${file} already exists; bundle create does not replace it`, {
    nextSteps: ['Pass another --out, remove the old bundle, or pass --force to replace it.'],
    data: {file},
  });
}

/** Fails before any work when an output (the bundle, a part or the parts index) already exists. */
export async function checkOutputsFree(files: readonly string[], force: boolean): Promise<void> {
  if (force) return;
  for (const file of files) if (await exists(file)) throw refuseOverwrite(file);
}
