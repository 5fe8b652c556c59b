export * from './app.js';
export * from './engine.js';
export * from './faults.js';
export * from './choice.js';
export { chatPrompt } from './openai.js';
export * from './process.js';
