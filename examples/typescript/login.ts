// A sign-in through types and a client generated from otpsvc's openapi.yaml, against `otpsvc dev`
// (docs: "Generated clients"):
//
//   npm ci && npm run generate && npm run build
//   node dist/login.js http://127.0.0.1:8080 KEY SECRET 9000
//
// KEY is the API key `otpsvc dev` prints; SECRET the client's event webhook secret
// (OTPSVC_EVENT_WEBHOOK_SECRETS), whose webhook (OTPSVC_EVENT_WEBHOOKS) is
// http://127.0.0.1:9000/hooks: the events are received there, verified with the official
// `standardwebhooks` library, and read as the generated event type.
import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import createClient from "openapi-fetch";
import { Webhook } from "standardwebhooks";
import type { components, paths, webhooks } from "./schema.js";

type Event = components["schemas"]["Event"];
type Approved = webhooks["verification.approved"]["post"]["requestBody"]["content"]["application/json"];

const PHONE = "+2348031234567";

function fail(what: string, detail: unknown): never {
  throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

function receiveEvents(secret: string, port: number, seen: Event[]): Server {
  const webhook = new Webhook(secret);
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(request.headers)) {
        if (typeof value === "string") headers[name] = value;
      }
      try {
        seen.push(webhook.verify(Buffer.concat(chunks).toString("utf8"), headers) as Event);
        response.writeHead(204).end();
      } catch {
        response.writeHead(401).end();
      }
    });
  });
  server.listen(port, "127.0.0.1");
  return server;
}

const sleep = (seconds: number) => new Promise((done) => setTimeout(done, seconds * 1000));

async function main(base: string, key: string, secret: string, port: string): Promise<void> {
  const seen: Event[] = [];
  const server = receiveEvents(secret, Number(port), seen);
  const client = createClient<paths>({ baseUrl: base, headers: { Authorization: `Bearer ${key}` } });
  const idempotencyKey = randomUUID();
  const asked = { body: { phone: PHONE }, params: { header: { "Idempotency-Key": idempotencyKey } } };

  const started = await client.POST("/otp/start", asked);
  if (started.response.status !== 201 || !started.data) fail("start", started.error);
  const verification = started.data;
  console.log(`started ${verification.id}: ${verification.status}`);

  // A retry with the same key (a timeout, say): the first answer, no second call.
  const again = await client.POST("/otp/start", asked);
  if (again.response.headers.get("Idempotent-Replayed") !== "true" || again.data?.id !== verification.id) {
    fail("idempotent retry", again.error);
  }
  console.log("retry with the same Idempotency-Key: replayed, no second call");

  const inbox = await client.GET("/dev/calls", { params: { query: { phone: PHONE, wait: 10 } } });
  const code = inbox.data?.calls[0]?.code ?? fail("dev inbox", inbox.error);
  const wrong = String((Number(code[0]) + 1) % 10) + code.slice(1);
  for (const [guess, expected] of [[wrong, false], [code, true]] as const) {
    const checked = await client.POST("/otp/check", { body: { id: verification.id, code: guess } });
    if (checked.data?.valid !== expected) fail("check", checked.error ?? checked.data);
    console.log(`check ${expected ? "right" : "wrong"} code: valid=${checked.data.valid}`);
  }

  // A new sign-in, and at once another start for the number: 429, honoured by Retry-After.
  const second = await client.POST("/otp/start", { body: { phone: PHONE } });
  if (!second.data) fail("second start", second.error);
  const tooSoon = await client.POST("/otp/start", { body: { phone: PHONE } });
  if (tooSoon.response.status !== 429 || !tooSoon.error) fail("start too soon", tooSoon.data);
  const wait = Number(tooSoon.response.headers.get("Retry-After"));
  console.log(`start again at once: 429 ${tooSoon.error.code}, Retry-After ${wait} s`);
  await sleep(wait);
  const resent = await client.POST("/otp/start", { body: { phone: PHONE } });
  if (resent.response.status !== 200) fail("resend", resent.error);
  console.log("after Retry-After: 200, the call placed again");

  for (let i = 0; i < 300 && !seen.some((e) => e.type === "verification.approved"); i++) {
    await sleep(0.1);
  }
  const approved = seen.find((e): e is Approved => e.type === "verification.approved");
  if (!approved || approved.data.id !== verification.id) fail("approval event", seen);
  console.log(`event ${approved.type} for ${approved.data.id}, signature verified`);
  server.close();
}

const [base, key, secret, port] = process.argv.slice(2);
if (!base || !key || !secret || !port) fail("usage", "login.js BASE KEY SECRET PORT");
await main(base, key, secret, port);
