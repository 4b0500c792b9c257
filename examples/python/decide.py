#!/usr/bin/env python3
"""Embedding the Portcullis engine in Python through ctypes.

Load a policy, decide statements for an agent acting for a person, mask a
result row: the same steps as examples/c/decide.c and examples/rust. No
build step beyond the library itself:

    cargo build -p portcullis-ffi
    python3 examples/python/decide.py examples/policy.toml

The library is found at $PORTCULLIS_LIB, else in target/debug or
target/release of this repository.
"""

import ctypes
import os
import sys
from ctypes import POINTER, Structure, byref, c_char_p, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OK = 0
VERDICTS = {1: "allow", 2: "deny", 3: "require_approval"}


class Str(Structure):
    """portcullis_str: borrowed bytes, valid while their handle lives."""

    _fields_ = [("data", c_void_p), ("len", c_size_t)]

    def text(self):
        return None if not self.data else ctypes.string_at(self.data, self.len).decode()


class Column(Structure):
    _fields_ = [
        ("name", c_char_p), ("name_len", c_size_t),
        ("source", c_char_p), ("source_len", c_size_t),
        ("type_oid", c_uint32), ("binary", c_uint8),
    ]


class Cell(Structure):
    _fields_ = [("data", c_void_p), ("len", c_size_t), ("is_null", c_uint8)]


# One pointer type per handle: ctypes then refuses a decision where an
# engine is expected, instead of handing the library the wrong object.
class _Engine(Structure):
    pass


class _Identity(Structure):
    pass


class _Session(Structure):
    pass


class _Decision(Structure):
    pass


class _Masker(Structure):
    pass


EngineP, IdentityP, SessionP, DecisionP, MaskerP = (POINTER(t) for t in (_Engine, _Identity, _Session, _Decision, _Masker))


class PortcullisError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{message} (code {code})")
        self.code = code


