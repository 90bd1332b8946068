"""A kind is declared once (issue 15): its module under rbtrace/kinds/, its
probe, its page and its tests, and nothing else in rbtrace names it.

No registry, no table of defaults, no command written by hand: a string
equal to a kind's name, or an import of its module, anywhere in the
package's code outside the kind's own module fails this test.  (Docstrings
and comments may mention a kind; they are not code.)"""
import ast
import os

import pytest

from rbtrace import spec

PACKAGE = os.path.dirname(os.path.abspath(spec.__file__))
REPO = os.path.dirname(PACKAGE)


def _sources():
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _docstrings(tree):
    """The string constants that are docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def mentions(path, kind):
    """Where the code at `path` names `kind`: string constants equal to it
    and imports of rbtrace.kinds.<kind>."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value == kind and id(node) not in docs:
            found.append(node.lineno)
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.module == f"rbtrace.kinds.{kind}" or (
                    node.module == "rbtrace.kinds" and kind in names):
                found.append(node.lineno)
        elif isinstance(node, ast.Import):
            if any(a.name == f"rbtrace.kinds.{kind}" for a in node.names):
                found.append(node.lineno)
    return sorted(found)


def test_kinds_are_the_modules_of_rbtrace_kinds():
    here = sorted(n[:-3] for n in os.listdir(os.path.join(PACKAGE, "kinds"))
                  if n.endswith(".py") and n != "__init__.py")
    assert list(spec.KINDS) == here
    for kind in spec.KINDS:
        assert spec.load(kind).name == kind


@pytest.mark.parametrize("kind", spec.KINDS)
def test_nothing_but_its_own_module_names_a_kind(kind):
    own = os.path.join(PACKAGE, "kinds", f"{kind}.py")
    named = {os.path.relpath(p, REPO): lines for p in _sources() if p != own
             for lines in [mentions(p, kind)] if lines}
    assert not named, f"{kind} is named outside rbtrace/kinds/{kind}.py: {named}"


def test_the_check_sees_a_name_in_code(tmp_path):
    """The test above can fail: a dict keyed by a kind's name, as cli.py's
    DEFAULT_RING was, is seen; the same word in a docstring is not."""
    p = tmp_path / "m.py"
    p.write_text('"""exit"""\nRING = {"exit": "1M"}\nfrom rbtrace.kinds import exit\n')
    assert sorted(mentions(str(p), "exit")) == [2, 3]
