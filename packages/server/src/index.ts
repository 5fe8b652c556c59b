export * from './aggregation/strategy.js';
export * from './aggregation/validate.js';
