"""The JSON schema of the output lines (rbtrace schema, and the shipped
schema/rbtrace-events.schema.json), made from the kinds' specs
(rbtrace/spec.py): a valid schema, current, covering every declared kind
and the run's own lines as the engine writes them.  No root needed; real
output is checked by tests/kernel/test_schema_lines.py."""
import io
import json
import os
import subprocess
import sys

import jsonschema
import pytest

import schemacheck
import test_docs as docs
from rbtrace import mandoc, spec

DECLARED = [s.name for s in spec.declared()]


def _rbtrace(*args):
    return subprocess.run([sys.executable, "-m", "rbtrace", *args], capture_output=True,
                          text=True, timeout=60, cwd=docs.REPO)


def test_the_shipped_schema_is_current():
    with open(mandoc.SCHEMA_FILE, encoding="utf-8") as f:
        shipped = f.read()
    assert shipped == mandoc.schema_text(), \
        f"{mandoc.SCHEMA_FILE} is not what the specs make now: run `make man`"


def test_rbtrace_schema_prints_the_shipped_schema():
    p = _rbtrace("schema")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    with open(mandoc.SCHEMA_FILE, encoding="utf-8") as f:
        assert p.stdout == f.read()


def test_the_schema_is_a_valid_2020_12_schema_of_every_declared_kind():
    doc = json.loads(_rbtrace("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert set(doc["$defs"]) == {"start", "lost", "summary", *DECLARED}
    assert [r["$ref"] for r in doc["oneOf"]] == [f"#/$defs/{n}" for n in doc["$defs"]]
    for name in DECLARED:
        props = doc["$defs"][name]["properties"]
        assert list(props) == list(spec.load(name).json_fields), "members in output order"
        assert all(p.get("description") for p in props.values()), "every member described"
        assert doc["$defs"]["start"]["properties"]["probe"]["enum"] == DECLARED


@pytest.mark.parametrize("kind", DECLARED)
def test_rbtrace_schema_kind_is_that_kinds_lines_alone(kind):
    p = _rbtrace("schema", kind)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert set(doc["$defs"]) == {"start", "lost", "summary", kind}
    assert doc["$defs"]["summary"]["properties"]["probe"]["const"] == kind


def test_a_bad_kind_is_one_line_and_exit_2():
    p = _rbtrace("schema", "nosuch")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "no kind 'nosuch'" in p.stderr, p.stderr



def _engine_lines():
    """start, lost and summary lines as the engine writes them (JsonRenderer),
    from the fakes test_docs uses: plain, following `-- CMD`, following a pid."""
    from rbtrace import render
    from rbtrace.follow import Command, RunningProcess
    from rbtrace.session import Session
    probe = docs.codec_for(docs.probe_commands()[0])
    buf = io.BytesIO()
    out = render.JsonRenderer(buf, None)
    from rbtrace.fields import identity
    out.start({"probe": DECLARED[0], **identity(), "ring_bytes": 1 << 20,
               "filters": "comm=make failed container=3f2a"})
    running = RunningProcess(os.getpid())
    try:
        for target in (None, Command(["true"]), running):
            recorder = docs._Recorder()
            session = Session(probe, recorder, None, None, follow=target)
            session.started = 0.0
            summary = session._summary(docs._FakeLoaded())
            summary["probe"] = DECLARED[0]
            for record in recorder.lost_records:
                out.lost(record)
            out.close(summary)
    finally:
        running.close()
    return [json.loads(ln) for ln in buf.getvalue().splitlines()]


def test_the_engines_own_lines_are_valid():
    lines = _engine_lines()
    assert {ln["type"] for ln in lines} == {"start", "lost", "summary"}
    assert any("command" in ln for ln in lines) and any("followed_root" in ln for ln in lines)
    schemacheck.check(lines, "start/lost/summary lines of the engine")


def test_the_schema_declares_every_member_of_the_engines_lines():
    """Both ways: a member the engine writes and the schema lacks is
    refused by additionalProperties; one the schema requires and the
    engine never writes is caught here."""
    doc = schemacheck.document()
    for line_type, members in docs.envelope_fields().items():
        declared = set(doc["$defs"][line_type]["properties"])
        assert members == declared, (line_type, sorted(members ^ declared))


def test_a_line_with_an_undeclared_or_wrong_member_is_refused():
    good = {"type": "lost", "dropped": 1, "ringbuf_full": 1, "map_full": 0,
            "missed_by_kernel": 0, "not_followed": 0, "total_dropped": 1,
            "total_missed_by_kernel": 0}
    assert schemacheck.problems(good) == []
    assert schemacheck.problems({**good, "extra": 1})
    assert schemacheck.problems({**good, "dropped": -1})
    missing = dict(good)
    del missing["total_dropped"]
    assert schemacheck.problems(missing)
    assert schemacheck.problems({"type": "nosuch"})
