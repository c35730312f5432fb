// Fixture configuration for the jwt-oidc integration tests: one confidential client that
// may use the client-credentials grant, and two resource servers (resource indicators,
// RFC 8707) whose access tokens are JWTs (RFC 9068, typ at+jwt): one signed RS256, one ES256.
import { errors } from 'oidc-provider';

export const CLIENT_ID = 'ztkit-test-client';
export const CLIENT_SECRET = 'ztkit-test-secret';

const RESOURCES = {
  'urn:ztkit:api': 'RS256',
  'urn:ztkit:api-es': 'ES256',
};

export function configuration(keys) {
  return {
    jwks: { keys },
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    scopes: ['api:read', 'api:write'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:ztkit:api',
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => {
          const alg = RESOURCES[resource];
          if (!alg) throw new errors.InvalidTarget();
          return {
            scope: 'api:read api:write',
            audience: resource,
            accessTokenTTL: 3600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg } },
          };
        },
      },
    },
  };
}
