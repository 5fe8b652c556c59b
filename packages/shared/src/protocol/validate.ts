import Compile, { type Validator } from 'typebox/compile';
import type { Static, TSchema } from 'typebox';
import { ProtocolError } from '../errors.js';
import { MESSAGE_SCHEMAS, type MessageOf, type MessageType } from './schemas.js';

const MAX_REPORTED_ISSUES = 5;
const validators = new WeakMap<TSchema, Validator>();

function validatorFor(schema: TSchema): Validator {
  let validator = validators.get(schema);
  if (!validator) {
    validator = Compile(schema);
    validators.set(schema, validator);
  }
  return validator;
}

/** True when `value` matches `schema`. */
export function isValid<S extends TSchema>(schema: S, value: unknown): value is Static<S> {
  return validatorFor(schema).Check(value);
}

/** Returns `value` typed by `schema`, or throws ProtocolError('invalid_message') listing what is wrong. */
export function parse<S extends TSchema>(schema: S, value: unknown, what = 'value'): Static<S> {
  const validator = validatorFor(schema);
  if (validator.Check(value)) return value as Static<S>;
  const issues = validator
    .Errors(value)
    .slice(0, MAX_REPORTED_ISSUES)
    .map((error) => `${error.instancePath || '/'} ${error.message}`);
  throw new ProtocolError('invalid_message', `invalid ${what}: ${issues.join('; ')}`, { issues });
}

/** Validates a decoded message against the schema its `type` names. */
export function parseMessage(value: unknown): MessageOf<MessageType> {
  const type = typeof value === 'object' && value !== null ? (value as { type?: unknown }).type : undefined;
  if (typeof type !== 'string' || !Object.hasOwn(MESSAGE_SCHEMAS, type)) {
    const shown = typeof type === 'string' ? JSON.stringify(type.slice(0, 32)) : typeof type;
    throw new ProtocolError('invalid_message', `unknown message type ${shown}`);
  }
  return parse(MESSAGE_SCHEMAS[type as MessageType], value, `${type} message`);
}
