// One graphql-transport-ws subscription through the graphql-ws client.
// Usage: node subscribe.mjs WS_URL TOKEN QUERY VARIABLES_JSON COUNT
// The bearer token travels in the connection_init payload. Prints one JSON object per line:
// {"event": "connected"} once the server acknowledged the connection, then
// {"event": "next", "payload": ...} for each of COUNT results, then {"event": "done"};
// {"event": "error", ...} and exit status 1 when the connection or the operation fails.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, token, query, variables, count] = process.argv.slice(2);
if (!url || !token || !query) {
  console.error('usage: node subscribe.mjs WS_URL TOKEN QUERY VARIABLES_JSON COUNT');
  process.exit(2);
}
const wanted = Number(count || 1);
const emit = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const describe = (error) =>
  error instanceof Error ? error.message
    : error && typeof error === 'object' && 'code' in error
      ? `close ${error.code} ${error.reason}` : JSON.stringify(error);

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: false,
  retryAttempts: 0,
  connectionParams: { Authorization: `Bearer ${token}` },
  on: {
    connected: () => emit({ event: 'connected' }),
  },
  onNonLazyError: (error) => {
    emit({ event: 'error', error: describe(error) });
    process.exit(1);
  },
});

let received = 0;
try {
  const subscription = client.iterate({ query, variables: JSON.parse(variables || '{}') });
  for await (const result of subscription) {
    emit({ event: 'next', payload: result });
    received += 1;
    if (received >= wanted) break;
  }
  emit({ event: 'done' });
} catch (error) {
  emit({ event: 'error', error: describe(error) });
  process.exitCode = 1;
} finally {
  await client.dispose();
}
