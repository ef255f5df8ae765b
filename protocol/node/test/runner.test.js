'use strict';
// Spawns plugins built on pipegate-plugin and speaks the pipe protocol to them.
// Run: node --test protocol/node/test/   (or `npm test` in protocol/node)

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { decode } = require('@msgpack/msgpack');
const { FrameDecoder, encodeFrame } = require('pipegate-plugin');

const EXAMPLE = path.join(__dirname, '..', 'examples', 'add_header.js');
const FIXTURE = path.join(__dirname, '..', 'fixtures', 'async_plugin.js');

class Child {
  constructor(script, env = {}) {
    this.proc = spawn(process.execPath, [script], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    });
    this.decoder = new FrameDecoder();
    this.replies = [];
    this.waiters = [];
    this.stderr = '';
    this.exit = new Promise((resolve) => this.proc.on('exit', (code) => resolve(code)));
    this.proc.stdout.on('data', (chunk) => {
      for (const payload of this.decoder.push(chunk)) {
        const msg = decode(payload);
        const w = this.waiters.shift();
        if (w) w(msg);
        else this.replies.push(msg);
      }
    });
    this.proc.stderr.on('data', (d) => {
      this.stderr += d.toString();
    });
  }

  send(msg) {
    this.proc.stdin.write(encodeFrame(msg));
  }

  recv(timeoutMs = 5000) {
    if (this.replies.length) return Promise.resolve(this.replies.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no reply within ${timeoutMs} ms; stderr:\n${this.stderr}`)),
        timeoutMs,
      );
      this.waiters.push((msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
    });
  }

  async hello() {
    this.send({ type: 'hello', id: 0, protocol: 1, gateway: 'pipegate/test', max_frame_bytes: 1 << 20 });
    return this.recv();
  }

  async close() {
    this.proc.stdin.end();
    return this.exit;
  }
}

function dispatch(id, hookName, extra = {}) {
  return {
    type: 'dispatch',
    id,
    object: {
      hook_type: 'Pre',
      hook_name: hookName,
      request: {
        headers: { Host: 'example.com', Authorization: 'letmein' },
        set_headers: {},
        delete_headers: [],
        body: 'hi',
        url: '/api/x',
        params: {},
        return_overrides: { response_code: -1 },
        method: 'GET',
        raw_body: new Uint8Array([104, 105]),
      },
      metadata: {},
      spec: { APIID: 'api1', OrgID: 'org1', bundle_hash: 'd41d8cd98f00b204e9800998ecf8427e' },
      ...extra,
    },
  };
}

test('example: hello lists AddHeader and the hook adds X-Pipegate-Node', async () => {
  const child = new Child(EXAMPLE);
  const hello = await child.hello();
  assert.deepEqual(hello, { type: 'hello', id: 0, protocol: 1, name: 'node-add-header', hooks: ['AddHeader'] });
  child.send(dispatch(7, 'AddHeader'));
  const reply = await child.recv();
  assert.deepEqual(reply, { id: 7, object: { request: { set_headers: { 'X-Pipegate-Node': '1' } } } });
  child.send(dispatch(8, 'Unknown'));
  const err = await child.recv();
  assert.equal(err.id, 8);
  assert.match(err.error, /"Unknown" is not defined/);
  assert.equal(await child.close(), 0, 'EOF on stdin exits 0');
});

test('async hooks reply out of order; a slow hook does not block a fast one', async () => {
  const child = new Child(FIXTURE);
  await child.hello();
  const start = Date.now();
  child.send(dispatch(1, 'Slow', { spec: { sleep_ms: '800' } }));
  child.send(dispatch(2, 'Fast'));
  const first = await child.recv();
  const firstAt = Date.now() - start;
  const second = await child.recv();
  assert.equal(first.id, 2);
  assert.ok(firstAt < 600, `fast reply took ${firstAt} ms`);
  assert.equal(second.id, 1);
  assert.deepEqual(second.object, { request: { set_headers: { 'X-Slow': '1' } } });
  assert.equal(await child.close(), 0);
});

test('whole-object replies keep raw_body as bin and console.log goes to stderr', async () => {
  const child = new Child(FIXTURE);
  await child.hello();
  child.send(dispatch(3, 'Echo'));
  const reply = await child.recv();
  assert.equal(reply.id, 3);
  assert.equal(reply.object.request.set_headers['X-Echo'], 'example.com');
  assert.ok(reply.object.request.raw_body instanceof Uint8Array, 'raw_body decodes as bin');
  assert.equal(Buffer.from(reply.object.request.raw_body).toString(), 'replaced body');
  assert.equal(typeof reply.object.request.body, 'string');
  child.send(dispatch(4, 'Nothing'));
  assert.deepEqual(await child.recv(), { id: 4, object: {} });
  assert.equal(await child.close(), 0);
  assert.match(child.stderr, /stray console\.log/);
});

test('thrown errors and rejections become error replies; the plugin keeps serving', async () => {
  const child = new Child(FIXTURE);
  await child.hello();
  child.send(dispatch(5, 'Throws'));
  child.send(dispatch(6, 'Rejects'));
  const replies = [await child.recv(), await child.recv()].sort((a, b) => a.id - b.id);
  assert.equal(replies[0].id, 5);
  assert.match(replies[0].error, /TypeError: sync boom/);
  assert.equal(replies[1].id, 6);
  assert.match(replies[1].error, /async boom/);
  assert.equal(replies[0].object, undefined);
  child.send(dispatch(7, 'Fast'));
  assert.equal((await child.recv()).id, 7);
  assert.equal(await child.close(), 0);
});

test('auth hook returns a session and token', async () => {
  const child = new Child(FIXTURE);
  await child.hello();
  child.send(dispatch(1, 'Auth', { hook_type: 'CustomKeyCheck' }));
  const ok = await child.recv();
  assert.equal(ok.object.metadata.token, 'letmein');
  assert.equal(ok.object.session.rate, 100);
  const denied = dispatch(2, 'Auth', { hook_type: 'CustomKeyCheck' });
  denied.object.request.headers.Authorization = 'nope';
  child.send(denied);
  const no = await child.recv();
  assert.equal(no.object.request.return_overrides.response_code, 403);
  assert.equal(no.object.session, undefined);
  assert.equal(await child.close(), 0);
});

test('events reach onEvent without a reply; load_bundle is acknowledged or refused', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipegate-node-'));
  const eventFile = path.join(dir, 'event.json');
  const child = new Child(FIXTURE, { PIPEGATE_TEST_EVENT_FILE: eventFile });
  await child.hello();
  const payload = { message: { Type: 'AuthFailure' }, handler_name: 'h', spec: { APIID: 'api1' } };
  child.send({ type: 'event', payload: JSON.stringify(payload) });
  child.send({ type: 'load_bundle', id: 10, api_id: 'a', bundle_hash: 'good1', path: dir, manifest: { file_list: [] } });
  child.send({ type: 'load_bundle', id: 11, api_id: 'b', bundle_hash: 'bad', path: dir, manifest: {} });
  child.send({ type: 'frobnicate', id: 12 });
  const replies = [await child.recv(), await child.recv(), await child.recv()].sort((a, b) => a.id - b.id);
  assert.deepEqual(replies[0], { id: 10 });
  assert.equal(replies[1].id, 11);
  assert.match(replies[1].error, /refusing bad/);
  assert.equal(replies[2].id, 12);
  assert.match(replies[2].error, /frobnicate/);
  assert.equal(await child.close(), 0);
  assert.deepEqual(JSON.parse(fs.readFileSync(eventFile, 'utf8')), payload);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('an oversized frame is a protocol error: exit code 2', async () => {
  const child = new Child(EXAMPLE);
  await child.hello();
  const head = Buffer.alloc(4);
  head.writeUInt32BE((1 << 20) + 1);
  child.proc.stdin.write(head);
  assert.equal(await child.exit, 2);
});

test('many pipelined requests are all answered', async () => {
  const child = new Child(EXAMPLE);
  await child.hello();
  const n = 500;
  child.proc.stdin.write(Buffer.concat(Array.from({ length: n }, (_, i) => encodeFrame(dispatch(i + 1, 'AddHeader')))));
  const ids = new Set();
  for (let i = 0; i < n; i += 1) ids.add((await child.recv()).id);
  assert.equal(ids.size, n);
  assert.equal(await child.close(), 0);
});

test('FrameDecoder reassembles frames split at every byte', () => {
  const frames = Buffer.concat([encodeFrame({ a: 1 }), encodeFrame({ b: 'x'.repeat(300) }), encodeFrame({ c: true })]);
  const d = new FrameDecoder();
  const out = [];
  for (let i = 0; i < frames.length; i += 1) out.push(...d.push(frames.subarray(i, i + 1)));
  assert.deepEqual(out.map((p) => decode(p)), [{ a: 1 }, { b: 'x'.repeat(300) }, { c: true }]);
  assert.equal(d.pending, 0);
});
