/**
 * One text answer on the device, streamed as text pieces: from the edge alone, the edge fused with the
 * cloud (any fusion mode), or the cloud's own answer (offloading) with the edge taking over when the
 * cloud cannot (down, slow, refused, or the privacy guard kept the prompt on the device). Every cloud
 * call passes a privacy guard made for this request; placeholders in what the cloud proposed are mapped
 * back before the text leaves this function. Never throws for the cloud's sake: only a broken edge or
 * a bad request is an error.
 */
import { type ByteSource, END_OF_TEXT, Random, SpeculativeByteSource, chooseOutcome } from '@floe/model';
import type { CountryCode } from 'libphonenumber-js';
import { type CloudCallRecorder, PrivacyGuard, type PrivacyPolicy } from '../privacy/guard.js';
import type { CloudClient, StreamEnd } from '../inference/cloud-client.js';
import { ContinuationDrafter, FusedByteSource, type FusedStats } from '../inference/fused-source.js';
import { FUSION_MODES, type FusionMode } from '../inference/fusion.js';
import type { TokenBucket } from '../offload/budget.js';
import { HELP_TAG, HELP_TAG_FIRST_BYTE } from '../offload/help-tag.js';
import type { EdgeModels } from './edge-models.js';

/** `edge`: the device alone; a fusion mode: edge and cloud fused per byte; `cloud`: the cloud answers. */
export const GENERATION_MODES = ['edge', ...FUSION_MODES, 'cloud'] as const;
export type GenerationMode = (typeof GENERATION_MODES)[number];

export function isGenerationMode(value: unknown): value is GenerationMode {
  return (GENERATION_MODES as readonly unknown[]).includes(value);
}

export interface TextRequest {
  model: string;
  prompt: string;
  /** Bytes of answer at most (the edge's tokens are bytes). */
  maxTokens: number;
  temperature: number;
  topP: number;
  stop: readonly string[];
  seed: number;
  mode: GenerationMode;
  policy: PrivacyPolicy;
  /** Longest a byte waits for the cloud in fused modes (ms). */
  deadlineMs: number;
  signal?: AbortSignal | undefined;
}

export interface PrivacySettings {
  terms?: readonly string[] | undefined;
  phoneRegions?: readonly CountryCode[] | undefined;
  log?: CloudCallRecorder | undefined;
}

export interface TextOutcome {
  finish: 'stop' | 'length';
  /** Bytes of the answer. */
  bytes: number;
  /** Who wrote it: `cloud` when the cloud's answer was used to the end, `edge+cloud` when the edge took over. */
  answeredBy: 'edge' | 'fused' | 'cloud' | 'edge+cloud';
  /** Why the cloud's own answer was not used to the end (mode `cloud`). */
  cloudEnd?: StreamEnd;
  fused?: FusedStats;
  /** Texts bound for the cloud that the guard kept on the device. */
  blockedCalls: number;
  /**
   * The edge asked for help (the help tag, decision 0031): `cloud` when the cloud answered from there,
   * `local` when the edge answered itself (no cloud, the call budget spent, or the cloud failed).
   */
  help?: 'cloud' | 'local';
}

/** How the edge's requests for help (the help tag) reach the cloud. */
export interface HelpSettings {
  /** Calls the tag may make; when it is empty the edge answers itself. Unlimited when absent. */
  budget?: TokenBucket | undefined;
}

/** The longest start of `text` of at most `bytes` UTF-8 bytes that ends on a whole character. */
function cutToBytes(text: string, bytes: number): string {
  let out = '';
  for (const c of text) {
    if (Buffer.byteLength(out + c) > bytes) break;
    out += c;
  }
  return out;
}

/** The distribution without one outcome, renormalized (the edge may not open the help tag again here). */
function withoutOutcome(p: Float64Array, outcome: number): Float64Array {
  const out = p.slice();
  const rest = 1 - (out[outcome] ?? 0);
  out[outcome] = 0;
  if (rest <= 0) return p;
  for (let i = 0; i < out.length; i++) out[i] = (out[i] as number) / rest;
  return out;
}

/** Text pieces that hold back what may still turn into a stop string, and end at the first one. */
class StopWatch {
  private text = '';
  private sent = 0;
  private readonly longest: number;

  constructor(private readonly stops: readonly string[]) {
    this.longest = Math.max(0, ...stops.map((s) => s.length));
  }

  /** Adds text; returns what may be shown and whether a stop string came. */
  push(piece: string): { out: string; stopped: boolean } {
    this.text += piece;
    const hits = this.stops.map((s) => this.text.indexOf(s, Math.max(0, this.sent - s.length))).filter((i) => i >= 0);
    if (hits.length > 0) {
      const cut = Math.min(...hits);
      const out = this.text.slice(this.sent, Math.max(this.sent, cut));
      this.sent = this.text.length;
      return { out, stopped: true };
    }
    let hold = 0;
    for (let k = Math.min(this.longest - 1, this.text.length); k > 0; k--) {
      const tail = this.text.slice(this.text.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) {
        hold = k;
        break;
      }
    }
    const upTo = Math.max(this.sent, this.text.length - hold);
    const out = this.text.slice(this.sent, upTo);
    this.sent = upTo;
    return { out, stopped: false };
  }

