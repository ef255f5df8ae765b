#!/usr/bin/env node
'use strict';
// Example pipegate plugin: a pre hook named "AddHeader" that adds `X-Pipegate-Node: 1` to the
// request before it goes upstream. It replies with only the change; returning the whole object
// after `object.request.set_headers['X-Pipegate-Node'] = '1'` would work too.
//
// pipe_command: ["node", "/abs/path/to/protocol/node/examples/add_header.js"]

const { serve } = require('pipegate-plugin');

serve({
  name: 'node-add-header',
  hooks: {
    AddHeader(object) {
      return { request: { set_headers: { 'X-Pipegate-Node': '1' } } };
    },
  },
});
