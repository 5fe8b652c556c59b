export * from './local-federation.js';
export * from './synthetic-devices.js';
export * from './report/charts.js';
export * from './report/schema.js';
export * from './report/markdown.js';
