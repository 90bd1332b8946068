"""The package carries its probes and man pages, and finds them installed."""
import glob
import os
import subprocess
import sys
import zipfile


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


def test_installed_probes_are_found_under_the_prefix(tmp_path):
    """A wheel installed in a venv (not editable: as a container image
    installs it) finds its own probes where the wheel put them."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), REPO], check=True, capture_output=True, timeout=300)
    (wheel,) = glob.glob(str(tmp_path / "rbtrace-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True, timeout=300)
    # rbtrace.paths imports nothing beyond the standard library
    p = subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                        "from rbtrace import paths; print(paths.probes_dir())"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    found = p.stdout.strip()
    assert found.startswith(str(venv) + "/") and "site-packages" not in found, found
    assert sorted(os.listdir(found)) == sorted(os.listdir(os.path.join(REPO, "probes")))
