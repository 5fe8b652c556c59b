/**
 * The Floe wire protocol: one TypeBox schema per socket.io message and HTTP body. Each schema is
 * at once a TypeScript type (`Static<typeof X>`), a JSON Schema (fastify validates and documents
 * HTTP routes with it) and a runtime validator (see validate.ts).
 *
 * Privacy by construction: no message a client sends has a field that can carry text or token ids.
 * Identifiers and tensor names are restricted to short ASCII patterns, metrics are numbers, and
 * every object forbids additional properties.
 */
import Type, { type Static } from 'typebox';

const ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$';
const TENSOR_NAME_PATTERN = '^[A-Za-z0-9_.]{1,256}$';
const METRIC_NAME_PATTERN = '^[a-z][a-z0-9_.]{0,63}$';
const MODULE_NAME_PATTERN = '^[a-z][a-z0-9_]{0,31}$';

export const MAX_TENSOR_RANK = 4;
export const MAX_TENSORS_PER_MESSAGE = 4096;
export const MAX_LORA_RANK = 1024;

const strict = { additionalProperties: false } as const;

export const Id = Type.String({ pattern: ID_PATTERN, description: 'Identifier: 1-64 of [A-Za-z0-9_.-]' });
export const Sha256Hex = Type.String({ pattern: '^[0-9a-f]{64}$', description: 'SHA-256, lowercase hex' });
export const Bytes = Type.Refine(
  Type.Unsafe<Uint8Array>({ description: 'raw bytes (msgpack bin)' }),
  (value) => value instanceof Uint8Array,
  () => 'must be a byte array',
);
const FiniteNumber = Type.Refine(
  Type.Number(),
  (value) => Number.isFinite(value),
  () => 'must be finite',
);
const NonNegative = Type.Refine(
  Type.Number({ minimum: 0 }),
  (value) => Number.isFinite(value),
  () => 'must be finite',
);

/** Scalar training metrics a client may report (loss, accuracy, seconds...). Numbers only. */
export const Metrics = Type.Record(Type.String({ pattern: METRIC_NAME_PATTERN }), FiniteNumber, {
  maxProperties: 32,
  additionalProperties: false,
});
export type Metrics = Static<typeof Metrics>;

/** A LoRA target module kind, e.g. `q_proj`, `down_proj`. */
export const ModuleName = Type.String({ pattern: MODULE_NAME_PATTERN });

export const TensorDType = Type.Union([Type.Literal('f32'), Type.Literal('f16')]);
export type TensorDType = Static<typeof TensorDType>;

/** A tensor on the wire: little-endian element bytes plus the metadata to read them. */
export const WireTensor = Type.Object(
  {
    name: Type.String({ pattern: TENSOR_NAME_PATTERN }),
    dtype: TensorDType,
    shape: Type.Array(Type.Integer({ minimum: 1, maximum: 1 << 24 }), {
      minItems: 1,
      maxItems: MAX_TENSOR_RANK,
    }),
    data: Bytes,
  },
  strict,
);
export type WireTensor = Static<typeof WireTensor>;

/** A LoRA adapter on the wire (PEFT tensor names, see adapter/peft.ts). */
export const WireAdapter = Type.Object(
  {
    alpha: Type.Refine(
      Type.Number({ exclusiveMinimum: 0 }),
      (v) => Number.isFinite(v),
      () => 'must be finite',
    ),
    tensors: Type.Array(WireTensor, { maxItems: MAX_TENSORS_PER_MESSAGE }),
  },
  strict,
);
export type WireAdapter = Static<typeof WireAdapter>;

/** A named class of device (`phone-low`, `laptop`, ...): a label the planner started from, nothing more. */
export const DeviceTier = Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' });
export type DeviceTier = Static<typeof DeviceTier>;

/** What a device can afford, declared or measured. */
export const DeviceProfile = Type.Object(
  {
    tier: Type.Optional(DeviceTier),
    memoryMiB: NonNegative,
    computeGflops: NonNegative,
    uplinkMbps: NonNegative,
    downlinkMbps: NonNegative,
    roundBudgetSec: NonNegative,
  },
  strict,
);
export type DeviceProfile = Static<typeof DeviceProfile>;

