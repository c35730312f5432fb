// Starts oidc-provider on 127.0.0.1 for the jwt-oidc integration tests.
//
//   node server.mjs --keystore=FILE [--port=N] [--generate=kid:ALG,...]
//
// FILE holds the provider's private JWKs (created when missing). Each --generate entry
// creates a key (RS256 → RSA 2048, ES256 → P-256) and puts it FIRST, so it becomes the
// signing key while older keys stay published (rotation). Port 0 (the default) lets the OS
// choose. Prints exactly one line "listening on http://127.0.0.1:PORT" when ready.
//
// Test hook: GET /__test/jwks-mode?set=garbage|huge|normal makes /jwks answer garbage, a
// 10 MiB document, or the real key set.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';
import { configuration } from './config.mjs';

const args = Object.fromEntries(
  process.argv.slice(2).map((a) => {
    const [k, ...v] = a.replace(/^--/, '').split('=');
    return [k, v.join('=')];
  }),
);
if (!args.keystore) {
  console.error('usage: node server.mjs --keystore=FILE [--port=N] [--generate=kid:ALG,...]');
  process.exit(2);
}

const keys = existsSync(args.keystore) ? JSON.parse(readFileSync(args.keystore, 'utf8')) : [];
for (const spec of (args.generate || '').split(',').filter(Boolean)) {
  const [kid, alg] = spec.split(':');
  const pair = alg.startsWith('ES')
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  keys.unshift({ ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' });
}
writeFileSync(args.keystore, JSON.stringify(keys));

const server = createServer();
server.listen(Number(args.port || 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration(keys));
  let mode = 'normal';
  provider.use(async (ctx, next) => {
    if (ctx.path === '/__test/jwks-mode') {
      mode = String(ctx.query.set || 'normal');
      ctx.body = { mode };
      return;
    }
    if (ctx.path === '/jwks' && mode === 'garbage') {
      ctx.type = 'application/json';
      ctx.body = 'this is not a JWKS {';
      return;
    }
    if (ctx.path === '/jwks' && mode === 'huge') {
      ctx.type = 'application/json';
      ctx.body = `{"keys":[${' '.repeat(10 * 1024 * 1024)}]}`;
      return;
    }
    await next();
  });
  server.on('request', provider.callback());
  console.log(`listening on ${issuer}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
