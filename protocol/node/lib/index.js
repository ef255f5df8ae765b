'use strict';
// pipegate-plugin: serve JavaScript hooks to the pipegate gateway over its pipe protocol (v1).
//
//   const { serve } = require('pipegate-plugin');
//   serve({
//     name: 'my-plugin',
//     hooks: {
//       MyPreHook(object) {
//         object.request.set_headers['X-Foo'] = 'bar';
//         return object;             // or a partial: { request: { set_headers: { ... } } }
//       },
//       async MyAuth(object) { ... }  // async hooks are fine; replies may go out of order
//     },
//   });
//
// The gateway starts this script as its child; stdin/stdout carry length-prefixed MessagePack
// frames. `object` mirrors Tyk's coprocess protobuf Object (snake_case fields). A hook returns the
// object (whole or only what changed: absent fields mean "unchanged"), or nothing for "no change";
// a thrown error or rejected promise becomes an error reply (the gateway answers 500, or 403 for
// auth_check). stdout is the protocol, so console.log is sent to stderr while serving.

const {
  DEFAULT_MAX_FRAME_BYTES,
  ProtocolError,
  encodeFrame,
  decodeFrame,
  FrameDecoder,
} = require('./frame');

const PROTOCOL_VERSION = 1;

function log(level, msg) {
  process.stderr.write(`level=${level} msg=pipegate-plugin: ${msg}\n`);
}

function errorText(err) {
  if (err instanceof Error) return `${err.name}: ${err.message}`;
  return String(err);
}

// raw_body must travel as MessagePack bin: turn a string a hook stored there into bytes.
function normalizeBodies(obj) {
  if (obj && typeof obj === 'object') {
    for (const part of [obj.request, obj.response]) {
      if (part && typeof part.raw_body === 'string') {
        part.raw_body = Buffer.from(part.raw_body, 'utf8');
      }
    }
  }
  return obj;
}

/**
 * Serve hooks until the gateway closes stdin.
 *
 * options:
 * - name: plugin name for hello (default "node-plugin").
 * - hooks: { HookName(object, ctx) -> object | partial | undefined | Promise }.
 * - dispatch(object, ctx): optional catch-all for hook names not in `hooks`; when set, hello does
 *   not list hook names (the gateway then sends every hook).
 * - onEvent(event, payloadText): optional; events get no reply.
 * - loadBundle({api_id, bundle_hash, path, manifest}): optional, may be async; throw to refuse.
 *   Without it every bundle is accepted.
 * - input / output: streams (default process.stdin / process.stdout), for tests.
 * - onExit(code): called when serving ends (default process.exit).
 * - drainMs: on shutdown, how long to wait for running hooks (default 5000).
 */
