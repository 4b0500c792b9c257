#!/usr/bin/env python3
"""The gateway through asyncpg: what an asyncio application sees.

    python asyncpg_client.py '{"host": "127.0.0.1", "port": 6432, "database": "app",
                               "agent": TOKEN, "reader": TOKEN, "developer": TOKEN}'

`agent` is the token of a caller in `ai-agents`, `reader` of one in
`developers` and `pii-readers`, `developer` of one in `developers` (all
against the gateway with examples/policy.toml and examples/demo.sql). The
token is the password; the user name is ignored by the gateway.

ASYNCPG_SECTIONS=read,copy_out (comma-separated) runs only those sections;
without it the default sections run (not introspection, copy_in and
search_path_cases, which are asked for by name). ASYNCPG_CASES names the search_path cases to
run (all when empty).

asyncpg speaks the extended protocol with binary formats for everything
but `execute()` without arguments (the simple protocol), keeps named
prepared statements, and sends a binary COPY's data without waiting for
CopyInResponse. Every section runs under `asyncio.wait_for` (SECTION_TIMEOUT
seconds): a gateway that stops answering shows up as {"timeout": ...} in
the section, not as a hung test.

The script observes, it does not judge: it prints one JSON object on
stdout, one key per section, holding the values and SQLSTATEs it saw
(crates/pg-proxy/tests/asyncpg.rs asserts on them). A section that failed
in a way it did not expect holds {"error": "<traceback>"}; the traceback
also goes to stderr and the script exits 1 after printing the JSON. A
section that timed out holds {"timeout": "..."} and does not change the
exit status (the test says what it expected instead).

Sections:
  versions           asyncpg's version, the server version it saw
  read               an allowed read: masked values, other types intact
  refusals           42501 (simple and extended), the connection goes on
  prepared           conn.prepare, fetch with arguments, named statements
                     on the server, executemany, a refused prepare
  reader             the pii-readers caller sees the SSN, binary and COPY
  transaction        a refusal inside `async with conn.transaction()`
  copy_out           copy_from_query / copy_from_table (text and binary, masked)
  search_path        startup search_path=private: plain reads refused
  introspection      an int[] parameter and result (asyncpg's pg_type lookup)
  copy_in            binary copy_records_to_table into orders
  search_path_cases  ways back to the startup search_path, then a read
"""

import asyncio
import io
import json
import os
import sys
import traceback
from decimal import Decimal

import asyncpg

SECTION_TIMEOUT = float(os.environ.get("ASYNCPG_SECTION_TIMEOUT", "20"))
CONNECT_TIMEOUT = 10
COMMAND_TIMEOUT = 15

SELECT_CUSTOMERS = "SELECT id, name, email, ssn FROM customers ORDER BY id"

# Connections a section opened; closed (or terminated) after it, whatever happened.
_open = []


async def connect(c, who, **kwargs):
    conn = await asyncpg.connect(
        host=c["host"],
        port=c["port"],
        user="agent",
        password=c[who],
        database=c.get("database", "app"),
        ssl=False,
        timeout=CONNECT_TIMEOUT,
        command_timeout=COMMAND_TIMEOUT,
        **kwargs,
    )
    _open.append(conn)
    return conn


def error_info(e):
    """What a client can tell about an error: SQLSTATE, class, message."""
    return {
        "sqlstate": getattr(e, "sqlstate", None),
        "class": type(e).__name__,
        "message": getattr(e, "message", None) or str(e),
    }


async def expect_error(awaitable):
    """None when it succeeded, else the error's details (asyncpg's errors and timeouts)."""
    try:
        await awaitable
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return error_info(e)
    except asyncio.TimeoutError:
        return {"sqlstate": None, "class": "TimeoutError", "message": "command timed out"}
    return None


async def usable(conn):
    """Whether the connection still answers a query."""
    try:
        return await conn.fetchval("SELECT 1") == 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return error_info(e)


def rows(records):
    return [list(r.values()) for r in records]


# ----------------------------------------------------------------- sections


async def versions(c):
    conn = await connect(c, "agent")
    v = conn.get_server_version()
    return {"asyncpg": asyncpg.__version__, "server_major": v.major}


