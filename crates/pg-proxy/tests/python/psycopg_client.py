#!/usr/bin/env python3
"""The gateway through psycopg 3: what a Python application sees.

    python psycopg_client.py CONNINFO_AGENT CONNINFO_READER CONNINFO_DEVELOPER

CONNINFO_AGENT is a caller in `ai-agents`, CONNINFO_READER one in
`developers` and `pii-readers`, CONNINFO_DEVELOPER one in `developers`
(all against the gateway with examples/policy.toml and examples/demo.sql).
The three may also be given as one JSON object:

    python psycopg_client.py '{"agent": "...", "reader": "...", "developer": "..."}'

PSYCOPG_SECTIONS=read,copy_out (comma-separated) runs only those sections.

The script observes, it does not judge: it prints one JSON object on stdout,
one key per section, holding the values, SQLSTATEs and transaction states
it saw (crates/pg-proxy/tests/psycopg.rs asserts on them). A section that
failed in a way it did not expect (an exception it did not catch) holds
{"error": "<traceback>"}; the traceback also goes to stderr and the script
exits 1 after printing the JSON.

Sections:
  versions       psycopg's version, its implementation, libpq's version
  read           (a) SELECT as the agent: masked values, names unchanged
  bind           (b) server-side binding: prepare=True, prepare_threshold,
                 binary results, a refused prepared statement
  pipeline       executemany (pipeline mode where libpq has it)
  refusals       (c) 42501 in autocommit mode and in transaction blocks
  copy_out       (d) COPY TO STDOUT, text and CSV (masked) / binary
  copy_in        (d) COPY FROM STDIN: developer allowed, agent refused
  reader         (e) the pii-readers caller sees the real SSN
  cancel         cancel_safe() from another thread during pg_sleep (over TLS
                 when the conninfo asks for it: libpq >= 17 sends the cancel
                 request as the connection was made)
"""

import csv
import io
import json
import os
import sys
import threading
import time
import traceback

import psycopg
from psycopg import errors, pq

SELECT_CUSTOMERS = "SELECT id, name, email, ssn FROM customers ORDER BY id"


def error_info(e):
    """What a client can tell about a server error."""
    return {
        "sqlstate": e.sqlstate,
        "class": type(e).__name__,
        "message": e.diag.message_primary or str(e),
    }


def expect_error(fn):
    """Runs fn; None when it succeeded, else the error's details (psycopg.Error only)."""
    try:
        fn()
    except psycopg.Error as e:
        return error_info(e)
    return None


def status(conn):
    """The connection's transaction status as libpq reports it (IDLE, INTRANS, INERROR, ...)."""
    return conn.info.transaction_status.name


