/**
 * A Sepulki Hammer client in TypeScript with graphql-ws:
 *
 * 1. signs in with the `login` mutation over HTTP (fetch),
 * 2. runs a query (fleets and their robots),
 * 3. subscribes to `robotStatus` over graphql-transport-ws, the access token in the
 *    `connection_init` payload ({authorization: "Bearer <token>"}),
 * 4. keeps the last event id (`extensions.eventId` of each `next` message) and, whenever it opens
 *    a new socket, resumes with `after: <that id>`: nothing is missed and nothing comes twice,
 * 5. refreshes the access token (`refreshToken` mutation) before it expires. The server checks a
 *    socket's token once, at connection_init, and closes the socket (4403 "Token expired") when
 *    that token expires, so after each refresh the example opens a socket with the new token,
 *    resumes from the last event, and only then closes the old one.
 *
 * Every line it prints is one JSON object (easy to read, easy to test).
 *
 *   SEPULKI_API_URL   http://127.0.0.1:4000/graphql (the websocket URL is the same with ws://)
 *   SEPULKI_EMAIL     admin@sepulki.com (the development seed)
 *   SEPULKI_PASSWORD  admin123
 *   SEPULKI_ROBOT_ID  one robot's status; unset: every robot's
 *   SEPULKI_EXAMPLE_DROP_AFTER  drop the socket after this many events, as a lost network
 *                               would, to watch the resumption (0: never)
 *
 * npm ci && npm start; Ctrl-C (SIGINT) or SIGTERM ends it.
 */
import { createClient, type Client, type FormattedExecutionResult } from "graphql-ws";
import WebSocket from "ws";

const API_URL = process.env.SEPULKI_API_URL || "http://127.0.0.1:4000/graphql";
const WS_URL = API_URL.replace(/^http/, "ws");
const EMAIL = process.env.SEPULKI_EMAIL || "admin@sepulki.com";
const PASSWORD = process.env.SEPULKI_PASSWORD || "admin123";
const ROBOT_ID = process.env.SEPULKI_ROBOT_ID || null;
const DROP_AFTER = Number(process.env.SEPULKI_EXAMPLE_DROP_AFTER || "0");
// Refresh once this share of the access token's lifetime has passed (15 minutes by default).
const REFRESH_AT = 0.8;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 5000, 10000];

const LOGIN = `mutation Login($email: String!, $password: String!) {
  login(credentials: {email: $email, password: $password}) {
    session { token refreshToken expiresAt }
    smith { email role }
    errors { code message }
  }
}`;
const REFRESH = `mutation Refresh($refreshToken: String!) {
  refreshToken(refreshToken: $refreshToken) {
    session { token refreshToken expiresAt }
    errors { code message }
  }
}`;
const FLEETS = `query Fleets { fleets { id name status robots { id name status batteryLevel } } }`;
const ROBOT_STATUS = `subscription RobotStatus($robotId: ID, $after: String) {
  robotStatus(robotId: $robotId, after: $after) { id name status batteryLevel lastSeen }
}`;

interface Session {
  token: string;
  refreshToken: string;
  expiresAt: string;
}
interface GraphQLError {
  message: string;
  extensions?: { code?: string };
}
interface Robot {
  id: string;
  name: string;
  status: string;
  batteryLevel: number | null;
  lastSeen: string | null;
}
type StatusResult = FormattedExecutionResult<{ robotStatus: Robot }, { eventId?: string }>;

function say(step: string, fields: Record<string, unknown> = {}): void {
  console.log(JSON.stringify({ step, ...fields }));
}