async def read(c):
    """An allowed read: masks applied, other values and types unchanged."""
    out = {}
    conn = await connect(c, "agent")
    # fetch() without arguments: still Parse/Bind/Execute, binary results.
    out["fetch"] = rows(await conn.fetch(SELECT_CUSTOMERS))
    out["notes"] = rows(await conn.fetch("SELECT id, card, note FROM customers ORDER BY id"))
    row = await conn.fetchrow("SELECT total, created_at, customer_id FROM orders WHERE id = $1", 1)
    out["order_1"] = {
        "total": str(row["total"]),
        "total_type": type(row["total"]).__name__,
        "created_at": row["created_at"].isoformat(),
        "customer_id": row["customer_id"],
    }
    out["count"] = await conn.fetchval("SELECT count(*) FROM orders")
    # execute() without arguments is the simple protocol: the command tag only.
    out["simple_status"] = await conn.execute("SELECT id FROM customers")
    return out


async def refusals(c):
    """42501 through both protocols; the connection goes on."""
    out = {}
    conn = await connect(c, "agent")
    out["drop_simple"] = await expect_error(conn.execute("DROP TABLE orders"))
    out["usable_after_simple"] = await usable(conn)
    out["secrets_extended"] = await expect_error(conn.fetch("SELECT * FROM secrets"))
    out["usable_after_extended"] = await usable(conn)
    out["delete_with_arg"] = await expect_error(conn.execute("DELETE FROM customers WHERE id = $1", 1))
    out["in_transaction_after"] = conn.is_in_transaction()
    out["orders_exist"] = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'orders'")
    out["customers_left"] = await conn.fetchval("SELECT count(*) FROM customers")
    return out


async def prepared(c):
    """conn.prepare, fetch with arguments, server-side named statements."""
    out = {}
    conn = await connect(c, "agent")
    stmt = await conn.prepare("SELECT id, ssn, email, name FROM customers WHERE id = $1")
    out["parameters"] = [t.name for t in stmt.get_parameters()]
    out["attributes"] = [[a.name, a.type.name] for a in stmt.get_attributes()]
    out["rows"] = [list((await stmt.fetchrow(i)).values()) for i in (1, 2, 3)]
    out["again"] = await stmt.fetchval(2, column=1)
    out["statement_name"] = stmt.get_name()
    # fetch with arguments goes through asyncpg's statement cache: named statements.
    values = []
    for i in range(6):
        values.append(await conn.fetchval("SELECT ssn FROM customers WHERE id = $1", (i % 3) + 1))
    out["cached_values"] = values
    out["server_prepared"] = sorted(
        r["statement"]
        for r in await conn.fetch("SELECT name, statement FROM pg_prepared_statements WHERE name LIKE '__asyncpg%'")
    )
    out["names_on_server"] = await conn.fetchval(
        "SELECT count(*) FROM pg_prepared_statements WHERE name = $1", stmt.get_name()
    )
    # executemany: one statement, several Bind/Execute, one Sync.
    before = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-many'")
    await conn.executemany(
        "INSERT INTO orders (customer_id, total, status) VALUES ($1, $2, $3)",
        [(1, Decimal("1.25"), "asyncpg-many"), (2, Decimal("2.50"), "asyncpg-many"), (3, Decimal("3.75"), "asyncpg-many")],
    )
    out["executemany_inserted"] = (
        await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-many'") - before
    )
    # A refused prepare, then the earlier statement still runs.
    out["refused_prepare"] = await expect_error(conn.prepare("DROP TABLE orders"))
    out["refused_fetch_arg"] = await expect_error(conn.fetch("SELECT api_key FROM secrets WHERE id = $1", 1))
    out["after_refusal"] = list((await stmt.fetchrow(2)).values())
    return out


async def reader(c):
    """pii-readers see the SSN (binary results and COPY); the e-mail mask has no exemption."""
    out = {}
    conn = await connect(c, "reader")
    out["rows"] = rows(await conn.fetch(SELECT_CUSTOMERS))
    out["ssn_arg"] = await conn.fetchval("SELECT ssn FROM customers WHERE id = $1", 1)
    buf = io.BytesIO()
    await conn.copy_from_query("SELECT id, ssn FROM customers ORDER BY id", output=buf)
    out["copy"] = buf.getvalue().decode()
    return out


