export * from './help-tag.js';
export * from './gapg.js';
export * from './budget.js';
export * from './cloud-answers.js';
export * from './router.js';
export * from './task-tuning.js';
export * from './rl-trainer.js';
