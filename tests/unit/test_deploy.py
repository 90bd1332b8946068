"""deploy/ (issue 18, item 5): every manifest and config parses; the rbtrace
command line in the DaemonSet parses with rbtrace's own click CLI (options,
types and values, without running); its hostPath mounts cover what rbtrace
and `rbtrace doctor` use, named from rbtrace's own constants; the shippers'
configs read the file the DaemonSet writes; the Dockerfile copies all that
setup.cfg builds the package from."""
import configparser
import glob
import os
import re
import shlex
import urllib.parse

import click
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")


def _yaml_files():
    return sorted(glob.glob(os.path.join(DEPLOY, "**", "*.yaml"), recursive=True)
                  + glob.glob(os.path.join(DEPLOY, "**", "*.yml"), recursive=True))


def _load(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def test_deploy_holds_the_recipes():
    names = {os.path.relpath(p, DEPLOY) for p in glob.glob(os.path.join(DEPLOY, "**", "*"),
                                                           recursive=True)}
    assert {"Dockerfile", "README.md", "kubernetes/rbtrace-daemonset.yaml", "otel-collector.yaml",
            "vector.yaml", "fluent-bit.yaml"} <= names, names


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: os.path.relpath(p, DEPLOY))
def test_every_yaml_file_parses(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), path


def test_every_toml_file_parses():
    import tomllib
    for path in glob.glob(os.path.join(DEPLOY, "**", "*.toml"), recursive=True):
        with open(path, "rb") as f:
            assert tomllib.load(f), path


# --- the DaemonSet ------------------------------------------------------------------

def _daemonset():
    docs = _load("kubernetes/rbtrace-daemonset.yaml")
    (ds,) = [d for d in docs if d.get("kind") == "DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    return ds


def _container():
    (c,) = _daemonset()["spec"]["template"]["spec"]["containers"]
    return c


def _expand(word, env):
    """Kubernetes' $(VAR) in command and args: the container's env value."""
    def sub(m):
        assert m.group(1) in env, f"$({m.group(1)}) is not in the container's env"
        return env[m.group(1)]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, word)


def _entrypoint():
    """The image's ENTRYPOINT, from deploy/Dockerfile (exec form)."""
    import json
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        (line,) = [ln for ln in f if ln.startswith("ENTRYPOINT")]
    return json.loads(line.split(None, 1)[1])


def daemonset_argv():
    c = _container()
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    argv = c.get("command") or _entrypoint()
    argv = list(argv) + list(c.get("args", []))
    return [_expand(str(w), env) for w in argv]


def parse_rbtrace(argv):
    """rbtrace's own click CLI parses argv (a command and its options, their
    types and values converted) without running anything; returns (command
    name, its parameters).  Raises click's error for a bad command line."""
    from rbtrace.cli import cli
    ctx = cli.make_context("rbtrace", list(argv))
    with ctx:
        name, cmd, rest = cli.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        sub = cmd.make_context(name, rest, parent=ctx)
    return name, sub.params


def test_the_parser_refuses_what_rbtrace_refuses():
    """parse_rbtrace is not a formality: a bad value or an unknown option fails."""
    name, params = parse_rbtrace(["trace", "exec,open", "--json", "-o", "/tmp/x",
                                  "--rotate-size", "64M"])
    assert name == "trace" and params["rotate_size"] == 64 << 20 and params["json_out"]
    with pytest.raises(click.BadParameter):
        parse_rbtrace(["trace", "exec", "--rotate-size", "0"])
    with pytest.raises(click.NoSuchOption):
        parse_rbtrace(["trace", "exec", "--no-such-option"])
    with pytest.raises(click.UsageError):
        parse_rbtrace(["no-such-command"])