async def transaction(c):
    """A refusal inside `async with conn.transaction()`: raised out of the block, rolled back."""
    out = {}
    conn = await connect(c, "agent")
    before = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-tx'")
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'asyncpg-tx')")
            out["in_transaction"] = conn.is_in_transaction()
            out["seen_in_tx"] = (
                await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-tx'") - before
            )
            try:
                await conn.execute("DROP TABLE orders")
                out["error"] = None
            except asyncpg.PostgresError as e:
                out["error"] = error_info(e)
                # The transaction is failed, as after any PostgreSQL error.
                out["next_in_tx"] = await expect_error(conn.fetchval("SELECT 1"))
                raise
    except asyncpg.PostgresError as e:
        out["raised_out_of_block"] = e.sqlstate
    out["in_transaction_after"] = conn.is_in_transaction()
    out["rows_after_rollback"] = (
        await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-tx'") - before
    )
    out["usable_after"] = await usable(conn)

    # A refusal through the extended protocol, handled inside a savepoint:
    # the outer transaction commits.
    before = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-sp'")
    async with conn.transaction():
        await conn.execute("INSERT INTO orders (customer_id, total, status) VALUES ($1, $2, $3)", 1, Decimal("1"), "asyncpg-sp")
        try:
            async with conn.transaction():
                await conn.fetch("SELECT api_key FROM secrets WHERE id = $1", 1)
        except asyncpg.PostgresError as e:
            out["savepoint_error"] = e.sqlstate
        await conn.execute("INSERT INTO orders (customer_id, total, status) VALUES ($1, $2, $3)", 2, Decimal("2"), "asyncpg-sp")
    out["savepoint_committed"] = (
        await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-sp'") - before
    )
    out["in_transaction_end"] = conn.is_in_transaction()
    return out


async def copy_out(c):
    """COPY TO STDOUT of allowed tables, text format: masked line by line."""
    out = {}
    conn = await connect(c, "agent")
    buf = io.BytesIO()
    status = await conn.copy_from_query("SELECT id, ssn, note FROM customers ORDER BY id", output=buf, timeout=COMMAND_TIMEOUT)
    out["query"] = buf.getvalue().decode()
    out["query_status"] = status
    # With arguments (asyncpg interpolates them into the COPY statement).
    buf = io.BytesIO()
    await conn.copy_from_query("SELECT id, ssn FROM customers WHERE id = $1", 2, output=buf)
    out["query_arg"] = buf.getvalue().decode()
    chunks = []

    async def sink(data):
        chunks.append(bytes(data))

    status = await conn.copy_from_table("customers", columns=["id", "name", "email", "ssn"], output=sink)
    out["table"] = b"".join(chunks).decode()
    out["table_status"] = status
    # Binary COPY: masked row by row; asyncpg hands the bytes over as the server format writes them.
    buf = io.BytesIO()
    out["binary_query_error"] = await expect_error(
        conn.copy_from_query("SELECT id, ssn, upper(ssn) AS shout FROM customers ORDER BY id", output=buf, format="binary")
    )
    out["binary_query"] = binary_copy_rows(buf.getvalue(), ["int4", "text", "text"])
    buf = io.BytesIO()
    out["binary_table_status"] = await conn.copy_from_table(
        "customers", columns=["id", "email", "ssn"], output=buf, format="binary"
    )
    out["binary_table"] = binary_copy_rows(buf.getvalue(), ["int4", "text", "text"])
    # CSV with a header, read back with Python's csv module.
    import csv

    buf = io.BytesIO()
    out["csv_status"] = await conn.copy_from_query(
        "SELECT id, ssn, note FROM customers ORDER BY id", output=buf, format="csv", header=True
    )
    out["csv_rows"] = list(csv.reader(io.StringIO(buf.getvalue().decode())))
    out["usable_after"] = await usable(conn)
    return out


