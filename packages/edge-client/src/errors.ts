import { FloeError } from '@floe/shared';

/** Something a device refuses or cannot do in a federation (not enrolled, wrong base model, ...). */
export class FederationError extends FloeError {}