/** The heterogeneity-aware LoRA plan a device chose for itself and reports to the server. */
export const RankPlan = Type.Object(
  {
    rank: Type.Integer({ minimum: 1, maximum: MAX_LORA_RANK }),
    targetModules: Type.Array(ModuleName, { minItems: 1, maxItems: 16, uniqueItems: true }),
    /** Layer indices that carry an adapter; absent means all layers. */
    layers: Type.Optional(
      Type.Array(Type.Integer({ minimum: 0, maximum: 4095 }), { minItems: 1, maxItems: 4096, uniqueItems: true }),
    ),
  },
  strict,
);
export type RankPlan = Static<typeof RankPlan>;

/** The numbers that fix the shape of every linear layer of a Llama-style decoder. */
export const ModelArchitecture = Type.Object(
  {
    hiddenSize: Type.Integer({ minimum: 1, maximum: 65_536 }),
    intermediateSize: Type.Integer({ minimum: 1, maximum: 262_144 }),
    numHiddenLayers: Type.Integer({ minimum: 1, maximum: 4096 }),
    numAttentionHeads: Type.Integer({ minimum: 1, maximum: 1024 }),
    numKeyValueHeads: Type.Integer({ minimum: 1, maximum: 1024 }),
    headDim: Type.Integer({ minimum: 1, maximum: 4096 }),
  },
  strict,
);
export type ModelArchitecture = Static<typeof ModelArchitecture>;

/** The frozen base model every client of a job adapts: a name, the hash of its weights and its shapes. */
export const BaseModelRef = Type.Object({ id: Id, sha256: Sha256Hex, architecture: ModelArchitecture }, strict);
export type BaseModelRef = Static<typeof BaseModelRef>;

export const StrategyName = Type.Union([Type.Literal('fedavg'), Type.Literal('hetlora'), Type.Literal('flexlora')]);
export type StrategyName = Static<typeof StrategyName>;

/** Error reply, on the wire and in HTTP bodies. */
export const ErrorBody = Type.Object(
  {
    code: Type.String({ pattern: '^[a-z][a-z0-9_]{0,63}$' }),
    message: Type.String({ maxLength: 2048 }),
  },
  strict,
);
export type ErrorBody = Static<typeof ErrorBody>;

// ---------------------------------------------------------------------------------------------
// socket.io messages. Each is sent as one framed msgpack payload (codec/message.ts); `type` binds
// a frame to its event so that a frame captured from one event cannot be replayed as another.

/** client -> server, first message after connecting. Identity comes from the connection's credential. */
export const Hello = Type.Object(
  {
    type: Type.Literal('hello'),
    protocolVersion: Type.Integer({ minimum: 0 }),
    profile: DeviceProfile,
    plan: Type.Optional(RankPlan),
  },
  strict,
);
export type Hello = Static<typeof Hello>;

/** server -> client, answer to `hello`. */
export const Welcome = Type.Object(
  {
    type: Type.Literal('welcome'),
    protocolVersion: Type.Integer({ minimum: 0 }),
    clientId: Id,
    maxFrameBytes: Type.Integer({ minimum: 1 }),
  },
  strict,
);
export type Welcome = Static<typeof Welcome>;

/** The training recipe of one round, for one client. */
export const RoundConfig = Type.Object(
  {
    baseModel: BaseModelRef,
    targetModules: Type.Array(ModuleName, { minItems: 1, maxItems: 16, uniqueItems: true }),
    rank: Type.Integer({ minimum: 1, maximum: MAX_LORA_RANK }),
    alpha: Type.Refine(
      Type.Number({ exclusiveMinimum: 0 }),
      (v) => Number.isFinite(v),
      () => 'must be finite',
    ),
    localSteps: Type.Integer({ minimum: 1, maximum: 100_000 }),
    learningRate: Type.Refine(
      Type.Number({ exclusiveMinimum: 0 }),
      (v) => Number.isFinite(v),
      () => 'must be finite',
    ),
    batchSize: Type.Integer({ minimum: 1, maximum: 4096 }),
  },
  strict,
);
export type RoundConfig = Static<typeof RoundConfig>;

/** server -> client: you are sampled for this round; start from this adapter (null: from zero). */
export const RoundStart = Type.Object(
  {
    type: Type.Literal('round_start'),
    jobId: Id,
    round: Type.Integer({ minimum: 0 }),
    clusterId: Type.Integer({ minimum: 0 }),
    /** Wall-clock deadline, epoch milliseconds. */
    deadline: Type.Integer({ minimum: 0 }),
    config: RoundConfig,
    adapter: Type.Union([WireAdapter, Type.Null()]),
  },
  strict,
);
export type RoundStart = Static<typeof RoundStart>;

