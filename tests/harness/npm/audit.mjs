// The graphql-http audit suite (GraphQL-over-HTTP conformance) against one server.
// Usage: node audit.mjs URL TOKEN — prints the results as one JSON array on stdout:
// [{id, name, status: ok|notice|warn|error, reason?, httpStatus?, body?}].
// The suite sends anonymous requests; every one gets the bearer token here, because the
// server answers GraphQL only to authenticated callers.
import { auditServer } from 'graphql-http';

const [url, token] = process.argv.slice(2);
if (!url || !token) {
  console.error('usage: node audit.mjs URL TOKEN');
  process.exit(2);
}

function fetchWithToken(input, init = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
}

const results = await auditServer({ url, fetchFn: fetchWithToken });
const report = [];
for (const result of results) {
  const entry = { id: result.id, name: result.name, status: result.status };
  if (result.status !== 'ok') {
    entry.reason = result.reason;
    entry.httpStatus = result.response.status;
    try {
      entry.body = await result.response.text();
    } catch {
      entry.body = '(body already read by the audit)';
    }
  }
  report.push(entry);
}
process.stdout.write(JSON.stringify(report));
