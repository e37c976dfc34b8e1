// The development GraphiQL page: docs explorer, history, a headers editor pre-filled with an
// Authorization header to edit, and subscriptions over graphql-transport-ws whose connection_init
// carries the Authorization value of the headers editor.
import { createGraphiQLFetcher } from "@graphiql/toolkit";
import { GraphiQL } from "graphiql";
import { setNonce } from "get-nonce";
import { createClient } from "graphql-ws";
import { createRoot } from "react-dom/client";
import "graphiql/graphiql.css";
import "./page.css";

// The server writes the page's settings into a JSON data block (not executed, so the
// Content-Security-Policy needs no inline-script hash).
const config = JSON.parse(document.getElementById("graphiql-config").textContent);
// The one <style> element GraphiQL adds at run time (react-remove-scroll, while a menu or dialog
// is open) carries this per-page nonce, which the policy's style-src admits.
setNonce(config.styleNonce);
const httpUrl = new URL(config.url, window.location.href);
const wsUrl = new URL(config.url, window.location.href);
wsUrl.protocol = httpUrl.protocol === "https:" ? "wss:" : "ws:";

function authorizationOf(headers) {
  if (!headers || typeof headers !== "object") return undefined;
  for (const [name, value] of Object.entries(headers)) {
    if (name.toLowerCase() === "authorization" && typeof value === "string") return value;
  }
  return undefined;
}

// One websocket per Authorization value: editing the header opens a new connection whose
// connection_init payload is {"authorization": "<the header's value>"}.
let current = { key: null, client: null, fetcher: null };

function fetcherFor(headers) {
  const authorization = authorizationOf(headers);
  const key = authorization ?? "";
  if (current.fetcher === null || current.key !== key) {
    if (current.client) current.client.dispose();
    const client = createClient({
      url: wsUrl.href,
      lazy: true,
      connectionParams: authorization ? { authorization } : {},
    });
    current = { key, client, fetcher: createGraphiQLFetcher({ url: httpUrl.href, wsClient: client }) };
  }
  return current.fetcher;
}

const fetcher = (params, options) => fetcherFor(options && options.headers)(params, options);

createRoot(document.getElementById("graphiql")).render(
  <GraphiQL
    fetcher={fetcher}
    defaultQuery={config.defaultQuery}
    defaultHeaders={config.initialHeaders}
    shouldPersistHeaders={true}
    defaultEditorToolsVisibility="headers"
    isHeadersEditorEnabled={true}
  />,
);