def binary_copy_rows(data, types):
    """Decodes PostgreSQL's binary COPY data whose columns have these types (int4 or text)."""
    import struct

    if not data.startswith(b"PGCOPY\n\xff\r\n\x00"):
        return {"error": "no binary COPY signature", "bytes": data[:32].hex()}
    (extension,) = struct.unpack_from(">I", data, 15)
    at = 19 + extension
    rows = []
    while True:
        (count,) = struct.unpack_from(">h", data, at)
        at += 2
        if count == -1:
            break
        row = []
        for kind in types[:count]:
            (length,) = struct.unpack_from(">i", data, at)
            at += 4
            if length == -1:
                row.append(None)
                continue
            value = data[at : at + length]
            at += length
            row.append(struct.unpack(">i", value)[0] if kind == "int4" else value.decode())
        rows.append(row)
    if at != len(data):
        return {"error": "bytes after the end marker", "rest": data[at:].hex()}
    return rows


async def search_path(c):
    """Startup search_path=private (server_settings): names resolve in private."""
    out = {}
    conn = await connect(c, "agent", server_settings={"search_path": "private"})
    out["show"] = await conn.fetchval("SELECT current_setting('search_path')")
    out["plain_extended"] = await expect_error(conn.fetch("SELECT * FROM customers"))
    out["plain_simple"] = await expect_error(conn.execute("SELECT * FROM customers"))
    out["qualified_private"] = await expect_error(conn.fetch("SELECT * FROM private.customers"))
    out["qualified_public"] = rows(await conn.fetch("SELECT id, ssn FROM public.customers ORDER BY id"))
    out["usable_after"] = await usable(conn)
    conn2 = await connect(c, "agent")
    out["default_show"] = await conn2.fetchval("SELECT current_setting('search_path')")
    out["default_count"] = await conn2.fetchval("SELECT count(*) FROM customers")
    return out


async def introspection(c):
    """A parameter of a type asyncpg has no built-in codec for (an array):
    asyncpg asks pg_type about it (a recursive query) before it can encode it."""
    out = {}
    conn = await connect(c, "agent")
    try:
        out["array_arg"] = rows(
            await conn.fetch("SELECT id, ssn FROM customers WHERE id = ANY($1::int[]) ORDER BY id", [1, 3])
        )
    except Exception as e:  # noqa: BLE001 - asyncpg fails in its codec setup, not with a server error
        out["array_arg"] = error_info(e)
    try:
        out["array_result"] = await conn.fetchval("SELECT ARRAY[id, id + 1] FROM customers WHERE id = $1", 2)
    except Exception as e:  # noqa: BLE001
        out["array_result"] = error_info(e)
    out["usable_after"] = await usable(conn)
    return out


async def copy_in(c):
    """Binary COPY FROM STDIN (copy_records_to_table) into orders, which agents may write."""
    out = {}
    conn = await connect(c, "agent")
    before = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-copied'")
    records = [(1, Decimal("10.50"), "asyncpg-copied"), (2, Decimal("20.00"), "asyncpg-copied"), (3, Decimal("30.25"), "asyncpg-copied")]
    try:
        out["status"] = await asyncio.wait_for(
            conn.copy_records_to_table("orders", records=records, columns=["customer_id", "total", "status"]),
            timeout=SECTION_TIMEOUT / 2,
        )
    except asyncio.TimeoutError:
        out["status"] = {"timeout": f"copy_records_to_table did not finish in {SECTION_TIMEOUT / 2:.0f} s"}
        return out
    out["copied"] = await conn.fetchval("SELECT count(*) FROM orders WHERE status = 'asyncpg-copied'") - before
    out["totals"] = [
        str(v["total"])
        for v in await conn.fetch("SELECT total FROM orders WHERE status = 'asyncpg-copied' ORDER BY total")
    ]
    # An agent may not write customers: refused, nothing lands, the session goes on.
    out["customers_refused"] = await expect_error(
        asyncio.wait_for(
            conn.copy_records_to_table("customers", records=[(99, "Mallory")], columns=["id", "name"]),
            timeout=SECTION_TIMEOUT / 4,
        )
    )
    out["mallory"] = await conn.fetchval("SELECT count(*) FROM customers WHERE id = 99")
    out["usable_after"] = await usable(conn)
    return out


