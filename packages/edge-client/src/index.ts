export * from './connection.js';
export * from './device-store.js';
export * from './local-trainer.js';
export * from './participant.js';
export * from './federation-client.js';
export * from './personalize.js';
