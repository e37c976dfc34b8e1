// Runs the graphql-http server audit (GraphQL-over-HTTP spec conformance) against the URL given
// as the first argument and prints one JSON array: [{id, name, status, reason}].
import { auditServer } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <graphql endpoint url>');
  process.exit(2);
}
const results = await auditServer({ url });
const summary = results.map(({ id, name, status, reason }) => ({ id, name, status, reason: reason ?? null }));
console.log(JSON.stringify(summary));