  flush(): string {
    const out = this.text.slice(this.sent);
    this.sent = this.text.length;
    return out;
  }

  get all(): string {
    return this.text;
  }
}

export class TextGenerator {
  constructor(
    readonly models: EdgeModels,
    /** The cloud, if the device has one configured. */
    readonly cloud: CloudClient | undefined,
    private readonly privacy: PrivacySettings = {},
    private readonly help: HelpSettings = {},
  ) {}

  guardFor(policy: PrivacyPolicy): PrivacyGuard {
    return new PrivacyGuard({ policy, ...this.privacy });
  }

  async *generate(request: TextRequest): AsyncGenerator<string, TextOutcome> {
    const guard = this.guardFor(request.policy);
    // under `block`, a prompt with personal data is answered by the edge alone: not one call, not even
    // for its clean start
    const keptOnDevice =
      request.policy === 'block' &&
      this.cloud !== undefined &&
      request.mode !== 'edge' &&
      guard.scan(request.prompt).pii &&
      guard.outbound(request.prompt, 'request').verdict === 'blocked';
    const cloud = keptOnDevice ? undefined : this.cloud?.withGuard(guard);
    const restorer = guard.restorer();
    const stops = new StopWatch(request.stop);
    let bytes = 0;
    const blockedBefore = cloud?.stats.blocked ?? 0;
    const blockedCalls = () => (keptOnDevice ? 1 : (cloud?.stats.blocked ?? 0) - blockedBefore);
    let answeredBy: TextOutcome['answeredBy'] = 'edge';
    let cloudEnd: StreamEnd | undefined;
    let answer = '';

    if (request.mode === 'cloud' && cloud) {
      answeredBy = 'cloud';
      const handed = yield* this.handOver(cloud, request, '', 0, stops, restorer);
      bytes = handed.bytes;
      answer += handed.text;
      if (handed.cut) {
        return { finish: handed.stopped ? 'stop' : 'length', bytes, answeredBy, blockedCalls: blockedCalls() };
      }
      cloudEnd = handed.end;
      if (cloudEnd === 'stop' || cloudEnd === 'length') {
        return { finish: cloudEnd, bytes, answeredBy, cloudEnd, blockedCalls: blockedCalls() };
      }
      // the cloud could not answer (all of it): the edge goes on from what came, shown first
      if (handed.stopped) return { finish: 'stop', bytes, answeredBy, cloudEnd, blockedCalls: blockedCalls() };
      answeredBy = answer.length > 0 ? 'edge+cloud' : 'edge';
    }

    const engine = await this.models.engine(request.model);
    const fusion = FUSION_MODES.find((m): m is FusionMode => m === request.mode);
    const drafter = new ContinuationDrafter();
    const edge = new SpeculativeByteSource(engine, { drafter });
    let source: ByteSource = edge;
    let fused: FusedByteSource | undefined;
    if (fusion && cloud) {
      const base =
        fusion === 'proxy' ? new SpeculativeByteSource(await this.models.engine(this.models.baseId)) : undefined;
      fused = new FusedByteSource(
        edge,
        cloud,
        { fusion: { mode: fusion }, deadlineMs: request.deadlineMs, drafter },
        base,
      );
      source = fused;
      answeredBy = 'fused';
    }
    // what the edge continues: the prompt, and whatever the cloud already answered
    let session = await source.start(request.prompt + answer);
    let inContext = Buffer.byteLength(request.prompt + answer) + 1;
    const random = new Random(request.seed);
    const decoder = new TextDecoder();
    let finish: TextOutcome['finish'] = 'length';
    // the help tag is held back while it may still be arriving, and never shown
    let tag = new StopWatch([HELP_TAG]);
    let help: TextOutcome['help'];
    let banTag = false;
    const context = this.models.checkpoint.config.max_position_embeddings;
    try {
      for (;;) {
        // the edge's context bounds the answer too (what it holds: the prompt, what came before this
        // session, and every byte pushed since, shown or held back)
        if (bytes >= request.maxTokens || inContext >= context - 1 || request.signal?.aborted) break;
        let p = await session.next();
        // refused help, the edge answers on its own: the tag's first byte stays out for the rest of the
        // answer (as in evaluation), or the model, still wanting help, writes the tag a byte later
        if (banTag) p = withoutOutcome(p, HELP_TAG_FIRST_BYTE);
        const outcome = chooseOutcome(p, { temperature: request.temperature, topP: request.topP }, random);
        session.push(outcome);
        inContext++;
        if (outcome === END_OF_TEXT) {
          finish = 'stop';
          break;
        }
        bytes++;
        const piece = decoder.decode(Uint8Array.of(outcome), { stream: true });
        if (!piece) continue;
        const seen = tag.push(piece);
        if (seen.out) {
          answer += seen.out;
          const { out, stopped } = stops.push(fused ? restorer.push(seen.out) : seen.out);
          if (out) yield out;
          if (stopped) {
            return {
              finish: 'stop',
              bytes,
              answeredBy,
              blockedCalls: blockedCalls(),
              ...this.statsOf(fused),
              ...(help ? { help } : {}),
            };
          }
        }
        if (!seen.stopped) continue;
        // the edge asked for help: its tag is not part of the answer
        bytes -= Buffer.byteLength(HELP_TAG);
        tag = new StopWatch([HELP_TAG]);
        if (cloud && !keptOnDevice && (this.help.budget?.take() ?? true)) {
          const handed = yield* this.handOver(cloud, request, answer, bytes, stops, restorer);
          bytes = handed.bytes;
          answer += handed.text;
          if (handed.end === 'stop' || handed.end === 'length' || handed.stopped) {
            return {
              finish: handed.stopped || handed.end === 'stop' ? 'stop' : 'length',
              bytes,
              answeredBy: 'edge+cloud',
              blockedCalls: blockedCalls(),
              help: 'cloud',
              ...this.statsOf(fused),
            };
          }
        }
        if (request.signal?.aborted) break;
        // no cloud, no budget left, or the cloud failed: the edge answers itself from here, without the tag
        help = 'local';
        session.close();
        session = await source.start(request.prompt + answer);
        inContext = Buffer.byteLength(request.prompt + answer) + 1;
        banTag = true;
      }
    } finally {
      session.close();
    }
    // an answer that ended while the tag was arriving (two bytes of it or more) does not show the start
    const pending = tag.flush();
    const tail = decoder.decode() + (pending.length >= 2 && HELP_TAG.startsWith(pending) ? '' : pending);
    const rest = stops.push(fused ? restorer.push(tail) + restorer.flush() : tail).out;
    const last = rest + stops.flush();
    if (last) yield last;
    if (fused && fused.stats.fused === 0 && answeredBy === 'fused') answeredBy = 'edge';
    return {
      finish,
      bytes,
      answeredBy,
      ...(cloudEnd ? { cloudEnd } : {}),
      blockedCalls: blockedCalls(),
      ...this.statsOf(fused),
      ...(help ? { help } : {}),
    };
  }

