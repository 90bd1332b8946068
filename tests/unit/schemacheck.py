"""Output lines checked against the shipped JSON schema
(schema/rbtrace-events.schema.json, what `rbtrace schema` prints; made by
`make man` from the kinds' specs).  Used by the unit decode tests and by
tests/kernel/test_schema_lines.py on real output."""
import json
import os

import jsonschema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA_FILE = os.path.join(REPO, "schema", "rbtrace-events.schema.json")

_cache = {}


def document() -> dict:
    if "doc" not in _cache:
        with open(SCHEMA_FILE, encoding="utf-8") as f:
            _cache["doc"] = json.load(f)
    return _cache["doc"]


def _validator(schema):
    cls = jsonschema.Draft202012Validator
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def problems(line: dict) -> list:
    """What is wrong with one line: [] when it is valid.  The line is
    checked against its own type's schema (for messages that say which
    member is wrong), then against the whole document (its oneOf)."""
    doc = document()
    kind = line.get("type")
    if kind not in doc["$defs"]:
        return [f"type {kind!r} is not one of the schema's {sorted(doc['$defs'])}"]
    own = {"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": f"#/$defs/{kind}"}
    found = [f"{'/'.join(map(str, e.absolute_path)) or '(line)'}: {e.message}"
             for e in _validator(own).iter_errors(line)]
    if not found:
        found = [e.message for e in _validator(doc).iter_errors(line)]
    return found


def check(lines, what="output"):
    """Every line valid, or an AssertionError naming the first bad ones."""
    bad = [(line, p) for line in lines for p in [problems(line)] if p]
    assert not bad, f"{what}: {len(bad)} line(s) not valid against {SCHEMA_FILE}: " + \
        "; ".join(f"{p} in {str(line)[:300]}" for line, p in bad[:3])
