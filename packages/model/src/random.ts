export { Random } from '@floe/shared';
