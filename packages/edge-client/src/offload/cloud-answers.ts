/**
 * The cloud's answers to offloaded prompts: one call per prompt through the cloud client (and so its
 * privacy guard, breaker and call log), cached, with a bound on calls in flight. A call that fails is
 * not cached: the next request for that prompt tries again.
 */
import type { Example } from '@floe/tasks';
import type { CloudClient } from '../inference/cloud-client.js';

export interface CloudAnswerOptions {
  /** Tokens the cloud may answer with (default 16). */
  maxTokens?: number;
  /** Calls in flight at most (default 8). */
  concurrency?: number;
}

export class CloudAnswers {
  readonly stats = { calls: 0, failures: 0, cached: 0 };
  private readonly cache = new Map<string, Promise<string | undefined>>();
  private readonly waiting: (() => void)[] = [];
  private inFlight = 0;

  constructor(
    private readonly client: CloudClient,
    private readonly options: CloudAnswerOptions = {},
  ) {}

  /** The cloud's answer to `prompt` (its first line, trimmed), or undefined when it gave none. */
  answer(prompt: string): Promise<string | undefined> {
    const known = this.cache.get(prompt);
    if (known) {
      this.stats.cached++;
      return known;
    }
    const pending = this.call(prompt).then(
      (answer) => {
        if (answer === undefined) this.cache.delete(prompt);
        return answer;
      },
      (error: unknown) => {
        this.cache.delete(prompt);
        throw error;
      },
    );
    this.cache.set(prompt, pending);
    return pending;
  }

  /** Whether the cloud answers `problem` right; undefined when it gave no answer (down, refused, blocked). */
  async correct(problem: Example): Promise<boolean | undefined> {
    const answer = await this.answer(problem.prompt);
    return answer === undefined ? undefined : answer === problem.answer;
  }

  /** Prompts answered or being answered (failed calls are forgotten). */
  get size(): number {
    return this.cache.size;
  }

  private async call(prompt: string): Promise<string | undefined> {
    // a finished call hands its slot straight to the next waiter, so none slips in between
    if (this.inFlight >= (this.options.concurrency ?? 8))
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.inFlight++;
    this.stats.calls++;
    try {
      let text = '';
      const stream = this.client.answer(prompt, { maxTokens: this.options.maxTokens ?? 16, stop: ['\n'] });
      let end: Awaited<ReturnType<typeof stream.next>>;
      while (!(end = await stream.next()).done) {
        text += end.value;
        if (text.includes('\n')) {
          await stream.return('stop');
          break;
        }
      }
      if (end.done && end.value !== 'stop' && end.value !== 'length') {
        this.stats.failures++;
        return undefined;
      }
      return text.split('\n', 1)[0]!.trim();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.inFlight--;
    }
  }
}