def scalar(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def usable(conn):
    """Whether the connection still answers a query."""
    try:
        return scalar(conn, "SELECT 1") == 1
    except psycopg.Error as e:
        return error_info(e)


# ----------------------------------------------------------------- sections


def versions(c):
    return {
        "psycopg": psycopg.__version__,
        "impl": pq.__impl__,
        "libpq": pq.version(),
    }


def read(c):
    """(a) An allowed read: masked values, everything else unchanged."""
    out = {}
    with psycopg.connect(c["agent"], autocommit=True) as conn:
        # No parameters: psycopg sends it with the simple query protocol.
        out["simple"] = [list(r) for r in conn.execute(SELECT_CUSTOMERS).fetchall()]
        # force the extended protocol without parameters (binary=False, still Parse/Bind).
        cur = conn.cursor()
        cur.execute(SELECT_CUSTOMERS + " LIMIT %s", (10,))
        out["extended"] = [list(r) for r in cur.fetchall()]
        out["columns"] = [(d.name, d.type_code) for d in cur.description]
        # Detector on free text, and the card column.
        out["notes"] = [list(r) for r in conn.execute("SELECT id, card, note FROM customers ORDER BY id").fetchall()]
        # A non-text column passes through: numeric and timestamptz decode as such.
        row = conn.execute("SELECT total, created_at FROM orders WHERE id = %s", (1,)).fetchone()
        out["order_1"] = {"total": str(row[0]), "total_type": type(row[0]).__name__, "created_at": row[1].isoformat()}
    return out


def bind(c):
    """(b) Server-side binding: named prepared statements and binary results."""
    out = {}
    sql = "SELECT ssn FROM customers WHERE id = %s"
    with psycopg.connect(c["agent"], autocommit=True) as conn:
        # prepare=True: Parse with a name on the first execution.
        cur = psycopg.Cursor(conn)
        values = []
        for _ in range(4):
            cur.execute(sql, (2,), prepare=True)
            values.append(cur.fetchone()[0])
        out["prepare_true"] = values
        out["prepared_by_psycopg"] = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in _prepared_names(conn))
        out["server_prepared"] = [
            list(r)
            for r in conn.execute(
                "SELECT name, statement FROM pg_prepared_statements ORDER BY name"
            ).fetchall()
        ]

    # The default prepare_threshold (5): the statement is prepared after it
    # has been executed that many times, the same as a long-running app.
    with psycopg.connect(c["agent"], autocommit=True) as conn:
        out["prepare_threshold"] = conn.prepare_threshold
        values = []
        for i in range(8):
            values.append(scalar(conn, "SELECT ssn, name FROM customers WHERE id = %s", ((i % 3) + 1,)))
        out["threshold_values"] = values
        out["threshold_server_prepared"] = scalar(conn, "SELECT count(*) FROM pg_prepared_statements")

    # Binary results: masked text still decodes, other types intact.
    with psycopg.connect(c["agent"], autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        rows = []
        for _ in range(3):
            cur.execute("SELECT id, ssn, email, name FROM customers WHERE id = %s", (2,), prepare=True)
            rows.append(list(cur.fetchone()))
        out["binary_rows"] = rows
        out["binary_formats"] = [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)]
        cur.execute("SELECT total, created_at, customer_id FROM orders WHERE id = %s", (1,))
        row = cur.fetchone()
        out["binary_order_1"] = {"total": str(row[0]), "created_at": row[1].isoformat(), "customer_id": row[2]}
        # Binary parameters too (%b).
        cur.execute("SELECT ssn FROM customers WHERE id = %b", (3,))
        out["binary_param"] = cur.fetchone()[0]

        # A refused statement with prepare=True: the Parse is refused, the
        # session goes on and the earlier prepared statement still runs.
        out["refused_prepared"] = expect_error(lambda: conn.execute("DROP TABLE orders", prepare=True))
        refused_with_param = expect_error(
            lambda: conn.execute("DELETE FROM customers WHERE id = %s", (1,), prepare=True)
        )
        out["refused_prepared_param"] = refused_with_param
        cur.execute("SELECT id, ssn, email, name FROM customers WHERE id = %s", (2,), prepare=True)
        out["after_refusal"] = list(cur.fetchone())
        out["status_after"] = status(conn)
    return out


def _prepared_names(conn):
    """Names of the statements psycopg believes it prepared (internal API, best effort)."""
    try:
        return [v for v in conn._prepared._names.values()]
    except AttributeError:
        return []


def pipeline(c):
    """executemany: psycopg batches it in pipeline mode where libpq supports it."""
    out = {"pipeline_supported": psycopg.Pipeline.is_supported()}
    with psycopg.connect(c["agent"], autocommit=True) as conn:
        before = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'pipelined'")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO orders (customer_id, total, status) VALUES (%s, %s, %s)",
                [(1, 1.25, "pipelined"), (2, 2.50, "pipelined"), (3, 3.75, "pipelined")],
            )
        out["inserted"] = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'pipelined'") - before
        # A refusal in the middle of an explicit pipeline (one Sync for the
        # three): as with PostgreSQL, the statement before it has its result,
        # the refused one raises, the one after it is skipped (aborted).
        out["explicit"] = _pipelined(conn, first_fetched=False)
        # A server error fetched before the rest of the pipeline is sent
        # (psycopg flushes to fetch): the server skips what follows up to
        # the Sync, and the gateway must not wait for answers to it.
        out["failed_early"] = _pipelined(conn, first_fetched=True)
        out["usable_after"] = usable(conn)
    return out


