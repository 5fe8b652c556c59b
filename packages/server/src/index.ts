export * from './app.js';
export * from './auth.js';
export * from './config.js';
export * from './store/store.js';
export * from './rounds/coordinator.js';
export * from './process.js';