def load_library():
    candidates = [os.environ.get("PORTCULLIS_LIB")] + [
        os.path.join(ROOT, "target", profile, name)
        for profile in ("debug", "release")
        for name in ("libportcullis.so", "libportcullis.dylib")
    ]
    for path in candidates:
        if path and os.path.exists(path):
            lib = ctypes.CDLL(path)
            break
    else:
        sys.exit("error: libportcullis not found: run `cargo build -p portcullis-ffi` or set PORTCULLIS_LIB")
    signatures = {
        "portcullis_error": (None, [c_uint32, ctypes.c_char_p, c_size_t, POINTER(c_size_t)]),
        "portcullis_engine_new": (c_uint32, [c_char_p, c_size_t, c_char_p, c_size_t, c_char_p, c_size_t, POINTER(EngineP)]),
        "portcullis_engine_free": (None, [EngineP]),
        "portcullis_identity_new": (c_uint32, [c_char_p, c_size_t, POINTER(IdentityP)]),
        "portcullis_identity_free": (None, [IdentityP]),
        "portcullis_decide": (c_uint32, [EngineP, IdentityP, SessionP, c_char_p, c_size_t, POINTER(DecisionP)]),
        "portcullis_decision_verdict": (c_uint32, [DecisionP]),
        "portcullis_decision_rule": (Str, [DecisionP]),
        "portcullis_decision_reason": (Str, [DecisionP]),
        "portcullis_decision_max_rows": (c_uint64, [DecisionP]),
        "portcullis_decision_json": (Str, [DecisionP]),
        "portcullis_decision_free": (None, [DecisionP]),
        "portcullis_masker_new": (
            c_uint32,
            [EngineP, IdentityP, DecisionP, c_size_t, POINTER(Column), c_size_t, POINTER(MaskerP)],
        ),
        "portcullis_mask_row": (
            c_uint32,
            [MaskerP, POINTER(Cell), c_size_t, c_void_p, c_size_t, POINTER(c_size_t), POINTER(c_size_t)],
        ),
        "portcullis_masker_free": (None, [MaskerP]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


LIB = load_library()


def check(code):
    if code != OK:
        buf = ctypes.create_string_buffer(1024)
        LIB.portcullis_error(code, buf, len(buf), None)
        raise PortcullisError(code, buf.value.decode())


class Engine:
    def __init__(self, policy_text, name="policy.toml"):
        text, label = policy_text.encode(), name.encode()
        self._h = EngineP()
        check(LIB.portcullis_engine_new(text, len(text), label, len(label), None, 0, byref(self._h)))

    def __del__(self):
        LIB.portcullis_engine_free(self._h)

    def decide(self, identity, sql):
        raw = sql.encode()
        d = DecisionP()
        check(LIB.portcullis_decide(self._h, identity._h, None, raw, len(raw), byref(d)))
        return Decision(d)


class Identity:
    def __init__(self, json_text):
        raw = json_text.encode()
        self._h = IdentityP()
        check(LIB.portcullis_identity_new(raw, len(raw), byref(self._h)))

    def __del__(self):
        LIB.portcullis_identity_free(self._h)


class Decision:
    def __init__(self, handle):
        self._h = handle
        self.verdict = VERDICTS.get(LIB.portcullis_decision_verdict(handle), "deny")
        self.rule = LIB.portcullis_decision_rule(handle).text()
        self.reason = LIB.portcullis_decision_reason(handle).text()
        self.max_rows = LIB.portcullis_decision_max_rows(handle)
        self.json = LIB.portcullis_decision_json(handle).text()

    def __del__(self):
        LIB.portcullis_decision_free(self._h)

    def mask_row(self, engine, identity, columns, values):
        """Masks one row of this decision's first statement; columns are (name, source)."""
        cols = (Column * len(columns))()
        keep = []
        for i, (name, source) in enumerate(columns):
            n, s = name.encode(), source.encode()
            keep += [n, s]
            cols[i] = Column(n, len(n), s, len(s), 25, 0)
        masker = MaskerP()
        check(LIB.portcullis_masker_new(engine._h, identity._h, self._h, 0, cols, len(columns), byref(masker)))
        try:
            raw = [None if v is None else v.encode() for v in values]
            cells = (Cell * len(raw))()
            for i, v in enumerate(raw):
                cells[i] = Cell(None, 0, 1) if v is None else Cell(ctypes.cast(c_char_p(v), c_void_p), len(v), 0)
            size = 256
            while True:
                buf = ctypes.create_string_buffer(size)
                used, changed = c_size_t(), c_size_t()
                code = LIB.portcullis_mask_row(masker, cells, len(raw), buf, size, byref(used), byref(changed))
                if code != 1003:  # PORTCULLIS_RESULT_INSUFFICIENT_SIZE: grow and try again
                    break
                size *= 2
            check(code)
            out = [None if c.is_null else ctypes.string_at(c.data, c.len).decode() for c in cells]
            return changed.value, out
        finally:
            LIB.portcullis_masker_free(masker)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "examples", "policy.toml")
    with open(path, encoding="utf-8") as f:
        try:
            engine = Engine(f.read(), path)
        except PortcullisError as e:
            sys.exit(f"error: {e}")
    # An agent acting for a person, as a verified token would name it.
    agent = Identity('{"subject": "alice@example.com", "groups": ["ai-agents"], "actor": "copilot-7"}')
    for sql in [
        "SELECT id, total FROM orders WHERE customer_id = 42",
        "DROP TABLE orders",
        "DELETE FROM orders WHERE id = 7",
        "SELECT * FROM orders; SELECT api_key FROM secrets",
    ]:
        d = engine.decide(agent, sql)
        print(f"{d.verdict:<16} {d.rule or '-':<28} {sql}")

    d = engine.decide(agent, "SELECT name, email, ssn, note FROM customers")
    columns = [(c, f"public.customers.{c}") for c in ("name", "email", "ssn", "note")]
    changed, row = d.mask_row(
        engine, agent, columns, ["Alice Martin", "alice@example.com", "123-45-6789", "card on file: 4012888888881881"]
    )
    print(f"masked {changed} of {len(row)}: " + " | ".join("NULL" if v is None else v for v in row))


if __name__ == "__main__":
    main()