  /**
   * The cloud's own answer to the prompt and `before` (offloading, or where the edge asked for help),
   * shown as it comes (placeholders mapped back, stop strings applied, its length counted in bytes as the
   * edge's, whatever the cloud's tokens are). Returns what it added, how the cloud ended, and whether it
   * was cut here (a stop string or the byte limit) rather than ended by the cloud.
   */
  private async *handOver(
    cloud: CloudClient,
    request: TextRequest,
    before: string,
    bytesBefore: number,
    stops: StopWatch,
    restorer: ReturnType<PrivacyGuard['restorer']>,
  ): AsyncGenerator<string, { text: string; bytes: number; end: StreamEnd; stopped: boolean; cut: boolean }> {
    let bytes = bytesBefore;
    let text = '';
    const pieces = cloud.answer(request.prompt + before, {
      maxTokens: request.maxTokens - bytes,
      temperature: request.temperature,
      stop: request.stop,
      signal: request.signal,
    });
    for (;;) {
      const next = await pieces.next();
      if (next.done) {
        const held = restorer.flush();
        text += held;
        const shown = stops.push(held);
        const completed = next.value === 'stop' || next.value === 'length';
        // a complete answer ends here: what the stop strings held back is shown too
        const out = shown.out + (completed && !shown.stopped ? stops.flush() : '');
        if (out) yield out;
        return { text, bytes, end: next.value, stopped: shown.stopped, cut: false };
      }
      const room = request.maxTokens - bytes;
      const piece = Buffer.byteLength(next.value) > room ? cutToBytes(next.value, room) : next.value;
      bytes += Buffer.byteLength(piece);
      const restored = restorer.push(piece);
      text += restored;
      const { out, stopped } = stops.push(restored);
      if (out) yield out;
      if (stopped || piece !== next.value) {
        await pieces.return('cancelled');
        const rest = stopped ? '' : stops.push(restorer.flush()).out + stops.flush();
        if (rest) yield rest;
        return { text, bytes, end: stopped ? 'stop' : 'length', stopped, cut: true };
      }
    }
  }

  private statsOf(fused: FusedByteSource | undefined): { fused?: FusedStats } {
    return fused ? { fused: fused.stats } : {};
  }
}
