/**
 * Every error code a Floe server can send, where it arrives and what it means. docs/protocol.md lists
 * each, and the AsyncAPI document carries the catalogue (`x-floe-error-codes`); a test checks that every
 * code the server's sources raise is here.
 */

/**
 * Where a code reaches the device: an `error` event (`event`; `closes`: the connection is closed after
 * it), a refused update (`update_ack` with `accepted: false`), a refused websocket upgrade (`upgrade`: HTTP
 * 400 whose body is `code: message`), or an HTTP error body `{code, message}` (`http`).
 */
export type ErrorChannel = 'event' | 'event-closes' | 'update_ack' | 'upgrade' | 'http';

export interface ErrorCodeInfo {
  channels: readonly ErrorChannel[];
  meaning: string;
}

export const ERROR_CODES = {
  // frames and messages (error events; the connection stays open)
  not_bytes: { channels: ['event'], meaning: 'the event argument is not one binary attachment' },
  too_large: { channels: ['event'], meaning: 'the frame is over the maxFrameBytes of welcome' },
  truncated: { channels: ['event'], meaning: 'fewer than 16 header bytes' },
  bad_magic: { channels: ['event'], meaning: 'the frame does not start with "FLOE"' },
  unsupported_frame_version: { channels: ['event'], meaning: 'byte 4 is not a frame version this server reads (1)' },
  bad_header: { channels: ['event'], meaning: 'reserved bytes 5-7 are not zero' },
  bad_length: { channels: ['event'], meaning: 'the length field is not the frame length minus 16' },
  bad_checksum: { channels: ['event'], meaning: 'the CRC-32 of the payload does not match' },
  malformed: {
    channels: ['event'],
    meaning: 'the payload is not exactly one msgpack value, or uses an extension type',
  },
  too_complex: {
    channels: ['event'],
    meaning: 'the msgpack is nested deeper than 16 or holds more than 100,000 values',
  },
  invalid_message: {
    channels: ['event'],
    meaning: "the message fails its schema, or its type is not the event's name",
  },
  bad_tensor: {
    channels: ['event'],
    meaning: "a tensor's byte count does not match its dtype and shape",
  },
  unknown_event: { channels: ['event'], meaning: 'an event name clients do not send' },
  hello_first: { channels: ['event'], meaning: 'an update before a valid hello on this connection' },
  rate_limited: {
    channels: ['event', 'http'],
    meaning:
      'more messages than the rate limit (default 20 per 10 s per client), or HTTP requests over the per-address limit',
  },
  internal_error: { channels: ['event', 'http'], meaning: 'the server failed; the request may be retried' },
  // the connection is closed after these
  version_mismatch: {
    channels: ['event-closes', 'http'],
    meaning: 'hello or enrollment with another protocol version than the server speaks',
  },
  hello_timeout: { channels: ['event-closes'], meaning: 'no valid hello within the hello timeout (default 10 s)' },
  replaced: { channels: ['event-closes'], meaning: 'the same client opened a newer connection' },
  credential_expired: {
    channels: ['event-closes'],
    meaning: 'the credential the connection was opened with expired; refresh it and connect again',
  },
  revoked: { channels: ['event-closes', 'upgrade', 'http'], meaning: 'an administrator revoked this client' },
  // websocket upgrade refusals
  bad_credential: {
    channels: ['upgrade', 'http'],
    meaning: 'no credential, a malformed or expired one, or one this server did not sign',
  },
  unknown_client: {
    channels: ['upgrade', 'http'],
    meaning: "the credential names a client this server's store does not know",
  },
  too_many_connections: { channels: ['upgrade'], meaning: 'too many open connections from this address (default 256)' },
  // refused updates: the client may send a corrected update until the deadline
  unknown_job: { channels: ['update_ack', 'http'], meaning: 'no such job' },
  job_not_running: { channels: ['update_ack'], meaning: 'the job is stopped or completed' },
  wrong_round: {
    channels: ['update_ack'],
    meaning: 'not the round the job is collecting (over, not started, or being aggregated)',
  },
  not_sampled: { channels: ['update_ack'], meaning: 'this client was not sampled in the round' },
  duplicate_update: {
    channels: ['update_ack'],
    meaning: 'an update of this client is already accepted in the round (the first stands)',
  },
  non_finite: { channels: ['update_ack'], meaning: 'a tensor holds NaN or an infinity' },
  wrong_rank: {
    channels: ['update_ack', 'http'],
    meaning: "the plan's rank is not the assigned rank (or, on a download, above the job's maxRank)",
  },
  wrong_modules: { channels: ['update_ack'], meaning: "the plan's modules are not the job's targetModules" },
  wrong_layers: {
    channels: ['update_ack'],
    meaning: "the plan's layers are not the assigned layers, or name layers the base model does not have",
  },
  bad_adapter: { channels: ['update_ack'], meaning: 'tensors that do not pair into lora_A/lora_B of known modules' },
  wrong_alpha: { channels: ['update_ack'], meaning: "the adapter's alpha is not the job's" },
  missing_module: { channels: ['update_ack'], meaning: 'a module of the assignment is missing' },
  unexpected_module: { channels: ['update_ack'], meaning: 'a module outside the assignment' },
  wrong_shape: { channels: ['update_ack'], meaning: "a factor's shape does not match the base model and rank" },
  norm_too_large: {
    channels: ['update_ack'],
    meaning: "a module's change (alpha/rank) B A exceeds the job's maxUpdateNorm (default 1e4)",
  },
  factor_norm_too_large: {
    channels: ['update_ack'],
    meaning: "a factor exceeds the job's maxFactorNorm (default 1e3; fedavg and hetlora)",
  },
  // HTTP only
  bad_join_token: { channels: ['http'], meaning: 'enrollment with a wrong join token or a used or expired key' },
  unauthorized: { channels: ['http'], meaning: 'the route needs an admin token or a client credential' },
  not_a_participant: {
    channels: ['http'],
    meaning:
      "a job's adapters go to admins and the clients sampled in one of its rounds (also for a job that does not exist)",
  },
  no_adapter: { channels: ['http'], meaning: 'the cluster has no aggregated adapter yet' },
  invalid_job: { channels: ['http'], meaning: 'a job spec the server cannot run' },
  invalid_request: { channels: ['http'], meaning: 'a body, path or query that fails its schema' },
} as const satisfies Record<string, ErrorCodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;
