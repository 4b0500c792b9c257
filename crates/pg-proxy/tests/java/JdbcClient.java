// The gateway through pgjdbc (the PostgreSQL JDBC driver): what a Java
// application sees.
//
//     javac -cp postgresql.jar -d OUT JdbcClient.java
//     java -cp OUT:postgresql.jar JdbcClient HOST PORT AGENT_TOKEN READER_TOKEN DEVELOPER_TOKEN
//
// AGENT_TOKEN is the token of a caller in `ai-agents`, READER_TOKEN of one
// in `developers` and `pii-readers`, DEVELOPER_TOKEN of one in `developers`
// (all against the gateway with examples/policy.toml and examples/demo.sql).
// The token is the password; the user name is ignored by the gateway.
//
// JDBC_SECTIONS=read,copy (comma-separated) runs only those sections.
//
// pgjdbc speaks the extended protocol for everything; a PreparedStatement
// becomes a named server-side statement after prepareThreshold (5)
// executions, and then pgjdbc asks for binary results of the types it can
// decode. Every connection has socketTimeout=20 (seconds): a gateway that
// stops answering shows up as an I/O error in the section, not as a hung
// test.
//
// The program observes, it does not judge: it prints one JSON object on
// stdout, one key per section (crates/pg-proxy/tests/jdbc.rs asserts on
// them). A section that failed in a way it did not expect holds
// {"error": "<stack trace>"}, the trace also goes to stderr, and the
// program exits 1 after printing the JSON.
//
// Sections:
//   versions     the driver's and the server's versions
//   read         an allowed read: masked values, other types intact
//   prepared     a PreparedStatement run 7 times (server-side after 5)
//   refusals     SQLException with SQLState 42501, the connection goes on
//   transaction  a refusal with autocommit off: failed transaction, rollback
//   batch        addBatch/executeBatch, and a batch holding a refusal
//   copy         CopyManager.copyIn / copyOut (text, CSV, binary)
//   reader       the pii-readers caller sees the SSN

