export * from './corpora.js';
export * from './tasks.js';
export * from './evaluate.js';
export * from './pretrain-data.js';
export * from './data-dir.js';
