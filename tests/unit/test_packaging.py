"""The package carries its probes and man pages, and finds them installed."""
import glob
import os
import subprocess
import sys
import zipfile

from rbtrace import paths

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wheel_installs_probes_examples_and_man_pages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), REPO], check=True, capture_output=True, timeout=300)
    (wheel,) = glob.glob(str(tmp_path / "rbtrace-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [n.split("/data/", 1)[1] for n in names if "/data/" in n]
    for page in os.listdir(os.path.join(REPO, "man")):
        assert f"share/man/man8/{page}" in data
    for src in os.listdir(os.path.join(REPO, "probes")):
        assert f"share/rbtrace/kinds/{src}" in data
    for example in os.listdir(os.path.join(REPO, "examples")):
        assert f"share/rbtrace/examples/{example}" in data     # rbtrace-run(8) points there


def test_installed_probes_are_found_under_the_prefix(tmp_path, monkeypatch):
    installed = tmp_path / "share" / "rbtrace" / "probes"
    installed.mkdir(parents=True)
    (installed / "common.h").write_text("")
    monkeypatch.setattr(paths, "_SOURCE_TOP", tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.delenv("RBTRACE_PROBES_DIR", raising=False)
    assert paths.probes_dir() == installed