/** One GraphQL request over HTTP; throws on transport errors and on GraphQL `errors`. */
async function graphql<T>(query: string, variables: Record<string, unknown>, token?: string): Promise<T> {
  const headers: Record<string, string> = {
    "content-type": "application/json",
    accept: "application/graphql-response+json, application/json",
  };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(API_URL, { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  const body = (await response.json()) as { data?: T; errors?: GraphQLError[] };
  if (body.errors?.length) {
    const first = body.errors[0];
    throw new Error(`${first.extensions?.code ?? "ERROR"}: ${first.message}`);
  }
  if (body.data === undefined) throw new Error(`HTTP ${response.status} without data`);
  return body.data;
}

type AuthPayload = { session: Session | null; errors: { code: string; message: string }[] | null };

function sessionOf(payload: AuthPayload, what: string): Session {
  if (!payload.session) {
    const error = payload.errors?.[0];
    throw new Error(`${what} failed: ${error ? `${error.code}: ${error.message}` : "no session"}`);
  }
  return payload.session;
}

async function login(): Promise<Session> {
  const data = await graphql<{ login: AuthPayload & { smith: { email: string; role: string } | null } }>(
    LOGIN,
    { email: EMAIL, password: PASSWORD },
  );
  const session = sessionOf(data.login, "login");
  say("login", { email: data.login.smith?.email, role: data.login.smith?.role, expiresAt: session.expiresAt });
  return session;
}

/** A refresh token is single use: presenting one twice revokes the session, so refresh once at a time. */
async function refresh(current: Session): Promise<Session> {
  const data = await graphql<{ refreshToken: AuthPayload }>(REFRESH, { refreshToken: current.refreshToken });
  return sessionOf(data.refreshToken, "refresh");
}

/** When the access token was issued and when it expires (ms since the epoch), from its claims. */
function lifetime(token: string): { issuedAt: number; expiresAt: number } {
  const claims = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()) as { iat: number; exp: number };
  return { issuedAt: claims.iat * 1000, expiresAt: claims.exp * 1000 };
}

class StatusWatcher {
  private session: Session;
  private client: Client | null = null;
  private generation = 0;
  private lastEventId: string | null = null;
  private readonly seen = new Set<string>();
  private events = 0;
  private refreshes = 0;
  private connections = 0;
  private refreshTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;

  constructor(session: Session) {
    this.session = session;
  }

  start(): void {
    this.scheduleRefresh();
    this.connect("start");
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.refreshTimer);
    clearTimeout(this.reconnectTimer);
    const client = this.client;
    this.client = null;
    void client?.dispose();
    say("done", { events: this.events, refreshes: this.refreshes, connections: this.connections });
  }

  /** A new socket with the current token, subscribed from the last event seen; then the old one goes. */
  private connect(reason: string): void {
    if (this.stopped) return;
    const generation = ++this.generation;
    const token = this.session.token;
    const after = this.lastEventId;
    const client = createClient({
      url: WS_URL,
      webSocketImpl: WebSocket,
      lazy: true,
      // Reconnecting is done here, not by graphql-ws: a resumed subscription needs the new `after`.
      retryAttempts: 0,
      connectionParams: { authorization: `Bearer ${token}` },
      on: {
        connected: () => {
          this.connections += 1;
          this.failures = 0;
          say("connected", { reason, after, connection: this.connections });
        },
        closed: (event) => {
          if (generation !== this.generation || this.stopped) return; // a retired socket
          const { code, reason: why } = event as { code?: number; reason?: string };
          this.lost(`closed ${code ?? "?"} ${why ?? ""}`.trim(), code === 4403);
        },
      },
    });
    const previous = this.client;
    this.client = client;
    client.subscribe<{ robotStatus: Robot }, { eventId?: string }>(
      { query: ROBOT_STATUS, variables: { robotId: ROBOT_ID, after } },
      {
        next: (result) => {
          if (generation === this.generation) this.onResult(result);
        },
        error: (error) => {
          if (generation !== this.generation || this.stopped) return;
          // A closed socket lands here too (after `closed`): only GraphQL errors are news.
          if (Array.isArray(error)) this.lost(`subscription error: ${JSON.stringify(error)}`, false);
        },
        complete: () => {
          if (generation === this.generation && !this.stopped) this.lost("completed by the server", false);
        },
      },
    );
    // Retire the old socket once the new one is subscribed from the same point; an event both
    // deliver in the meantime is recognised by its id.
    if (previous) setTimeout(() => void previous.dispose(), 1000);
  }

  private onResult(result: StatusResult): void {
    const eventId = result.extensions?.eventId;
    if (result.errors?.length) {
      say("error", { errors: result.errors });
      return;
    }
    if (eventId !== undefined) {
      if (this.seen.has(eventId)) return; // delivered by the old and the new socket
      this.seen.add(eventId);
      this.lastEventId = eventId;
    }
    this.events += 1;
    const robot = result.data?.robotStatus;
    say("event", { eventId, robotId: robot?.id, name: robot?.name, status: robot?.status, connection: this.connections });
    if (DROP_AFTER > 0 && this.events === DROP_AFTER) {
      say("drop", { after: this.lastEventId });
      void this.client?.terminate(); // as if the network went away: `closed` reconnects
    }
  }

  /** The socket is gone: reconnect with backoff (refreshing first if the token was refused). */
  private lost(why: string, tokenRefused: boolean): void {
    if (this.stopped || this.reconnectTimer) return;
    const delay = RECONNECT_DELAYS_MS[Math.min(this.failures, RECONNECT_DELAYS_MS.length - 1)];
    this.failures += 1;
    say("disconnected", { why, retryInMs: delay, after: this.lastEventId });
    this.reconnectTimer = setTimeout(async () => {
      this.reconnectTimer = undefined;
      if (tokenRefused) await this.renew();
      this.connect("reconnect");
    }, delay);
  }

  private scheduleRefresh(): void {
    const { issuedAt, expiresAt } = lifetime(this.session.token);
    const at = issuedAt + (expiresAt - issuedAt) * REFRESH_AT;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(async () => {
      if (await this.renew()) this.connect("token refreshed");
    }, Math.max(0, at - Date.now()));
  }

  /** A new token pair; signs in again when the session is over (expired, revoked). */
  private async renew(): Promise<boolean> {
    if (this.stopped) return false;
    try {
      this.session = await refresh(this.session);
      this.refreshes += 1;
      say("refreshed", { expiresAt: this.session.expiresAt });
    } catch (error) {
      say("refresh-failed", { error: String(error) });
      try {
        this.session = await login();
      } catch (again) {
        say("login-failed", { error: String(again) });
        this.scheduleRetry();
        return false;
      }
    }
    this.scheduleRefresh();
    return true;
  }

  private scheduleRetry(): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(async () => {
      if (await this.renew()) this.connect("signed in again");
    }, 5000);
  }
}

async function main(): Promise<void> {
  const session = await login();
  const { fleets } = await graphql<{
    fleets: { id: string; name: string; status: string; robots: { id: string; name: string; status: string }[] }[];
  }>(FLEETS, {}, session.token);
  for (const fleet of fleets) {
    say("fleet", { name: fleet.name, status: fleet.status, robots: fleet.robots.map((r) => `${r.name}: ${r.status}`) });
  }
  const watcher = new StatusWatcher(session);
  const stop = () => {
    watcher.stop();
    setTimeout(() => process.exit(0), 100);
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  watcher.start();
}

main().catch((error) => {
  say("failed", { error: String(error) });
  process.exit(1);
});
