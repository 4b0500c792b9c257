#!/usr/bin/env node
// The gateway through node-postgres (`pg`): what a Node.js application sees.
//
//     NODE_PATH=.../node_modules node pg_client.js '{"host": "127.0.0.1", "port": 6432,
//         "database": "app", "agent": TOKEN, "reader": TOKEN, "developer": TOKEN}'
//
// `agent` is the token of a caller in `ai-agents`, `reader` of one in
// `developers` and `pii-readers`, `developer` of one in `developers` (all
// against the gateway with examples/policy.toml and examples/demo.sql). The
// token is the password; the user name is ignored by the gateway.
//
// PG_SECTIONS=read,copy_in (comma-separated) runs only those sections.
//
// node-postgres sends a query without parameters with the simple protocol,
// one with parameters as Parse/Bind/Describe/Execute/Sync in one write
// (unnamed statement, text formats), and a query with a `name` as a named
// prepared statement, parsed once per connection. COPY goes through
// pg-copy-streams. Every section runs under a SECTION_TIMEOUT_MS deadline:
// a gateway that stops answering shows up as {"timeout": ...} in the
// section, not as a hung test.
//
// The script observes, it does not judge: it prints one JSON object on
// stdout, one key per section (crates/pg-proxy/tests/node.rs asserts on
// them). A section that failed in a way it did not expect holds
// {"error": "<stack>"}, the stack also goes to stderr, and the script exits
// 1 after printing the JSON.
//
// Sections:
//   versions     pg's and pg-copy-streams' versions, node's
//   read         an allowed read (simple protocol): masked values
//   params       parameterised queries, a named prepared statement
//   refusals     42501 (simple and extended), the client goes on
//   transaction  a refusal inside BEGIN ... : failed transaction, rollback
//   copy_in      COPY FROM STDIN (pg-copy-streams): allowed and refused
//   copy_out     COPY TO STDOUT (pg-copy-streams): masked
//   reader       the pii-readers caller sees the SSN

'use strict';

const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable } = require('stream');

const SECTION_TIMEOUT_MS = Number(process.env.PG_SECTION_TIMEOUT_MS || 20000);
const SELECT_CUSTOMERS = 'SELECT id, name, email, ssn FROM customers ORDER BY id';

// Clients a section opened; ended (or destroyed) after it, whatever happened.
let open = [];

async function connect(c, who) {
  const client = new Client({
    host: c.host,
    port: c.port,
    user: 'agent',
    password: c[who],
    database: c.database || 'app',
    ssl: false,
    connectionTimeoutMillis: 10000,
    query_timeout: 15000,
  });
  open.push(client);
  // A connection error outside a query (the gateway closing) must not crash the script.
  client.on('error', (e) => process.stderr.write(`client error: ${e.message}\n`));
  await client.connect();
  return client;
}

function errorInfo(e) {
  return { code: e.code === undefined ? null : e.code, message: e.message };
}

async function expectError(promise) {
  try {
    await promise;
  } catch (e) {
    return errorInfo(e);
  }
  return null;
}

async function usable(client) {
  try {
    const r = await client.query('SELECT 1 AS one');
    return r.rows[0].one === 1;
  } catch (e) {
    return errorInfo(e);
  }
}

async function scalar(client, text, values) {
  const r = await client.query({ text, values, rowMode: 'array' });
  return r.rows[0][0];
}

// ------------------------------------------------------------------ sections

async function versions(c) {
  return {
    pg: require('pg/package.json').version,
    pg_copy_streams: require('pg-copy-streams/package.json').version,
    node: process.version,
  };
}

async function read(c) {
  const out = {};
  const client = await connect(c, 'agent');
  const r = await client.query({ text: SELECT_CUSTOMERS, rowMode: 'array' });
  out.rows = r.rows;
  out.fields = r.fields.map((f) => [f.name, f.dataTypeID]);
  out.notes = (await client.query({ text: 'SELECT id, card, note FROM customers ORDER BY id', rowMode: 'array' })).rows;
  const order = (await client.query('SELECT total, created_at FROM orders WHERE id = 1')).rows[0];
  out.order_1 = { total: order.total, created_at: order.created_at.toISOString() };
  out.count = await scalar(client, 'SELECT count(*) FROM orders');
  return out;
}

