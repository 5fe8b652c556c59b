/**
 * The device's own record of every text bound for a cloud: one JSON line per decision (when, which
 * route, which policy, the verdict, the kinds found, and the text as sent after redaction, or null when
 * nothing was sent). It stays on the device, and holds no value the guard kept back. Appended
 * synchronously, so a record is on disk before the call goes out; the file is rotated to `.1` past
 * `maxBytes`.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import path from 'node:path';
import type { CloudCallRecord, CloudCallRecorder } from './guard.js';

export interface CallLogSummary {
  records: number;
  byVerdict: Record<string, number>;
  last: CloudCallRecord[];
}

export class CloudCallLog implements CloudCallRecorder {
  private size: number;

  constructor(
    readonly file: string,
    private readonly maxBytes = 8 * 1024 * 1024,
  ) {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    this.size = existsSync(file) ? statSync(file).size : 0;
  }

  record(entry: CloudCallRecord): void {
    const line = `${JSON.stringify(entry)}\n`;
    if (this.size + line.length > this.maxBytes && this.size > 0) {
      renameSync(this.file, `${this.file}.1`);
      this.size = 0;
    }
    appendFileSync(this.file, line, { mode: 0o600 });
    this.size += Buffer.byteLength(line);
  }

  /** The records on disk (the rotated file's first), oldest first; unreadable lines are skipped. */
  read(): CloudCallRecord[] {
    const records: CloudCallRecord[] = [];
    for (const file of [`${this.file}.1`, this.file]) {
      if (!existsSync(file)) continue;
      for (const line of readFileSync(file, 'utf8').split('\n')) {
        if (line.trim() === '') continue;
        try {
          records.push(JSON.parse(line) as CloudCallRecord);
        } catch {
          // a line cut by a crash mid-write
        }
      }
    }
    return records;
  }

  summary(last = 10): CallLogSummary {
    const records = this.read();
    const byVerdict: Record<string, number> = {};
    for (const r of records) byVerdict[r.verdict] = (byVerdict[r.verdict] ?? 0) + 1;
    return { records: records.length, byVerdict, last: records.slice(-last) };
  }
}
