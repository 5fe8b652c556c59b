/**
 * Identity. A device trades the deployment's join token for its own credential: a JWT (HS256, via
 * jose) whose subject is the client id the server assigned. Every socket.io connection and every
 * message on it is bound to that subject; nothing a client sends names a client. Admin routes take
 * a separate admin token. Secrets are compared in constant time.
 */
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { SignJWT, jwtVerify } from 'jose';
import { FloeError } from '@floe/shared';

export class AuthError extends FloeError {}

const ISSUER = 'floe-server';
const AUDIENCE = 'floe-client';

export function safeEqual(a: string, b: string): boolean {
  // hash first so that lengths never leak and timingSafeEqual gets equal-length inputs
  const ha = createHash('sha256').update(a).digest();
  const hb = createHash('sha256').update(b).digest();
  return timingSafeEqual(ha, hb);
}

export function newClientId(): string {
  return `c-${randomBytes(8).toString('hex')}`;
}

export class Credentials {
  private readonly key: Uint8Array;

  constructor(
    secret: string,
    private readonly ttlSec: number,
  ) {
    if (secret.length < 16) throw new AuthError('weak_secret', 'the credential secret must be at least 16 characters');
    this.key = new TextEncoder().encode(secret);
  }

  async issue(clientId: string): Promise<string> {
    return new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(clientId)
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(`${this.ttlSec}s`)
      .sign(this.key);
  }

  /** The client id a credential names, or AuthError('bad_credential'). */
  async verify(token: unknown): Promise<string> {
    return (await this.inspect(token)).clientId;
  }

  /** The client id a credential names and when it expires (epoch ms), or AuthError('bad_credential'). */
  async inspect(token: unknown): Promise<{ clientId: string; expiresAt: number }> {
    if (typeof token !== 'string' || token.length === 0 || token.length > 4096) {
      throw new AuthError('bad_credential', 'missing credential');
    }
    try {
      const { payload } = await jwtVerify(token, this.key, {
        issuer: ISSUER,
        audience: AUDIENCE,
        algorithms: ['HS256'],
      });
      if (typeof payload.sub !== 'string') throw new Error('no subject');
      if (typeof payload.exp !== 'number') throw new Error('no expiry');
      return { clientId: payload.sub, expiresAt: payload.exp * 1000 };
    } catch (error) {
      throw new AuthError(
        'bad_credential',
        `credential refused: ${error instanceof Error ? error.message : 'invalid'}`,
      );
    }
  }
}

/** The token of an `Authorization: Bearer <token>` header, if any. */
export function bearer(header: string | undefined): string | undefined {
  const match = /^Bearer ([^\s]+)$/.exec(header ?? '');
  return match?.[1];
}
