"""A JSON codec for Python test values (EvalPlus inputs and outputs).

Plain JSON values decode as themselves, so EvalPlus's `base_input` lists can be used directly. Values
JSON cannot tell apart are tagged objects `{"__rlef__": kind, "v": ...}`: tuples, sets, frozensets,
dicts with non-string keys, complex numbers, bytes, non-finite floats, and anything else (kept as its
repr, which compares equal only to the same type and repr). Decoding never executes code, so the host
can safely read values produced by untrusted programs.

This module must stay standard-library-only: the sandbox runner loads its source directly.
"""
import json
import math

TAG = "__rlef__"
_MAX_DEPTH = 200


class Opaque:
    """A value of a type the codec does not model, known only by its type name and repr."""

    __slots__ = ("type_name", "text")

    def __init__(self, type_name, text):
        self.type_name, self.text = type_name, text

    def __eq__(self, other):
        return isinstance(other, Opaque) and (self.type_name, self.text) == (other.type_name, other.text)

    def __hash__(self):
        return hash((self.type_name, self.text))

    def __repr__(self):
        return self.text


def encode(x, depth=0):
    """Python value -> JSON-able structure (see module docstring)."""
    if depth > _MAX_DEPTH:
        return {TAG: "repr", "type": type(x).__name__, "v": "<too deeply nested>"}
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if x.bit_length() < 4000 else {TAG: "int", "v": hex(x)}
    if t is float:
        if math.isfinite(x):
            return x
        return {TAG: "float", "v": repr(x)}
    if t is list:
        return [encode(i, depth + 1) for i in x]
    if t is tuple:
        return {TAG: "tuple", "v": [encode(i, depth + 1) for i in x]}
    if t is set or t is frozenset:
        items = [encode(i, depth + 1) for i in x]
        items.sort(key=lambda e: json.dumps(e, sort_keys=True))
        return {TAG: t.__name__, "v": items}
    if t is dict:
        if all(type(k) is str for k in x) and TAG not in x:
            return {k: encode(v, depth + 1) for k, v in x.items()}
        return {TAG: "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is complex:
        return {TAG: "complex", "v": [encode(x.real), encode(x.imag)]}
    if t is bytes:
        return {TAG: "bytes", "v": x.hex()}
    if getattr(t, "__module__", "") == "numpy" and hasattr(x, "tolist"):
        return encode(x.tolist(), depth + 1)
    try:
        text = repr(x)
    except BaseException:
        text = f"<{t.__name__} object>"
    return {TAG: "repr", "type": t.__name__, "v": text[:2000]}


def decode(j):
    """Inverse of `encode`."""
    if isinstance(j, list):
        return [decode(i) for i in j]
    if not isinstance(j, dict):
        return j
    kind = j.get(TAG)
    if kind is None:
        return {k: decode(v) for k, v in j.items()}
    v = j.get("v")
    if kind == "tuple":
        return tuple(decode(i) for i in v)
    if kind == "set":
        return set(decode(i) for i in v)
    if kind == "frozenset":
        return frozenset(decode(i) for i in v)
    if kind == "dict":
        return {decode(k): decode(val) for k, val in v}
    if kind == "int":
        return int(v, 16)
    if kind == "float":
        return float(v)
    if kind == "complex":
        return complex(decode(v[0]), decode(v[1]))
    if kind == "bytes":
        return bytes.fromhex(v)
    if kind == "repr":
        return Opaque(j.get("type", "object"), v)
    raise ValueError(f"unknown codec tag {kind!r}")


def safe_repr(x):
    """repr() that survives ints past Python's 4300-digit str conversion limit."""
    try:
        return repr(x)
    except ValueError:
        return f"<{type(x).__name__}: too many digits to show>"


def dumps(x):
    return json.dumps(encode(x), allow_nan=False)


def loads(s):
    return decode(json.loads(s))
