import { ProtocolError } from '../errors.js';

/**
 * The version of the socket.io and HTTP protocol. Bump it on any change a peer of the previous
 * version would misread; peers of different versions refuse each other with `version_mismatch`.
 * History: docs/protocol.md ("Versions").
 */
export const PROTOCOL_VERSION = 2;

export function assertCompatibleProtocol(remoteVersion: number, remoteRole = 'peer'): void {
  if (remoteVersion !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      'version_mismatch',
      `${remoteRole} speaks Floe protocol v${String(remoteVersion)}, this side speaks v${String(PROTOCOL_VERSION)}; upgrade the older side`,
      { remoteVersion, localVersion: PROTOCOL_VERSION },
    );
  }
}