# Each case: the statements, in order, on a connection started with
# search_path=private. Each entry is one string sent as one Query (simple
# protocol, several statements), or a single SELECT sent through fetch()
# (extended protocol). The server would read private.customers (2 rows)
# at the SELECT; the public one has 3.
SEARCH_PATH_CASES = {
    "reset": ["RESET search_path; SELECT * FROM customers"],
    "set_default": ["SET search_path TO DEFAULT; SELECT * FROM customers"],
    "reset_all": ["RESET ALL; SELECT * FROM customers"],
    "discard_all": ["DISCARD ALL", "SELECT * FROM customers"],
    "set_local_default": [
        "BEGIN",
        "SET LOCAL search_path TO DEFAULT",
        "SELECT * FROM customers",
        "COMMIT",
    ],
    "set_local_default_one_string": [
        "BEGIN; SET LOCAL search_path TO DEFAULT; SELECT * FROM customers; COMMIT",
    ],
    "set_then_reset": ["SET search_path = public; RESET search_path; SELECT * FROM customers"],
}


async def search_path_cases(c):
    out = {}
    wanted = [w for w in os.environ.get("ASYNCPG_CASES", "").split(",") if w]
    unknown = set(wanted) - set(SEARCH_PATH_CASES)
    if unknown:
        raise ValueError(f"unknown ASYNCPG_CASES: {', '.join(sorted(unknown))}")
    for name, steps in SEARCH_PATH_CASES.items():
        if wanted and name not in wanted:
            continue
        conn = await connect(c, "agent", server_settings={"search_path": "private"})
        case = {"steps": []}
        for sql in steps:
            step = {"sql": sql}
            try:
                if sql.startswith("SELECT"):
                    step["rows"] = rows(await conn.fetch(sql))
                else:
                    step["status"] = await conn.execute(sql)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                step["error"] = error_info(e)
            case["steps"].append(step)
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        # What the server resolves now, for the report (read directly, qualified).
        try:
            case["server_search_path"] = await conn.fetchval("SELECT current_setting('search_path')")
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            case["server_search_path"] = error_info(e)
        case["usable_after"] = await usable(conn)
        out[name] = case
    return out


DEFAULT_SECTIONS = [versions, read, refusals, prepared, reader, transaction, copy_out, search_path]
ON_REQUEST = [introspection, copy_in, search_path_cases]


async def run_section(section, c):
    try:
        return await asyncio.wait_for(section(c), timeout=SECTION_TIMEOUT)
    except asyncio.TimeoutError:
        return {"timeout": f"section {section.__name__} did not finish in {SECTION_TIMEOUT:.0f} s"}
    finally:
        while _open:
            conn = _open.pop()
            if conn.is_closed():
                continue
            try:
                await asyncio.wait_for(conn.close(), timeout=3)
            except Exception:  # noqa: BLE001 - a stuck connection is dropped
                conn.terminate()


async def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} JSON")
    c = json.loads(argv[1])
    missing = [k for k in ("host", "port", "agent", "reader", "developer") if not c.get(k)]
    if missing:
        sys.exit(f"{argv[0]}: missing {', '.join(missing)}")
    wanted = [w for w in os.environ.get("ASYNCPG_SECTIONS", "").split(",") if w]
    every = DEFAULT_SECTIONS + ON_REQUEST
    unknown = set(wanted) - {f.__name__ for f in every}
    if unknown:
        sys.exit(f"{argv[0]}: unknown sections in ASYNCPG_SECTIONS: {', '.join(sorted(unknown))}")
    results = {}
    failed = []
    for section in every:
        if (wanted and section.__name__ not in wanted) or (not wanted and section in ON_REQUEST):
            continue
        try:
            results[section.__name__] = await run_section(section, c)
        except Exception:  # noqa: BLE001 - reported, and the exit status says so
            tb = traceback.format_exc()
            results[section.__name__] = {"error": tb}
            failed.append(section.__name__)
            print(f"section {section.__name__} failed:\n{tb}", file=sys.stderr)
    json.dump(results, sys.stdout, default=str, indent=1)
    sys.stdout.write("\n")
    if failed:
        print(f"asyncpg_client: sections failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