def test_the_daemonsets_command_line_parses_with_rbtraces_cli():
    from rbtrace import trace
    argv = daemonset_argv()
    assert argv[0] == "rbtrace", argv
    name, params = parse_rbtrace(argv[1:])
    assert name == "trace"
    names, _ = trace.parse_kinds(params["kinds"])
    assert names == ["exec", "open", "exit", "tcp"]
    assert params["json_out"] is True
    # --otlp (issue 18, item 3) to the collector's OTLP/HTTP receiver
    url = urllib.parse.urlsplit(params["otlp"])
    assert url.scheme == "http" and url.hostname and url.port == 4318, params["otlp"]
    # rotated files for a shipper: what the CLI checks after parsing
    assert params["output"] and params["rotate_size"] and params["rotate_keep"] is not None


def test_the_daemonset_is_privileged_in_the_hosts_pid_namespace_with_limits():
    spec = _daemonset()["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    c = _container()
    assert c["securityContext"]["privileged"] is True
    res = c["resources"]
    from rbtrace.fields import parse_size
    mem = {k: parse_size(res[k]["memory"].replace("Mi", "M").replace("Gi", "G"))
           for k in ("requests", "limits")}
    assert 0 < mem["requests"] <= mem["limits"], res
    cpu = {k: float(res[k]["cpu"].rstrip("m")) / (1000 if res[k]["cpu"].endswith("m") else 1)
           for k in ("requests", "limits")}
    assert 0 < cpu["requests"] <= cpu["limits"], res


def _host_mounts():
    """{mount path: (host path, read only)} of the container's hostPath volumes."""
    spec = _daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for m in _container()["volumeMounts"]:
        v = volumes[m["name"]]
        if "hostPath" in v:
            out[m["mountPath"]] = (v["hostPath"]["path"], m.get("readOnly", False))
    return out


def _covered(path, mounts):
    """The mount that shows the host's `path` at the same path, or None."""
    for mount, (host, _) in mounts.items():
        if host == mount and (path == mount or path.startswith(mount.rstrip("/") + "/")):
            return mount
    return None


def required_host_paths(monkeypatch):
    """What rbtrace and rbtrace doctor read on the host, named by rbtrace's
    own constants: BTF, tracefs (under debugfs, and on its own), the cgroup
    v2 file system, and root's compile cache (the image runs as root)."""
    from rbtrace import btf, kernel, paths
    c = _container()
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    monkeypatch.delenv("RBTRACE_CACHE_DIR", raising=False)
    if "RBTRACE_CACHE_DIR" in env:
        monkeypatch.setenv("RBTRACE_CACHE_DIR", env["RBTRACE_CACHE_DIR"])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    need = {"BTF": btf.VMLINUX, "tracefs under debugfs": str(kernel.TRACEFS_UNDER_DEBUGFS),
            "tracefs": str(kernel.TRACEFS), "compile cache": str(paths.cache_dir()),
            # cgroup v2: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified
            # on a hybrid one like this project's (rbtrace/cgroups.py finds it).
            "cgroup": "/sys/fs/cgroup"}
    try:
        from rbtrace import cgroups         # identity and --cgroup (issue 18, items 1-2)
    except ImportError:
        cgroups = None
    if cgroups is not None and hasattr(cgroups, "v2_mount"):
        found = cgroups.v2_mount()
        if found:
            need["cgroup v2 here"] = str(found)
    return need


def test_the_host_mounts_cover_what_rbtrace_and_doctor_use(monkeypatch):
    mounts = _host_mounts()
    need = required_host_paths(monkeypatch)
    missing = {what: p for what, p in need.items() if _covered(p, mounts) is None}
    assert not missing, f"not mounted from the host: {missing}; mounts: {mounts}"
    # the kernel's files are read, never written; tracefs may be mounted on
    for what in ("BTF", "cgroup"):
        assert mounts[_covered(need[what], mounts)][1] is True, what
    assert mounts[_covered(need["compile cache"], mounts)][1] is False


def test_the_rotated_files_are_on_the_host_where_the_shippers_read_them():
    _, params = parse_rbtrace(daemonset_argv()[1:])
    out = params["output"]
    mount = _covered(out, _host_mounts())
    assert mount is not None and not _host_mounts()[mount][1], (out, _host_mounts())
    # Vector's file source and Fluent Bit's tail input read that file
    (vector,) = _load("vector.yaml")
    files = [s for s in vector["sources"].values() if s["type"] == "file"]
    assert [s["include"] for s in files] == [[out]]
    (fluent,) = _load("fluent-bit.yaml")
    tails = [i for i in fluent["pipeline"]["inputs"] if i["name"] == "tail"]
    assert [t["path"] for t in tails] == [out]


# --- the shippers' configs ----------------------------------------------------------

def test_the_collector_takes_otlp_over_http_for_logs_on_the_daemonsets_port():
    (cfg,) = _load("otel-collector.yaml")
    http = cfg["receivers"]["otlp"]["protocols"]["http"]
    _, params = parse_rbtrace(daemonset_argv()[1:])
    assert http["endpoint"].rsplit(":", 1)[1] == str(urllib.parse.urlsplit(params["otlp"]).port)
    logs = cfg["service"]["pipelines"]["logs"]
    assert "otlp" in logs["receivers"]
    assert logs["exporters"] and set(logs["exporters"]) <= set(cfg["exporters"])
    assert set(logs.get("processors", [])) <= set(cfg.get("processors", {}))
    assert {"debug", "otlp"} <= set(cfg["exporters"])


def test_vectors_components_are_wired_to_each_other():
    (cfg,) = _load("vector.yaml")
    defined = set(cfg["sources"]) | set(cfg.get("transforms", {}))
    for kind in ("transforms", "sinks"):
        for name, c in cfg.get(kind, {}).items():
            assert c["inputs"] and set(c["inputs"]) <= defined, (kind, name)
    assert cfg["sinks"]
    (src,) = cfg["sources"].values()
    # a restarted rbtrace's first line is the same again: not a checksum
    assert src["fingerprint"]["strategy"] == "device_and_inode"


def test_fluent_bits_tail_parses_json_lines_and_its_tag_reaches_an_output():
    (cfg,) = _load("fluent-bit.yaml")
    parsers = {p["name"]: p for p in cfg["parsers"]}
    (tail,) = [i for i in cfg["pipeline"]["inputs"] if i["name"] == "tail"]
    assert parsers[tail["parser"]]["format"] == "json"
    tag = tail["tag"]
    for section in ("filters", "outputs"):
        for item in cfg["pipeline"].get(section, []):
            assert re.fullmatch(item["match"].replace("*", ".*"), tag), item
    assert cfg["pipeline"]["outputs"]


# --- the image ----------------------------------------------------------------------

def _dockerfile():
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_image_is_debian_with_bcc_and_runs_rbtrace_as_root():
    lines = _dockerfile()
    (base,) = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert base.startswith("debian:"), base
    installs = " ".join(ln for ln in lines if "apt-get install" in ln)
    assert "python3-bpfcc" in installs.split()
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users in ([], ["root"]) or users[-1] in ("root", "0")
    assert _entrypoint() == ["rbtrace"]
    # the venv sees Debian's BCC
    assert any("venv --system-site-packages" in ln for ln in lines)


def test_the_image_copies_all_that_the_package_is_built_from():
    lines = _dockerfile()
    copied = set()
    for ln in lines:
        if ln.startswith("COPY "):
            *sources, _ = shlex.split(ln)[1:]
            copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    for s in copied:
        assert os.path.exists(os.path.join(REPO, s)), s
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    need = {"setup.cfg", "pyproject.toml"}
    need.add(cfg["metadata"]["long_description"].split("file:", 1)[1].strip())
    need.update(cfg["options.packages.find"]["include"].split(",")[0].strip().split(".")[:1])
    for value in cfg["options.data_files"].values():
        for pattern in value.split(","):
            need.add(pattern.strip().split("/")[0])
    assert need <= copied, f"the image lacks {need - copied}"
    # and the build context keeps them (deploy/Dockerfile.dockerignore)
    with open(os.path.join(DEPLOY, "Dockerfile.dockerignore")) as f:
        rules = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    if "*" in rules:
        kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
        assert copied <= kept, copied - kept