async function params(c) {
  const out = {};
  const client = await connect(c, 'agent');
  out.by_id = [];
  for (const id of [1, 2, 3]) {
    out.by_id.push(await scalar(client, 'SELECT ssn FROM customers WHERE id = $1', [id]));
  }
  const r = await client.query({
    text: 'SELECT id, email, name FROM customers WHERE id = $1 OR name = $2 ORDER BY id',
    values: [1, 'Carol Diaz'],
    rowMode: 'array',
  });
  out.two_params = r.rows;
  // A named prepared statement: parsed on the first run, then Bind/Execute only.
  out.named = [];
  for (let i = 0; i < 4; i++) {
    const n = await client.query({ name: 'ssn-by-id', text: 'SELECT ssn FROM customers WHERE id = $1', values: [2], rowMode: 'array' });
    out.named.push(n.rows[0][0]);
  }
  out.server_prepared = (
    await client.query({ text: 'SELECT name, statement FROM pg_prepared_statements ORDER BY name', rowMode: 'array' })
  ).rows;
  const ins = await client.query(
    'INSERT INTO orders (customer_id, total, status) VALUES ($1, $2, $3), ($1, $2, $3) RETURNING id',
    [1, '4.50', 'node-param'],
  );
  out.inserted = ins.rowCount;
  out.inserted_total = await scalar(client, "SELECT sum(total)::text FROM orders WHERE status = 'node-param'");
  return out;
}

async function refusals(c) {
  const out = {};
  const client = await connect(c, 'agent');
  out.drop = await expectError(client.query('DROP TABLE orders'));
  out.usable_after_drop = await usable(client);
  out.secrets = await expectError(client.query('SELECT * FROM secrets'));
  out.delete_param = await expectError(client.query('DELETE FROM customers WHERE id = $1', [1]));
  out.usable_after_param = await usable(client);
  out.named_refused = await expectError(client.query({ name: 'drop-it', text: 'DROP TABLE orders' }));
  out.usable_after_named = await usable(client);
  out.orders_exist = await scalar(client, "SELECT count(*)::int FROM pg_tables WHERE tablename = 'orders'");
  out.customers_left = await scalar(client, 'SELECT count(*)::int FROM customers');
  return out;
}

async function transaction(c) {
  const out = {};
  const client = await connect(c, 'agent');
  const count = () => scalar(client, "SELECT count(*)::int FROM orders WHERE status = 'node-tx'");
  const before = await count();
  await client.query('BEGIN');
  await client.query("INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'node-tx')");
  out.seen_in_tx = (await count()) - before;
  out.error = await expectError(client.query('DROP TABLE orders'));
  out.next_in_tx = await expectError(client.query('SELECT 1'));
  out.commit = (await client.query('COMMIT')).command;
  out.rows_after = (await count()) - before;
  out.usable_after = await usable(client);
  // A transaction that commits.
  await client.query('BEGIN');
  await client.query('INSERT INTO orders (customer_id, total, status) VALUES ($1, $2, $3)', [2, '2.00', 'node-tx']);
  await client.query('COMMIT');
  out.committed = (await count()) - before;
  return out;
}

async function copyIn(c) {
  const out = {};
  const developer = await connect(c, 'developer');
  const count = (client, status) => scalar(client, 'SELECT count(*)::int FROM orders WHERE status = $1', [status]);
  const before = await count(developer, 'node-copied');
  const stream = developer.query(copyFrom('COPY orders (customer_id, total, status) FROM STDIN'));
  await pipeline(Readable.from(['1\t10.50\tnode-copied\n', '2\t20.00\tnode-copied\n3\t30.25\tnode-copied\n']), stream);
  out.developer_rowcount = stream.rowCount;
  out.developer_copied = (await count(developer, 'node-copied')) - before;
  out.developer_usable = await usable(developer);

  const agent = await connect(c, 'agent');
  const customers = await scalar(agent, 'SELECT count(*)::int FROM customers');
  out.agent_refused = await expectError(
    pipeline(Readable.from(['99\tMallory\n']), agent.query(copyFrom('COPY customers (id, name) FROM STDIN'))),
  );
  out.agent_customers_delta = (await scalar(agent, 'SELECT count(*)::int FROM customers')) - customers;
  out.agent_usable = await usable(agent);
  const agentStream = agent.query(copyFrom('COPY orders (customer_id, total, status) FROM STDIN'));
  await pipeline(Readable.from(['1\t1.00\tnode-agent-copied\n']), agentStream);
  out.agent_orders_copied = await count(agent, 'node-agent-copied');
  return out;
}