/** client -> server: the locally trained adapter. No data, only tensors, a count and scalars. */
export const Update = Type.Object(
  {
    type: Type.Literal('update'),
    jobId: Id,
    round: Type.Integer({ minimum: 0 }),
    numSamples: Type.Integer({ minimum: 1, maximum: 2 ** 31 - 1 }),
    plan: RankPlan,
    adapter: WireAdapter,
    metrics: Metrics,
  },
  strict,
);
export type Update = Static<typeof Update>;

/** server -> client, the acknowledgement of an `update`. */
export const UpdateAck = Type.Object(
  {
    type: Type.Literal('update_ack'),
    jobId: Id,
    round: Type.Integer({ minimum: 0 }),
    accepted: Type.Boolean(),
    error: Type.Optional(ErrorBody),
  },
  strict,
);
export type UpdateAck = Static<typeof UpdateAck>;

/** server -> clients of a round: the round is over, aggregated or failed. */
export const RoundEnd = Type.Object(
  {
    type: Type.Literal('round_end'),
    jobId: Id,
    round: Type.Integer({ minimum: 0 }),
    /** `aggregated`: the cluster adapters hold this round's updates; `failed`: fewer than the quorum were accepted by the deadline, or the job was stopped (nothing changed). */
    status: Type.Union([Type.Literal('aggregated'), Type.Literal('failed')]),
    clusterId: Type.Integer({ minimum: 0 }),
    /** Updates aggregated (0 for a failed round). */
    accepted: Type.Integer({ minimum: 0 }),
    metrics: Metrics,
    /** Whether the job goes on: a device that joined for one job leaves when it is no longer running. */
    jobStatus: Type.Union([Type.Literal('running'), Type.Literal('completed'), Type.Literal('stopped')]),
  },
  strict,
);
export type RoundEnd = Static<typeof RoundEnd>;

/** server -> client: something the client sent was refused. */
export const ErrorMessage = Type.Object(
  {
    type: Type.Literal('error'),
    code: ErrorBody.properties.code,
    message: ErrorBody.properties.message,
  },
  strict,
);
export type ErrorMessage = Static<typeof ErrorMessage>;

export const MESSAGE_SCHEMAS = {
  hello: Hello,
  welcome: Welcome,
  round_start: RoundStart,
  update: Update,
  update_ack: UpdateAck,
  round_end: RoundEnd,
  error: ErrorMessage,
} as const;

export type MessageType = keyof typeof MESSAGE_SCHEMAS;
export type MessageOf<T extends MessageType> = Static<(typeof MESSAGE_SCHEMAS)[T]>;
export type Message = { [T in MessageType]: MessageOf<T> }[MessageType];

/** Messages a client may send, and the socket.io event each travels on. */
export const CLIENT_MESSAGES = ['hello', 'update'] as const satisfies readonly MessageType[];
/** Messages the server sends. */
export const SERVER_MESSAGES = [
  'welcome',
  'round_start',
  'update_ack',
  'round_end',
  'error',
] as const satisfies readonly MessageType[];

// ---------------------------------------------------------------------------------------------
// HTTP bodies.

/** POST /v1/enroll: a device trades the deployment's join token for its own credential. */
export const EnrollRequest = Type.Object(
  {
    joinToken: Type.String({ minLength: 1, maxLength: 512 }),
    protocolVersion: Type.Integer({ minimum: 0 }),
    profile: DeviceProfile,
  },
  strict,
);
export type EnrollRequest = Static<typeof EnrollRequest>;

export const EnrollResponse = Type.Object(
  {
    clientId: Id,
    /** Signed token; present it as `Authorization: Bearer` on the websocket upgrade and on HTTP requests. */
    credential: Type.String({ minLength: 1, maxLength: 4096 }),
    protocolVersion: Type.Integer({ minimum: 0 }),
  },
  strict,
);
export type EnrollResponse = Static<typeof EnrollResponse>;

