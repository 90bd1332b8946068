"""Where rbtrace's data files are: the BCC C probes and the man pages.

In a source checkout (and an editable install) they sit at the top of the
tree beside the package; an installed package has them under
<prefix>/share/rbtrace (setup.cfg's data_files: the probes in kinds/, as
rbtrace-run(8) says).
"""
import os
import sys
from pathlib import Path

_SOURCE_TOP = Path(__file__).resolve().parent.parent


def probes_dir() -> Path:
    override = os.environ.get("RBTRACE_PROBES_DIR")   # for probe development
    candidates = [Path(override)] if override else [
        _SOURCE_TOP / "probes", Path(sys.prefix) / "share" / "rbtrace" / "kinds"]
    for candidate in candidates:
        if (candidate / "common.h").is_file():
            return candidate
    from rbtrace.errors import EnvironmentProblem
    from rbtrace.fields import for_message
    if override:
        raise EnvironmentProblem(f"RBTRACE_PROBES_DIR={for_message(override)} has no common.h",
                                 hint="point it at a copy of rbtrace's probes/ directory")
    raise EnvironmentProblem("rbtrace's probe sources (probes/common.h) are not installed",
                             hint="reinstall rbtrace (make setup)")


def cache_dir() -> Path:
    """rbtrace's cache (compiled probes, kernel type trees, merged header
    trees, BTF offsets): $RBTRACE_CACHE_DIR; else /var/cache/rbtrace for
    root, and for another user (with the capabilities) one of their own,
    $XDG_CACHE_HOME/rbtrace or ~/.cache/rbtrace: root's is closed to them."""
    if os.environ.get("RBTRACE_CACHE_DIR"):
        return Path(os.environ["RBTRACE_CACHE_DIR"])
    if os.geteuid() == 0:
        return Path("/var/cache/rbtrace")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "rbtrace"
    return Path(os.path.expanduser("~")) / ".cache" / "rbtrace"
