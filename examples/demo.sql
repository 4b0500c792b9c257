-- The sample schema of `pg-proxy demo` and of the gateway's tests: a small
-- shop with planted PII (names, e-mail addresses, SSNs, card numbers, one
-- hidden in free text) and a table that is never readable.

CREATE TABLE customers (
    id    int PRIMARY KEY,
    name  text NOT NULL,
    email text,
    ssn   text,
    card  text,
    note  text
);

INSERT INTO customers VALUES
    (1, 'Alice Martin', 'alice@example.com', '123-45-6789', '4111 1111 1111 1111', 'prefers e-mail'),
    (2, 'Bob Chen',     'bob@example.org',   '234-56-7890', '5500 0000 0000 0004', 'card on file: 4012888888881881'),
    (3, 'Carol Diaz',   'carol@example.net', '345-67-8901', '3400 000000 00009',   'VIP since 2019');

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id int REFERENCES customers,
    total       numeric(10, 2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT '2024-01-15 10:30:00+00'
);

INSERT INTO orders (customer_id, total, status)
SELECT 1 + g % 3, (g % 500) + 0.99, CASE WHEN g % 7 = 0 THEN 'refunded' ELSE 'shipped' END
FROM generate_series(1, 5000) AS g;

CREATE TABLE secrets (
    id      int PRIMARY KEY,
    api_key text NOT NULL
);

INSERT INTO secrets VALUES (1, 'AKIAIOSFODNN7EXAMPLE');