/** POST /v1/jobs (admin). */
export const JobSpec = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 128 })),
    baseModel: BaseModelRef,
    targetModules: Type.Array(ModuleName, { minItems: 1, maxItems: 16, uniqueItems: true }),
    strategy: StrategyName,
    clustering: Type.Boolean(),
    maxClusters: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, default: 8 })),
    rounds: Type.Integer({ minimum: 1, maximum: 100_000 }),
    clientsPerRound: Type.Integer({ minimum: 1, maximum: 100_000 }),
    quorum: Type.Integer({ minimum: 1, maximum: 100_000 }),
    roundDeadlineSec: Type.Number({ exclusiveMinimum: 0, maximum: 86_400 }),
    localSteps: Type.Integer({ minimum: 1, maximum: 100_000 }),
    learningRate: Type.Number({ exclusiveMinimum: 0, maximum: 10 }),
    batchSize: Type.Integer({ minimum: 1, maximum: 4096 }),
    /** Rank of the global adapter; each client trains at min(its planned rank, this). */
    maxRank: Type.Integer({ minimum: 1, maximum: MAX_LORA_RANK }),
    alpha: Type.Number({ exclusiveMinimum: 0, maximum: 4096 }),
    /** Updates whose Frobenius norm of a module product exceeds this are refused. */
    maxUpdateNorm: Type.Optional(Type.Number({ exclusiveMinimum: 0, default: 1e4 })),
    /**
     * Under fedavg and hetlora (which average A and B separately), updates whose A or B of a module has a
     * larger Frobenius norm are refused: a bound on the product alone lets B = 0 carry any A.
     */
    maxFactorNorm: Type.Optional(Type.Number({ exclusiveMinimum: 0, default: 1e3 })),
    /**
     * Aggregation weight of an update: `samples`, the number of examples it claims, capped at
     * `maxSamplesPerUpdate`; `equal`, one per update (a client's claim then steers nothing).
     */
    weighting: Type.Optional(Type.Union([Type.Literal('samples'), Type.Literal('equal')], { default: 'samples' })),
    maxSamplesPerUpdate: Type.Optional(Type.Integer({ minimum: 1, maximum: 2 ** 31 - 1, default: 100_000 })),
    /**
     * Server-side clipping before aggregation: `off`; `median`, each module's norms (the product under
     * flexlora, A and B under fedavg/hetlora) scaled down to the round's median of that norm.
     */
    clipUpdates: Type.Optional(Type.Union([Type.Literal('off'), Type.Literal('median')], { default: 'off' })),
    /**
     * `mean` (weighted); `trimmed_mean` drops the `trimFraction` largest and smallest values of every
     * coordinate; `median` takes the coordinate-wise median; `near_median` the weighted mean of the
     * 1 - 2 trimFraction share of updates nearest the coordinate-wise median. Coordinates are the products'
     * entries under flexlora, the factors' under fedavg/hetlora; trimmed_mean and median ignore weights.
     */
    robustAggregation: Type.Optional(
      Type.Union(
        [Type.Literal('mean'), Type.Literal('trimmed_mean'), Type.Literal('median'), Type.Literal('near_median')],
        {
          default: 'mean',
        },
      ),
    ),
    trimFraction: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 0.5, default: 0.2 })),
    /**
     * Seeds the job's shared initial adapter and its sampling of clients (default: the job's id, so
     * every job differs). Two jobs with one seed and the same clients draw the same starts and samples.
     */
    seed: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  },
  strict,
);
export type JobSpec = Static<typeof JobSpec>;

export const JobStatus = Type.Union([Type.Literal('running'), Type.Literal('stopped'), Type.Literal('completed')]);
export type JobStatus = Static<typeof JobStatus>;

export const RoundStatus = Type.Union([Type.Literal('open'), Type.Literal('aggregated'), Type.Literal('failed')]);
export type RoundStatus = Static<typeof RoundStatus>;

export const RoundRecord = Type.Object(
  {
    round: Type.Integer({ minimum: 0 }),
    /** `failed`: fewer accepted updates than the quorum by the deadline (or the job was stopped). */
    status: RoundStatus,
    startedAt: Type.String({ format: 'date-time' }),
    endedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    sampled: Type.Integer({ minimum: 0 }),
    accepted: Type.Integer({ minimum: 0 }),
    rejected: Type.Integer({ minimum: 0 }),
    dropped: Type.Integer({ minimum: 0 }),
    clusters: Type.Integer({ minimum: 0 }),
    metrics: Metrics,
  },
  strict,
);
export type RoundRecord = Static<typeof RoundRecord>;

export const JobSummary = Type.Object(
  {
    id: Id,
    spec: JobSpec,
    status: JobStatus,
    currentRound: Type.Integer({ minimum: 0 }),
    createdAt: Type.String({ format: 'date-time' }),
    rounds: Type.Array(RoundRecord),
  },
  strict,
);
export type JobSummary = Static<typeof JobSummary>;

/** A running job as a device sees it before joining: what it would train (GET /v1/jobs/open). */
export const OpenJob = Type.Object({ id: Id, spec: JobSpec, currentRound: Type.Integer({ minimum: 0 }) }, strict);
export type OpenJob = Static<typeof OpenJob>;
