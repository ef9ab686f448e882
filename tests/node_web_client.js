// Connect-ES clients against grpcstack's HTTP listener: @connectrpc/connect-web's gRPC-Web
// transport (fetch, as in a browser) and @connectrpc/connect-node's Connect transport over
// HTTP/1.1 and HTTP/2 (h2c), JSON and binary. Schemas come from a FileDescriptorSet at run time.
// Usage: node node_web_client.js <descriptor_set.bin> <port> [ratelimit]; prints JSON results.
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const { fromBinary, createFileRegistry, create } = require("@bufbuild/protobuf");
const { FileDescriptorSetSchema } = require("@bufbuild/protobuf/wkt");
const { createClient, ConnectError, Code } = require("@connectrpc/connect");
const { createGrpcWebTransport } = require("@connectrpc/connect-web");
const { createConnectTransport } = require("@connectrpc/connect-node");

const [descriptorPath, port, mode] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, fs.readFileSync(descriptorPath)));
const service = registry.getService("echo.v1.EchoService");
const baseUrl = `http://127.0.0.1:${port}`;
const USER = { "user-id": "alice" };

const transports = {
  "grpc-web (connect-web, fetch)": createGrpcWebTransport({ baseUrl, useBinaryFormat: true }),
  "connect json (node, http/1.1)": createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }),
  "connect proto (node, h2c)": createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }),
};

async function expectError(promise, code) {
  try {
    await promise;
    return { ok: false, why: "no error" };
  } catch (e) {
    const err = ConnectError.from(e);
    return { ok: err.code === code, code: Code[err.code], message: err.rawMessage, details: err.details.map((d) => ({ type: d.type, size: d.value ? d.value.length : 0 })) };
  }
}

async function run(client) {
  const out = {};
  let correlation = null;
  const reply = await client.echo({ message: "hi", payload: new Uint8Array([1, 2, 3]) }, {
    headers: USER,
    onHeader: (h) => { correlation = h.get("x-correlation-id"); },
  });
  out.unary = reply.message === "hi" && reply.payloadSize === 3 && correlation && correlation.length === 32;
  const seen = [];
  for await (const r of client.expand({ message: "s", count: 3 }, { headers: USER })) seen.push(r.index);
  out.server_stream = JSON.stringify(seen) === "[0,1,2]";
  out.unauthenticated = await expectError(client.echo({ message: "x" }), Code.Unauthenticated);
  out.invalid_argument = await expectError(client.echo({ failWith: "ValueError" }, { headers: USER }), Code.InvalidArgument);
  out.deadline = await expectError(client.echo({ sleepSeconds: 30 }, { headers: USER, timeoutMs: 200 }), Code.DeadlineExceeded);
  // over the server's 4 KiB message limit (random bytes: no compression shrinks them)
  out.oversized = await expectError(client.echo({ payload: crypto.randomBytes(20000) }, { headers: USER }), Code.ResourceExhausted);
  out.stream_error = await expectError((async () => { for await (const _ of client.expand({ count: 1, failWith: "KeyError" }, { headers: USER })) {} })(), Code.NotFound);
  return out;
}

// with GRPC_RATE_LIMIT_MAX_REQUESTS=1: a caller's second call is refused with RetryInfo
async function runRateLimit(client, user) {
  await client.echo({}, { headers: { "user-id": user } });
  return { rate_limited: await expectError(client.echo({}, { headers: { "user-id": user } }), Code.ResourceExhausted) };
}

// A client built from an older echo.proto where EchoRequest.count was a string: over Connect JSON
// it sends {"count": "three"}, which the server's schema cannot read (INVALID_ARGUMENT naming it).
function olderSchemaService() {
  const set = fromBinary(FileDescriptorSetSchema, fs.readFileSync(descriptorPath));
  for (const file of set.file) {
    for (const message of file.messageType) {
      if (file.package === "echo.v1" && message.name === "EchoRequest") {
        message.field.find((f) => f.name === "count").type = 9; // TYPE_STRING
      }
    }
  }
  return createFileRegistry(set).getService("echo.v1.EchoService");
}

(async () => {
  const results = {};
  for (const [i, [name, transport]] of Object.entries(transports).entries()) {
    try {
      const client = createClient(service, transport);
      results[name] = mode === "ratelimit" ? await runRateLimit(client, `limited-${i}`) : await run(client);
    } catch (e) {
      results[name] = { crashed: String(e && e.stack || e) };
    }
  }
  if (mode !== "ratelimit") {
    const name = "connect json (node, http/1.1), older schema";
    try {
      const client = createClient(olderSchemaService(), transports["connect json (node, http/1.1)"]);
      results[name] = { bad_json: await expectError(client.echo({ count: "three" }, { headers: USER }), Code.InvalidArgument) };
    } catch (e) {
      results[name] = { crashed: String(e && e.stack || e) };
    }
  }
  process.stdout.write(JSON.stringify(results));
})();