function serve(options = {}) {
  const name = options.name || 'node-plugin';
  const hooks = options.hooks || {};
  const input = options.input || process.stdin;
  const output = options.output || process.stdout;
  const onExit = options.onExit || ((code) => process.exit(code));
  const drainMs = options.drainMs === undefined ? 5000 : options.drainMs;

  // Keep the real stdout for frames; everything else that prints goes to stderr.
  const rawWrite = output.write.bind(output);
  if (output === process.stdout) {
    const toStderr = process.stderr.write.bind(process.stderr);
    process.stdout.write = (...args) => toStderr(...args);
    console.log = console.error;
    console.info = console.error;
    console.debug = console.error;
  }

  const decoder = new FrameDecoder(DEFAULT_MAX_FRAME_BYTES);
  let queued = [];
  let flushScheduled = false;
  let inflight = 0;
  let ended = false;
  let finished = false;

  // Replies produced in the same turn of the event loop leave in one write.
  function flush(done) {
    flushScheduled = false;
    if (queued.length === 0) {
      if (done) done();
      return;
    }
    const data = queued.length === 1 ? queued[0] : Buffer.concat(queued);
    queued = [];
    rawWrite(data, done);
  }

  function send(msg) {
    let frame;
    try {
      frame = encodeFrame(msg);
    } catch (err) {
      frame = encodeFrame({ id: msg.id, error: `cannot encode the reply: ${errorText(err)}` });
    }
    queued.push(frame);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flush);
    }
  }

  function finish(code) {
    if (finished) return;
    finished = true;
    flush(() => onExit(code));
  }

  function maybeFinish() {
    if (ended && inflight === 0) finish(0);
  }

  function track(promiseLike, onValue, onError) {
    inflight += 1;
    Promise.resolve(promiseLike)
      .then(onValue, onError)
      .finally(() => {
        inflight -= 1;
        maybeFinish();
      });
  }

  function runHook(id, object) {
    const hookName = object && typeof object === 'object' ? object.hook_name || '' : '';
    const ctx = { id, hookName, hookType: object && object.hook_type };
    let result;
    try {
      const fn = Object.prototype.hasOwnProperty.call(hooks, hookName) ? hooks[hookName] : null;
      if (typeof fn === 'function') result = fn.call(hooks, object, ctx);
      else if (typeof options.dispatch === 'function') result = options.dispatch(object, ctx);
      else throw new Error(`hook "${hookName}" is not defined in this plugin`);
    } catch (err) {
      result = Promise.reject(err);
    }
    const reply = (value) => {
      send({ id, object: normalizeBodies(value === undefined || value === null ? {} : value) });
    };
    const fail = (err) => {
      log('error', `hook "${hookName}" failed: ${err && err.stack ? err.stack : err}`);
      send({ id, error: `hook "${hookName}" failed: ${errorText(err)}` });
    };
    if (result && typeof result.then === 'function') track(result, reply, fail);
    else reply(result);
  }

  function handle(msg) {
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) {
      log('error', 'dropped a frame that is not a map');
      return;
    }
    const id = msg.id;
    switch (msg.type) {
      case 'dispatch':
        runHook(id, msg.object);
        break;
      case 'hello': {
        if (Number.isInteger(msg.max_frame_bytes) && msg.max_frame_bytes > 0) {
          decoder.maxFrame = msg.max_frame_bytes;
        }
        const reply = { type: 'hello', id: id === undefined ? 0 : id, protocol: PROTOCOL_VERSION, name };
        if (typeof options.dispatch !== 'function') reply.hooks = Object.keys(hooks);
        send(reply);
        break;
      }
      case 'event':
        if (typeof options.onEvent === 'function') {
          let event;
          try {
            event = JSON.parse(msg.payload);
          } catch (err) {
            log('error', `event payload is not JSON: ${err.message}`);
            break;
          }
          track(
            (async () => options.onEvent(event, msg.payload))(),
            () => {},
            (err) => log('error', `event handler failed: ${err && err.stack ? err.stack : err}`),
          );
        }
        break;
      case 'load_bundle': {
        const info = {
          api_id: msg.api_id,
          bundle_hash: msg.bundle_hash,
          path: msg.path,
          manifest: msg.manifest,
        };
        const load = typeof options.loadBundle === 'function'
          ? (async () => options.loadBundle(info))()
          : undefined;
        track(
          load,
          () => send({ id }),
          (err) => send({ id, error: `loading bundle ${msg.path} failed: ${errorText(err)}` }),
        );
        break;
      }
      case 'shutdown':
        ended = true;
        maybeFinish();
        break;
      default:
        if (id !== undefined) send({ id, error: `plugin does not support message type "${msg.type}"` });
    }
  }

  input.on('data', (chunk) => {
    if (finished) return;
    let payloads;
    try {
      payloads = decoder.push(chunk);
    } catch (err) {
      log('error', `protocol error: ${err.message}; exiting so the gateway restarts the plugin`);
      input.pause();
      finish(2);
      return;
    }
    for (const payload of payloads) {
      let msg;
      try {
        msg = decodeFrame(payload);
      } catch (err) {
        log('error', `dropped an undecodable frame: ${err.message}`);
        continue;
      }
      handle(msg);
    }
  });

  input.on('end', () => {
    if (decoder.pending) log('warning', `input ended inside a frame (${decoder.pending} bytes)`);
    ended = true;
    if (inflight > 0 && drainMs >= 0) {
      setTimeout(() => {
        if (!finished) log('warning', `shutting down with ${inflight} hooks still running`);
        finish(0);
      }, drainMs).unref();
    }
    maybeFinish();
  });

  input.on('error', (err) => {
    log('error', `cannot read from the gateway: ${err.message}`);
    finish(1);
  });
  if (typeof output.on === 'function') {
    output.on('error', (err) => {
      log('error', `cannot write to the gateway: ${err.message}`);
      finished = true;
      onExit(1);
    });
  }
}

module.exports = {
  serve,
  PROTOCOL_VERSION,
  DEFAULT_MAX_FRAME_BYTES,
  ProtocolError,
  encodeFrame,
  decodeFrame,
  FrameDecoder,
};
