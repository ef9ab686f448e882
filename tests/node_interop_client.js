// Interop cases with Node's @grpc/grpc-js, an HTTP/2 stack independent of Python's.
// Usage: node node_interop_client.js <protos dir> <port>; prints one JSON object of results.
"use strict";
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [protos, port] = process.argv.slice(2);
const def = loader.loadSync("grpc/testing/test.proto", {
  includeDirs: [protos], keepCase: true, longs: Number, defaults: true,
});
const testing = grpc.loadPackageDefinition(def).grpc.testing;
const target = `127.0.0.1:${port}`;
const plain = new testing.TestService(target, grpc.credentials.createInsecure());
const gzip = new testing.TestService(target, grpc.credentials.createInsecure(),
  { "grpc.default_compression_algorithm": 2 });  // 2 = gzip
const unimplemented = new testing.UnimplementedService(target, grpc.credentials.createInsecure());
const zeros = (n) => Buffer.alloc(n);

// Resolves once BOTH the callback and the "status" event (with the trailers) have fired: the order
// of the two is not specified, so waiting for one of them and then a fixed time would be a race.
function unary(client, method, request, metadata, options) {
  return new Promise((resolve) => {
    let result = null;
    let status = null;
    const done = () => { if (result && status) resolve({ ...result, status }); };
    const call = client[method](request, metadata || new grpc.Metadata(), options || {},
      (err, reply) => { result = { err, reply, call }; done(); });
    call.on("metadata", (md) => { call.initial = md; });
    call.on("status", (st) => { call.trailing = st.metadata; status = st; done(); });
  });
}

function serverStream(client, method, request) {
  return new Promise((resolve) => {
    const replies = [];
    const call = client[method](request);
    call.on("data", (r) => replies.push(r));
    call.on("status", (st) => resolve({ replies, code: st.code, details: st.details }));
    call.on("error", () => {});
  });
}

async function main() {
  const out = {};
  const big = { response_size: 314159, payload: { body: zeros(271828) } };

  let r = await unary(plain, "EmptyCall", {});
  out.empty_unary = !r.err;

  r = await unary(plain, "UnaryCall", big);
  out.large_unary = !r.err && r.reply.payload.body.length === 314159;

  r = await unary(gzip, "UnaryCall", { ...big, expect_compressed: { value: true } });
  out.client_compressed_unary = !r.err && r.reply.payload.body.length === 314159;

  r = await unary(plain, "UnaryCall", { ...big, expect_compressed: { value: true } });
  out.compression_probe_rejected = r.err && r.err.code === grpc.status.INVALID_ARGUMENT;

  r = await unary(plain, "UnaryCall", { ...big, response_compressed: { value: true } });
  out.server_compressed_unary = !r.err && r.reply.payload.body.length === 314159;

  const sizes = [31415, 9, 2653, 58979];
  const s = await serverStream(plain, "StreamingOutputCall",
    { response_parameters: sizes.map((size) => ({ size })) });
  out.server_streaming = s.code === 0 && s.replies.map((x) => x.payload.body.length).join() === sizes.join();

  const md = new grpc.Metadata();
  md.set("x-grpc-test-echo-initial", "test_initial_metadata_value");
  md.set("x-grpc-test-echo-trailing-bin", Buffer.from([0xab, 0xab, 0xab]));
  r = await unary(plain, "UnaryCall", big, md);
  out.custom_metadata = !r.err
    && r.call.initial.get("x-grpc-test-echo-initial")[0] === "test_initial_metadata_value"
    && Buffer.compare(r.call.trailing.get("x-grpc-test-echo-trailing-bin")[0],
                      Buffer.from([0xab, 0xab, 0xab])) === 0;

  const special = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \u{1F608}\t\n";
  r = await unary(plain, "UnaryCall", { response_status: { code: 2, message: special } });
  out.special_status_message = r.err && r.err.code === 2 && r.err.details === special;

  r = await unary(unimplemented, "UnimplementedCall", {});
  out.unimplemented_service = r.err && r.err.code === grpc.status.UNIMPLEMENTED;

  // The description's 1 ms deadline usually expires before the call leaves the client, which proves
  // nothing about the server. A client deadline of its own races the server's equal one: at its
  // deadline grpc-js half-closes (an empty END_STREAM DATA frame) and then resets the stream, so a
  // server that reads the half-close first rightly ends the call OK (seen through a frame-logging
  // proxy in about half the runs). So the only deadline is the server's: grpc-timeout is sent as
  // metadata, grpc-js has none, and the status must come from the server's trailers; the Python
  // side checks that the SERVER counted this call DeadlineExceeded.
  const timeout = new grpc.Metadata();
  timeout.set("grpc-timeout", "500m");
  const timed = await new Promise((resolve) => {
    const call = plain.FullDuplexCall(timeout);
    call.on("status", (st) => resolve(st.code));
    call.on("error", () => {});
    call.write({ payload: { body: zeros(27182) } });
  });
  out.timeout_on_sleeping_server = timed === grpc.status.DEADLINE_EXCEEDED;

  console.log(JSON.stringify(out));
  for (const c of [plain, gzip, unimplemented]) c.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
