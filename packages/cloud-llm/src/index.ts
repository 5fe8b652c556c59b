export * from './app.js';
export * from './engine.js';
export * from './faults.js';
export * from './choice.js';
export { chatPrompt } from '@floe/shared';
export * from './process.js';