def _pipelined(conn, first_fetched):
    """One pipeline: a first statement (an allowed read, or with
    `first_fetched` a read of a missing table fetched at once), a refused
    DROP, an allowed read, one Sync; then a read after it. What each gave."""
    results = {}

    def fetch(key, cur, whole=False):
        try:
            row = cur.fetchone()
            results[key] = row if whole else row[0]
        except psycopg.Error as e:
            results[key] = error_info(e)

    try:
        with conn.pipeline() as p:
            cursors = []
            if first_fetched:
                fetch("first", conn.execute("SELECT * FROM no_such_table"), whole=True)
            else:
                cursors.append(("first", conn.execute("SELECT ssn FROM customers WHERE id = %s", (1,))))
            cursors.append(("second", conn.execute("DROP TABLE orders")))
            cursors.append(("third", conn.execute("SELECT ssn FROM customers WHERE id = %s", (3,))))
            try:
                p.sync()
                results["sync"] = None
            except psycopg.Error as e:
                results["sync"] = error_info(e)
            for key, cur in cursors:
                fetch(key, cur)
            c4 = conn.execute("SELECT ssn FROM customers WHERE id = %s", (2,))
            p.sync()
            results["after_sync"] = c4.fetchone()[0]
    except psycopg.Error as e:
        results["pipeline_error"] = error_info(e)
    return results