async function copyOut(c) {
  const out = {};
  const client = await connect(c, 'agent');
  const bytes = async (sql) => {
    const chunks = [];
    const stream = client.query(copyTo(sql));
    for await (const chunk of stream) chunks.push(chunk);
    return Buffer.concat(chunks);
  };
  const collect = async (sql) => (await bytes(sql)).toString('utf8');
  out.text = await collect('COPY (SELECT id, ssn, note FROM customers ORDER BY id) TO STDOUT');
  out.table = await collect('COPY customers (id, email) TO STDOUT');
  out.binary = binaryCopyRows(await bytes('COPY (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT (FORMAT binary)'));
  out.usable_after = await usable(client);
  return out;
}

// Decodes binary COPY data of (int4, text) rows: [[id, text or null], ...].
function binaryCopyRows(data) {
  if (!data.subarray(0, 11).equals(Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'))) {
    return { error: 'no binary COPY signature' };
  }
  let at = 15;
  at += 4 + data.readUInt32BE(at);
  const rows = [];
  for (let count = data.readInt16BE(at); count !== -1; count = data.readInt16BE(at)) {
    at += 2;
    const row = [];
    for (let i = 0; i < count; i++) {
      const length = data.readInt32BE(at);
      at += 4;
      if (length === -1) {
        row.push(null);
        continue;
      }
      const value = data.subarray(at, at + length);
      at += length;
      row.push(i === 0 ? value.readInt32BE(0) : value.toString('utf8'));
    }
    rows.push(row);
  }
  return at + 2 === data.length ? rows : { error: 'bytes after the end marker' };
}

async function reader(c) {
  const out = {};
  const client = await connect(c, 'reader');
  out.rows = (await client.query({ text: SELECT_CUSTOMERS, rowMode: 'array' })).rows;
  out.ssn_param = await scalar(client, 'SELECT ssn FROM customers WHERE id = $1', [1]);
  return out;
}

const SECTIONS = { versions, read, params, refusals, transaction, copy_in: copyIn, copy_out: copyOut, reader };

async function closeAll() {
  const clients = open;
  open = [];
  for (const client of clients) {
    let timer;
    const deadline = new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), 3000);
    });
    const ended = await Promise.race([client.end().then(() => 'ended', () => 'ended'), deadline]);
    clearTimeout(timer);
    if (ended === 'timeout' && client.connection && client.connection.stream) {
      client.connection.stream.destroy();
    }
  }
}

async function runSection(name, fn, c) {
  let timer;
  const deadline = new Promise((resolve) => {
    timer = setTimeout(
      () => resolve({ timeout: `section ${name} did not finish in ${SECTION_TIMEOUT_MS / 1000} s` }),
      SECTION_TIMEOUT_MS,
    );
  });
  try {
    return await Promise.race([fn(c), deadline]);
  } finally {
    clearTimeout(timer);
    await closeAll();
  }
}

async function main(argv) {
  if (argv.length !== 1) {
    process.stderr.write('usage: pg_client.js JSON\n');
    return 2;
  }
  const c = JSON.parse(argv[0]);
  const wanted = (process.env.PG_SECTIONS || '').split(',').filter((s) => s);
  const unknown = wanted.filter((w) => !(w in SECTIONS));
  if (unknown.length) {
    process.stderr.write(`unknown sections in PG_SECTIONS: ${unknown.join(', ')}\n`);
    return 2;
  }
  const results = {};
  const failed = [];
  for (const [name, fn] of Object.entries(SECTIONS)) {
    if (wanted.length && !wanted.includes(name)) continue;
    try {
      results[name] = await runSection(name, fn, c);
    } catch (e) {
      results[name] = { error: String((e && e.stack) || e) };
      failed.push(name);
      process.stderr.write(`section ${name} failed:\n${(e && e.stack) || e}\n`);
    }
  }
  process.stdout.write(JSON.stringify(results, null, 1) + '\n');
  if (failed.length) {
    process.stderr.write(`pg_client: sections failed: ${failed.join(', ')}\n`);
    return 1;
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Whatever is still open (a stuck socket) must not keep the process alive.
    setTimeout(() => process.exit(code), 100).unref();
  },
  (e) => {
    process.stderr.write(`${(e && e.stack) || e}\n`);
    process.exit(1);
  },
);