import java.io.StringReader;
import java.io.StringWriter;
import java.io.PrintWriter;
import java.math.BigDecimal;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public final class JdbcClient {
    private static String host;
    private static String port;
    private static final Map<String, String> TOKENS = new LinkedHashMap<>();

    private JdbcClient() {}

    interface Section {
        Map<String, Object> run() throws Exception;
    }

    static Connection connect(String who) throws SQLException {
        String url = "jdbc:postgresql://" + host + ":" + port + "/app?user=agent&password="
                + URLEncoder.encode(TOKENS.get(who), StandardCharsets.UTF_8)
                + "&sslmode=disable&connectTimeout=10&loginTimeout=10&socketTimeout=20";
        return DriverManager.getConnection(url);
    }

    static Map<String, Object> errorInfo(SQLException e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("sqlstate", e.getSQLState());
        m.put("class", e.getClass().getSimpleName());
        m.put("message", e.getMessage());
        return m;
    }

    interface Action {
        void run() throws SQLException;
    }

    /** null when it succeeded, else the SQLException's details. */
    static Object expectError(Action a) {
        try {
            a.run();
        } catch (SQLException e) {
            return errorInfo(e);
        }
        return null;
    }

    static Object usable(Connection conn) {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
            rs.next();
            return rs.getInt(1) == 1;
        } catch (SQLException e) {
            return errorInfo(e);
        }
    }

    static long scalarLong(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            rs.next();
            return rs.getLong(1);
        }
    }

    static Object value(Object v) {
        if (v instanceof BigDecimal) {
            return ((BigDecimal) v).toPlainString();
        }
        return v;
    }

    static List<Object> rows(ResultSet rs) throws SQLException {
        List<Object> out = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<Object> row = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                row.add(value(rs.getObject(i)));
            }
            out.add(row);
        }
        return out;
    }

    static List<Object> query(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            return rows(rs);
        }
    }

    // ------------------------------------------------------------- sections

    static Map<String, Object> versions() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect("agent")) {
            out.put("driver", conn.getMetaData().getDriverVersion());
            out.put("server_major", conn.getMetaData().getDatabaseMajorVersion());
            out.put("java", System.getProperty("java.version"));
        }
        return out;
    }

    static Map<String, Object> read() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect("agent")) {
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT id, name, email, ssn FROM customers ORDER BY id")) {
                ResultSetMetaData md = rs.getMetaData();
                List<Object> columns = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) {
                    columns.add(Arrays.asList(md.getColumnName(i), md.getColumnTypeName(i)));
                }
                out.put("columns", columns);
                out.put("rows", rows(rs));
            }
            out.put("notes", query(conn, "SELECT id, card, note FROM customers ORDER BY id"));
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT total, created_at FROM orders WHERE id = 1")) {
                rs.next();
                Map<String, Object> order = new LinkedHashMap<>();
                order.put("total", rs.getBigDecimal(1).toPlainString());
                order.put("created_at", rs.getObject(2, OffsetDateTime.class).toInstant().toString());
                out.put("order_1", order);
            }
            out.put("count", scalarLong(conn, "SELECT count(*) FROM orders"));
        }
        return out;
    }

    static Map<String, Object> prepared() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect("agent")) {
            List<Object> values = new ArrayList<>();
            List<Object> serverSide = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT id, ssn, email, name FROM customers WHERE id = ?")) {
                out.put("prepare_threshold", ps.unwrap(PGStatement.class).getPrepareThreshold());
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, (i % 3) + 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        values.add(rows(rs).get(0));
                    }
                    serverSide.add(ps.unwrap(PGStatement.class).isUseServerPrepare());
                }
            }
            out.put("values", values);
            out.put("server_side", serverSide);
            out.put("server_prepared", query(conn,
                    "SELECT statement FROM pg_prepared_statements ORDER BY name"));
            // Other types through a server-side statement (binary results once prepared).
            List<Object> orders = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT id, customer_id, total, created_at FROM orders WHERE id = ?")) {
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        orders.add(Arrays.asList(rs.getInt(1), rs.getInt(2), rs.getBigDecimal(3).toPlainString(),
                                rs.getObject(4, OffsetDateTime.class).toInstant().toString()));
                    }
                }
            }
            out.put("orders", orders);
        }
        return out;
    }

    static Map<String, Object> refusals() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect("agent")) {
            out.put("drop", expectError(() -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("DROP TABLE orders");
                }
            }));
            out.put("usable_after_drop", usable(conn));
            out.put("secrets", expectError(() -> query(conn, "SELECT * FROM secrets")));
            out.put("delete_param", expectError(() -> {
                try (PreparedStatement ps = conn.prepareStatement("DELETE FROM customers WHERE id = ?")) {
                    ps.setInt(1, 1);
                    ps.executeUpdate();
                }
            }));
            out.put("usable_after_param", usable(conn));
            out.put("orders_exist", scalarLong(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'"));
            out.put("customers_left", scalarLong(conn, "SELECT count(*) FROM customers"));
        }
        return out;
    }

    static Map<String, Object> transaction() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        String count = "SELECT count(*) FROM orders WHERE status = 'jdbc-tx'";
        try (Connection conn = connect("agent")) {
            long before = scalarLong(conn, count);
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'jdbc-tx')");
            }
            out.put("seen_in_tx", scalarLong(conn, count) - before);
            out.put("error", expectError(() -> {
                try (Statement st = conn.createStatement()) {
                    st.execute("DROP TABLE orders");
                }
            }));
            out.put("next_in_tx", expectError(() -> query(conn, "SELECT 1")));
            conn.rollback();
            out.put("rows_after_rollback", scalarLong(conn, count) - before);
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO orders (customer_id, total, status) VALUES (?, ?, 'jdbc-tx')")) {
                ps.setInt(1, 2);
                ps.setBigDecimal(2, new BigDecimal("2.00"));
                ps.executeUpdate();
            }
            conn.commit();
            conn.setAutoCommit(true);
            out.put("committed", scalarLong(conn, count) - before);
            out.put("usable_after", usable(conn));
        }
        return out;
    }

    static Map<String, Object> batch() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect("agent")) {
            long before = scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-batch'");
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO orders (customer_id, total, status) VALUES (?, ?, 'jdbc-batch')")) {
                for (int i = 1; i <= 3; i++) {
                    ps.setInt(1, i);
                    ps.setBigDecimal(2, new BigDecimal(i + ".50"));
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                List<Object> c = new ArrayList<>();
                for (int n : counts) {
                    c.add(n);
                }
                out.put("counts", c);
            }
            out.put("inserted", scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-batch'") - before);

            // A batch holding a refused statement: the batch fails with the
            // refusal (autocommit: the statements before it may stand).
            long beforeRefused = scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-batch-refused'");
            try (Statement st = conn.createStatement()) {
                st.addBatch("INSERT INTO orders (customer_id, total, status) VALUES (1, 1.00, 'jdbc-batch-refused')");
                st.addBatch("DROP TABLE orders");
                st.addBatch("INSERT INTO orders (customer_id, total, status) VALUES (2, 2.00, 'jdbc-batch-refused')");
                st.executeBatch();
                out.put("refused_batch", null);
            } catch (BatchUpdateException e) {
                Map<String, Object> m = errorInfo(e);
                SQLException next = e.getNextException();
                m.put("next", next == null ? null : errorInfo(next));
                List<Object> c = new ArrayList<>();
                for (int n : e.getUpdateCounts()) {
                    c.add(n);
                }
                m.put("update_counts", c);
                out.put("refused_batch", m);
            }
            out.put("refused_batch_rows",
                    scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-batch-refused'") - beforeRefused);
            out.put("orders_exist", scalarLong(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 'orders'"));
            out.put("usable_after", usable(conn));
        }
        return out;
    }

    static Map<String, Object> copy() throws Exception {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect("developer")) {
            CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
            long before = scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-copied'");
            long copied = copy.copyIn("COPY orders (customer_id, total, status) FROM STDIN",
                    new StringReader("1\t10.50\tjdbc-copied\n2\t20.00\tjdbc-copied\n3\t30.25\tjdbc-copied\n"));
            out.put("copy_in_rows", copied);
            out.put("copy_in_landed", scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-copied'") - before);
            out.put("usable_after_copy_in", usable(conn));
        }
        try (Connection conn = connect("agent")) {
            CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
            StringWriter w = new StringWriter();
            long n = copy.copyOut("COPY (SELECT id, ssn, note FROM customers ORDER BY id) TO STDOUT", w);
            out.put("copy_out_rows", n);
            out.put("copy_out", w.toString());
            StringWriter table = new StringWriter();
            copy.copyOut("COPY customers (id, email) TO STDOUT", table);
            out.put("copy_out_table", table.toString());
            StringWriter csv = new StringWriter();
            copy.copyOut("COPY (SELECT id, ssn FROM customers ORDER BY id) TO STDOUT (FORMAT csv, HEADER)", csv);
            out.put("copy_out_csv", csv.toString());
            java.io.ByteArrayOutputStream binary = new java.io.ByteArrayOutputStream();
            long binaryRows = copy.copyOut("COPY customers (id, ssn) TO STDOUT (FORMAT binary)", binary);
            out.put("copy_out_binary_rows", binaryRows);
            out.put("copy_out_binary", binaryCopyRows(binary.toByteArray()));
            long customers = scalarLong(conn, "SELECT count(*) FROM customers");
            out.put("agent_copy_in_refused", expectError(() -> {
                try {
                    copy.copyIn("COPY customers (id, name) FROM STDIN", new StringReader("99\tMallory\n"));
                } catch (java.io.IOException e) {
                    throw new SQLException(e);
                }
            }));
            out.put("agent_customers_delta", scalarLong(conn, "SELECT count(*) FROM customers") - customers);
            long agentBefore = scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-agent-copied'");
            copy.copyIn("COPY orders (customer_id, total, status) FROM STDIN",
                    new StringReader("1\t1.00\tjdbc-agent-copied\n"));
            out.put("agent_orders_copied",
                    scalarLong(conn, "SELECT count(*) FROM orders WHERE status = 'jdbc-agent-copied'") - agentBefore);
            out.put("usable_after", usable(conn));
        }
        return out;
    }

    /** Decodes binary COPY data of (int4, text) rows: each row as [id, text or null]. */
    static List<Object> binaryCopyRows(byte[] data) throws java.io.IOException {
        java.io.DataInputStream in = new java.io.DataInputStream(new java.io.ByteArrayInputStream(data));
        byte[] signature = new byte[11];
        in.readFully(signature);
        if (!Arrays.equals(signature, "PGCOPY\n\377\r\n\0".getBytes(StandardCharsets.ISO_8859_1))) {
            throw new java.io.IOException("no binary COPY signature");
        }
        in.readInt();
        in.skipBytes(in.readInt());
        List<Object> rows = new ArrayList<>();
        for (short count = in.readShort(); count != -1; count = in.readShort()) {
            List<Object> row = new ArrayList<>();
            int idLength = in.readInt();
            row.add(idLength == -1 ? null : (long) in.readInt());
            for (int i = 1; i < count; i++) {
                int length = in.readInt();
                if (length == -1) {
                    row.add(null);
                    continue;
                }
                byte[] value = new byte[length];
                in.readFully(value);
                row.add(new String(value, StandardCharsets.UTF_8));
            }
            rows.add(row);
        }
        if (in.available() != 0) {
            throw new java.io.IOException("bytes after the end marker");
        }
        return rows;
    }

    static Map<String, Object> reader() throws SQLException {
        Map<String, Object> out = new LinkedHashMap<>();
        try (Connection conn = connect("reader")) {
            out.put("rows", query(conn, "SELECT id, name, email, ssn FROM customers ORDER BY id"));
            List<Object> values = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement("SELECT ssn FROM customers WHERE id = ?")) {
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        values.add(rs.getString(1));
                    }
                }
            }
            out.put("prepared", values);
        }
        return out;
    }

    // ----------------------------------------------------------------- JSON

    static void json(StringBuilder b, Object v) {
        if (v == null) {
            b.append("null");
        } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long) {
            b.append(v);
        } else if (v instanceof Map) {
            b.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) {
                    b.append(',');
                }
                first = false;
                json(b, String.valueOf(e.getKey()));
                b.append(':');
                json(b, e.getValue());
            }
            b.append('}');
        } else if (v instanceof List) {
            b.append('[');
            boolean first = true;
            for (Object o : (List<?>) v) {
                if (!first) {
                    b.append(',');
                }
                first = false;
                json(b, o);
            }
            b.append(']');
        } else {
            String s = v.toString();
            b.append('"');
            for (int i = 0; i < s.length(); i++) {
                char ch = s.charAt(i);
                switch (ch) {
                    case '"': b.append("\\\""); break;
                    case '\\': b.append("\\\\"); break;
                    case '\n': b.append("\\n"); break;
                    case '\r': b.append("\\r"); break;
                    case '\t': b.append("\\t"); break;
                    default:
                        if (ch < 0x20) {
                            b.append(String.format("\\u%04x", (int) ch));
                        } else {
                            b.append(ch);
                        }
                }
            }
            b.append('"');
        }
    }

    public static void main(String[] args) {
        if (args.length != 5) {
            System.err.println("usage: JdbcClient HOST PORT AGENT_TOKEN READER_TOKEN DEVELOPER_TOKEN");
            System.exit(2);
        }
        host = args[0];
        port = args[1];
        TOKENS.put("agent", args[2]);
        TOKENS.put("reader", args[3]);
        TOKENS.put("developer", args[4]);

        Map<String, Section> sections = new LinkedHashMap<>();
        sections.put("versions", JdbcClient::versions);
        sections.put("read", JdbcClient::read);
        sections.put("prepared", JdbcClient::prepared);
        sections.put("refusals", JdbcClient::refusals);
        sections.put("transaction", JdbcClient::transaction);
        sections.put("batch", JdbcClient::batch);
        sections.put("copy", JdbcClient::copy);
        sections.put("reader", JdbcClient::reader);

        String env = System.getenv("JDBC_SECTIONS");
        List<String> wanted = new ArrayList<>();
        if (env != null) {
            for (String s : env.split(",")) {
                if (!s.isEmpty()) {
                    wanted.add(s);
                }
            }
        }
        for (String w : wanted) {
            if (!sections.containsKey(w)) {
                System.err.println("unknown section in JDBC_SECTIONS: " + w);
                System.exit(2);
            }
        }

        Map<String, Object> results = new LinkedHashMap<>();
        List<String> failed = new ArrayList<>();
        for (Map.Entry<String, Section> e : sections.entrySet()) {
            if (!wanted.isEmpty() && !wanted.contains(e.getKey())) {
                continue;
            }
            try {
                results.put(e.getKey(), e.getValue().run());
            } catch (Exception ex) {
                StringWriter trace = new StringWriter();
                ex.printStackTrace(new PrintWriter(trace));
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("error", trace.toString());
                results.put(e.getKey(), m);
                failed.add(e.getKey());
                System.err.println("section " + e.getKey() + " failed:\n" + trace);
            }
        }
        StringBuilder b = new StringBuilder();
        json(b, results);
        System.out.println(b);
        if (!failed.isEmpty()) {
            System.err.println("JdbcClient: sections failed: " + String.join(", ", failed));
            System.exit(1);
        }
    }
}