def refusals(c):
    """(c) 42501 and what is left of the connection and the transaction."""
    out = {}
    with psycopg.connect(c["agent"], autocommit=True) as conn:
        # Autocommit, simple protocol.
        try:
            conn.execute("DROP TABLE orders")
            out["autocommit"] = None
        except errors.InsufficientPrivilege as e:
            out["autocommit"] = error_info(e)
        out["autocommit_status"] = status(conn)
        out["autocommit_usable"] = usable(conn)
        out["orders_exist"] = scalar(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'")
        out["secrets"] = expect_error(lambda: conn.execute("SELECT * FROM secrets"))

        # Inside `with conn.transaction()`: a write, then a refusal. The
        # refusal propagates out of the block, psycopg rolls back.
        tx = {}
        before = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'tx-test'")
        try:
            with conn.transaction():
                conn.execute("INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'tx-test')")
                tx["status_before_refusal"] = status(conn)
                try:
                    conn.execute("DROP TABLE orders")
                except errors.InsufficientPrivilege as e:
                    tx["error"] = error_info(e)
                    tx["status_after_refusal"] = status(conn)
                    # Does the transaction still take statements (as the
                    # server never saw the refused one), or is it failed?
                    try:
                        tx["rows_seen_in_tx"] = scalar(
                            conn, "SELECT count(*) FROM orders WHERE status = 'tx-test'"
                        ) - before
                    except psycopg.Error as e2:
                        tx["rows_seen_in_tx"] = error_info(e2)
                    tx["status_after_next_statement"] = status(conn)
                    raise
        except errors.InsufficientPrivilege as e:
            tx["raised_out_of_block"] = e.sqlstate
        tx["status_after_block"] = status(conn)
        tx["rows_after_rollback"] = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'tx-test'") - before
        tx["usable_after"] = usable(conn)
        out["transaction"] = tx

        # A refusal in a nested block (a savepoint) that the code handles:
        # the outer transaction goes on and commits.
        nested = {}
        before = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'savepoint-test'")
        with conn.transaction():
            conn.execute("INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'savepoint-test')")
            try:
                with conn.transaction():
                    conn.execute("DROP TABLE orders")
            except errors.InsufficientPrivilege as e:
                nested["error"] = e.sqlstate
            nested["status_after_savepoint"] = status(conn)
            conn.execute("INSERT INTO orders (customer_id, total, status) VALUES (2, 2.00, 'savepoint-test')")
        nested["committed_rows"] = (
            scalar(conn, "SELECT count(*) FROM orders WHERE status = 'savepoint-test'") - before
        )
        nested["status_after"] = status(conn)
        out["savepoint"] = nested

        # A refusal through the extended protocol inside a transaction.
        ext = {}
        with conn.transaction() as t:
            ext["error"] = expect_error(lambda: conn.execute("DELETE FROM customers WHERE id = %s", (1,)))
            ext["status_after_refusal"] = status(conn)
            try:
                ext["next"] = scalar(conn, "SELECT ssn FROM customers WHERE id = %s", (1,))
            except psycopg.Error as e:
                ext["next"] = error_info(e)
            raise psycopg.Rollback(t)
        ext["status_after"] = status(conn)
        out["extended_in_transaction"] = ext

    # psycopg's default: not autocommit, the first statement opens a
    # transaction implicitly; the application rolls back after an error.
    with psycopg.connect(c["agent"]) as conn:
        implicit = {}
        implicit["error"] = expect_error(lambda: conn.execute("DROP TABLE orders"))
        implicit["status_after_refusal"] = status(conn)
        conn.rollback()
        implicit["status_after_rollback"] = status(conn)
        implicit["usable"] = usable(conn)
        conn.rollback()
        out["implicit_transaction"] = implicit
    return out


def copy_out(c):
    """(d) COPY TO STDOUT: text rows masked; other formats masked or refused, never leaked."""
    out = {}
    sql = "COPY (SELECT id, ssn, note FROM customers ORDER BY id) TO STDOUT"
    with psycopg.connect(c["agent"], autocommit=True) as conn:
        with conn.cursor() as cur:
            with cur.copy(sql) as copy:
                out["text_rows"] = [list(row) for row in copy.rows()]
            out["text_rowcount"] = cur.rowcount

            # Typed rows: psycopg parses the text format with the given types.
            with cur.copy(sql) as copy:
                copy.set_types(["int4", "text", "text"])
                out["typed_rows"] = [list(row) for row in copy.rows()]

            # The whole table (columns resolved through the catalog by the gateway).
            with cur.copy("COPY customers TO STDOUT") as copy:
                out["whole_table"] = [list(row) for row in copy.rows()]

            # Binary format: masked row by row; psycopg decodes it with the given types.
            def binary():
                with cur.copy("COPY (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "text"])
                    out["binary_rows"] = [list(row) for row in copy.rows()]
                with cur.copy("COPY customers TO STDOUT (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "text", "text", "text", "text", "text"])
                    out["binary_table"] = [list(row) for row in copy.rows()]

            out["binary_error"] = expect_error(binary)
            out["binary_status_after"] = status(conn)
            out["binary_usable_after"] = usable(conn)

            # Binary format with nothing masked in it (the detector reads no text in numbers).
            def binary_plain():
                with cur.copy("COPY (SELECT id, total FROM orders WHERE id <= 3 ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
                    copy.set_types(["int4", "numeric"])
                    out["binary_plain_rows"] = [[r[0], str(r[1])] for r in copy.rows()]

            out["binary_plain_error"] = expect_error(binary_plain)

            # CSV and a non-tab delimiter: still text format on the wire (format 0).
            def raw(statement):
                data = b""
                with cur.copy(statement) as copy:
                    for block in copy:
                        data += bytes(block)
                return data.decode()

            for key, statement in (
                ("text_header", "COPY (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT (FORMAT text, HEADER)"),
                ("csv", "COPY (SELECT id, ssn, note FROM customers ORDER BY id) TO STDOUT (FORMAT csv)"),
                ("delimiter", "COPY (SELECT id, ssn, note FROM customers ORDER BY id) TO STDOUT (DELIMITER '|')"),
            ):
                try:
                    out[key] = raw(statement)
                except psycopg.Error as e:
                    out[key] = error_info(e)
            # CSV as Python's csv module reads it, with a header and quotes.
            statement = ("COPY (SELECT id, ssn, note FROM customers ORDER BY id) TO STDOUT "
                         "(FORMAT csv, HEADER, FORCE_QUOTE *)")
            try:
                out["csv_rows"] = list(csv.reader(io.StringIO(raw(statement), newline="")))
            except psycopg.Error as e:
                out["csv_rows"] = error_info(e)
            out["usable_after"] = usable(conn)
    return out


def copy_in(c):
    """(d) COPY FROM STDIN: a developer into orders; an agent into customers is refused."""
    out = {}
    rows = [(1, "10.50", "copied"), (2, "20.00", "copied"), (3, "30.25", "copied")]
    with psycopg.connect(c["developer"], autocommit=True) as conn:
        before_total = scalar(conn, "SELECT count(*) FROM orders")
        before = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'copied'")
        with conn.cursor() as cur:
            with cur.copy("COPY orders (customer_id, total, status) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            out["developer_rowcount"] = cur.rowcount
            out["developer_copied"] = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'copied'") - before
            out["developer_total_delta"] = scalar(conn, "SELECT count(*) FROM orders") - before_total
            # Binary COPY FROM works too.
            with cur.copy("COPY orders (customer_id, total, status) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "numeric", "text"])
                copy.write_row((1, 5, "copied-binary"))
            out["developer_binary_copied"] = scalar(
                conn, "SELECT count(*) FROM orders WHERE status = 'copied-binary'"
            )

    with psycopg.connect(c["agent"], autocommit=True) as conn:
        before = scalar(conn, "SELECT count(*) FROM customers")

        def agent_copy():
            with conn.cursor() as cur:
                with cur.copy("COPY customers (id, name) FROM STDIN") as copy:
                    copy.write_row((99, "Mallory"))
                    copy.write_row((100, "Trent"))

        out["agent_error"] = expect_error(agent_copy)
        out["agent_status_after"] = status(conn)
        out["agent_customers_delta"] = scalar(conn, "SELECT count(*) FROM customers") - before
        out["agent_mallory"] = scalar(conn, "SELECT count(*) FROM customers WHERE id IN (99, 100)")

        # Agents may write orders: their COPY FROM into orders passes.
        with conn.cursor() as cur:
            with cur.copy("COPY orders (customer_id, total, status) FROM STDIN") as copy:
                copy.write_row((1, "1.00", "agent-copied"))
        out["agent_orders_copied"] = scalar(conn, "SELECT count(*) FROM orders WHERE status = 'agent-copied'")
    return out


def reader(c):
    """(e) pii-readers see the SSN; the e-mail mask has no exemption."""
    out = {}
    with psycopg.connect(c["reader"], autocommit=True) as conn:
        out["rows"] = [list(r) for r in conn.execute(SELECT_CUSTOMERS).fetchall()]
        cur = conn.cursor(binary=True)
        cur.execute("SELECT ssn FROM customers WHERE id = %s", (1,), prepare=True)
        out["binary_ssn"] = cur.fetchone()[0]
        with cur.copy("COPY (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT") as copy:
            out["copy_rows"] = [list(row) for row in copy.rows()]
    return out


def cancel(c):
    """cancel_safe() while another thread waits in pg_sleep(30): the query
    ends with QueryCanceled and cancel_safe() raises nothing."""
    out = {}
    sleep_sql = "SELECT pg_sleep(30)"
    with psycopg.connect(c["developer"], autocommit=True) as conn, psycopg.connect(
        c["developer"], autocommit=True
    ) as watcher:
        out["ssl_in_use"] = bool(conn.pgconn.ssl_in_use)
        seen = {}

        def sleep():
            try:
                conn.execute(sleep_sql)
                seen["query"] = None
            except psycopg.Error as e:
                seen["query"] = error_info(e)

        started = time.monotonic()
        thread = threading.Thread(target=sleep, daemon=True)
        thread.start()
        # Cancel only once the server runs the query (a cancel before that is lost).
        running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s"
        while scalar(watcher, running, (sleep_sql,)) == 0 and time.monotonic() - started < 10:
            time.sleep(0.05)
        try:
            conn.cancel_safe(timeout=10)
            out["cancel_safe"] = None
        except Exception as e:  # noqa: BLE001 - what it raised is the observation
            out["cancel_safe"] = {"class": type(e).__name__, "message": str(e)}
        thread.join(20)
        out["query"] = seen.get("query", "still running")
        out["seconds"] = round(time.monotonic() - started, 1)
        out["usable_after"] = usable(conn)
    return out


SECTIONS = [versions, read, bind, pipeline, refusals, copy_out, copy_in, reader, cancel]


def parse_args(argv):
    if len(argv) == 2 and argv[1].lstrip().startswith("{"):
        c = json.loads(argv[1])
    elif len(argv) == 4:
        c = {"agent": argv[1], "reader": argv[2], "developer": argv[3]}
    else:
        sys.exit(f"usage: {argv[0]} CONNINFO_AGENT CONNINFO_READER CONNINFO_DEVELOPER  (or one JSON object)")
    missing = [k for k in ("agent", "reader", "developer") if not c.get(k)]
    if missing:
        sys.exit(f"{argv[0]}: missing conninfo for {', '.join(missing)}")
    return c


def main(argv):
    c = parse_args(argv)
    results = {}
    failed = []
    wanted = [w for w in os.environ.get("PSYCOPG_SECTIONS", "").split(",") if w]
    unknown = set(wanted) - {f.__name__ for f in SECTIONS}
    if unknown:
        sys.exit(f"{argv[0]}: unknown sections in PSYCOPG_SECTIONS: {', '.join(sorted(unknown))}")
    for section in SECTIONS:
        if wanted and section.__name__ not in wanted:
            continue
        try:
            results[section.__name__] = section(c)
        except Exception:  # noqa: BLE001 - reported, and the exit status says so
            tb = traceback.format_exc()
            results[section.__name__] = {"error": tb}
            failed.append(section.__name__)
            print(f"section {section.__name__} failed:\n{tb}", file=sys.stderr)
    json.dump(results, sys.stdout, default=str, indent=1)
    sys.stdout.write("\n")
    if failed:
        print(f"psycopg_client: sections failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
