import { describe, expect, it } from 'vitest';
import {
  EnrollRequest,
  JobSpec,
  PROTOCOL_VERSION,
  ProtocolError,
  RoundStart,
  assertCompatibleProtocol,
  isValid,
  parse,
  parseMessage,
  type JobSpec as JobSpecType,
} from '../src/index.js';

const profile = { memoryMiB: 1024, computeGflops: 5, uplinkMbps: 20, downlinkMbps: 100, roundBudgetSec: 60 };

describe('protocol version', () => {
  it('accepts its own version and names both sides on a mismatch', () => {
    expect(() => assertCompatibleProtocol(PROTOCOL_VERSION)).not.toThrow();
    try {
      assertCompatibleProtocol(PROTOCOL_VERSION + 1, 'client');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ProtocolError);
      expect((error as ProtocolError).code).toBe('version_mismatch');
      expect((error as ProtocolError).message).toContain(
        `client speaks Floe protocol v${PROTOCOL_VERSION + 1}, this side speaks v${PROTOCOL_VERSION}`,
      );
    }
  });
});

describe('message and body validation', () => {
  const job: JobSpecType = {
    baseModel: {
      id: 'edge-small',
      sha256: 'a'.repeat(64),
      architecture: {
        hiddenSize: 128,
        intermediateSize: 352,
        numHiddenLayers: 4,
        numAttentionHeads: 4,
        numKeyValueHeads: 2,
        headDim: 32,
      },
    },
    targetModules: ['q_proj', 'v_proj'],
    strategy: 'flexlora',
    clustering: true,
    rounds: 10,
    clientsPerRound: 8,
    quorum: 6,
    roundDeadlineSec: 30,
    localSteps: 20,
    learningRate: 1e-3,
    batchSize: 8,
    maxRank: 16,
    alpha: 16,
  };

  it('accepts valid bodies and reports every broken field with its path', () => {
    expect(isValid(JobSpec, job)).toBe(true);
    expect(() => parse(JobSpec, { ...job, strategy: 'median', rounds: 0 }, 'job spec')).toThrow(
      /invalid job spec: .*\/rounds/,
    );
    expect(isValid(EnrollRequest, { joinToken: 't', protocolVersion: 1, profile })).toBe(true);
    expect(
      isValid(EnrollRequest, { joinToken: 't', protocolVersion: 1, profile: { ...profile, memoryMiB: Number.NaN } }),
    ).toBe(false);
    expect(
      isValid(EnrollRequest, { joinToken: 't', protocolVersion: 1, profile: { ...profile, uplinkMbps: Infinity } }),
    ).toBe(false);
  });

  it('refuses unknown types, foreign fields and identifiers that could carry text', () => {
    expect(() => parseMessage({ type: 'chat', text: 'hi' })).toThrow(/unknown message type "chat"/);
    expect(() => parseMessage({ type: 'hello', protocolVersion: 1, profile, note: 'x' })).toThrow(ProtocolError);
    const start = {
      type: 'round_start',
      jobId: 'job-1',
      round: 0,
      clusterId: 0,
      deadline: Date.now(),
      config: {
        baseModel: job.baseModel,
        targetModules: ['q_proj'],
        rank: 4,
        alpha: 8,
        localSteps: 1,
        learningRate: 0.01,
        batchSize: 4,
      },
      adapter: null,
    };
    expect(isValid(RoundStart, start)).toBe(true);
    expect(isValid(RoundStart, { ...start, jobId: 'my secret sentence' })).toBe(false);
    expect(isValid(RoundStart, { ...start, config: { ...start.config, learningRate: -1 } })).toBe(false);
  });
});
