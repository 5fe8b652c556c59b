export * from './corpora.js';
export * from './tasks.js';
