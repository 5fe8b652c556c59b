export * from './edge-models.js';
export * from './text-generation.js';
export * from './openai-server.js';
