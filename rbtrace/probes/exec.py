"""rbtrace exec: every program execution (probes/exec.bpf.c)."""
import os

from rbtrace import fields
from rbtrace.probes import Column, Probe, cstr, put_text, put_text_list, shown, shown_list

SYSCALLS = ("execve", "execveat", "kernel")

# Mirrors the FLAG_* bits in probes/exec.bpf.c.
ARGS_TRUNCATED = 1
FILENAME_TRUNCATED = 2
FILENAME_FAULT = 4
ARGV_FAULT = 8
ARGC_CAPPED = 16
NO_ARGV = 32


def _args_text(e):
    text = " ".join(shown_list(e, "argv"))
    if e["args_truncated"]:
        text += f" …[{e['argc']} args]"
    return text


class ExecProbe(Probe):
    name = "exec"
    source = "exec.bpf.c"
    event_structs = ("exec_event",)
    columns = (
        Column("TIME", lambda e: e["time"][11:23], width=12),
        Column("PID", lambda e: str(e["pid"]), width=7, justify="right"),
        Column("PPID", lambda e: str(e["ppid"]), width=7, justify="right"),
        Column("USER", lambda e: fields.escape_str(e["user"]), width=8),
        Column("COMM", lambda e: shown(e, "comm"), width=15),
        Column("RET", lambda e: e["errno"] or str(e["ret"]), width=7, justify="right"),
        Column("FILENAME", lambda e: shown(e, "filename"), min_width=10, keep="end"),
        Column("ARGV", _args_text, min_width=10),
    )

    def cflags(self):
        flags = super().cflags()
        o = self.options
        if o.get("max_args"):
            flags["MAX_ARGS"] = o["max_args"]
        if o.get("max_arg_bytes"):
            flags["ARGS_BYTES"] = o["max_arg_bytes"]
        return flags

    def decode(self, event_type, records, offsets, data):
        seq, ts, pid, tid, ppid, uid, comm = self.header_fields(records)
        ret = records["ret"].tolist()
        argc = records["argc"].tolist()
        args_len = records["args_len"].tolist()
        flags = records["flags"].tolist()
        syscall = records["syscall"].tolist()
        dirfd = records["dirfd"].tolist()
        filename = records["filename"].tolist()
        args_off = event_type.dtype.fields["args"][1]
        offs = offsets.tolist()
        clock = self.clock
        out = []
        for i in range(len(seq)):
            f = flags[i]
            alen = args_len[i]
            start = offs[i] + args_off
            raw_args = bytes(data[start:start + alen])
            argv = raw_args.split(b"\0")
            # Complete args end with NUL, leaving an empty last piece; a piece
            # without its NUL was cut by the byte limit.
            if argv and argv[-1] == b"":
                argv.pop()
            e = {
                "type": "exec",
                "seq": seq[i],
                "time": clock.iso(ts[i]),
                "ts_ns": ts[i],
                "pid": pid[i],
                "tid": tid[i],
                "ppid": ppid[i],
                "uid": uid[i],
                "user": fields.user_name(uid[i]),
            }
            put_text(e, "comm", cstr(comm[i]))
            e["syscall"] = SYSCALLS[syscall[i]] if syscall[i] < len(SYSCALLS) else str(syscall[i])
            put_text(e, "filename", cstr(filename[i]))
            put_text_list(e, "argv", argv)
            e.update({
                "argc": argc[i],
                "args_truncated": bool(f & ARGS_TRUNCATED) or len(argv) < argc[i],
                "ret": ret[i],
                "errno": fields.errno_name(ret[i]) or None,
            })
            if syscall[i] == 1:
                e["dirfd"] = dirfd[i]
            if f & (FILENAME_TRUNCATED | FILENAME_FAULT | ARGV_FAULT | ARGC_CAPPED | NO_ARGV):
                e["filename_truncated"] = bool(f & FILENAME_TRUNCATED)
                e["filename_fault"] = bool(f & FILENAME_FAULT)
                e["argv_fault"] = bool(f & ARGV_FAULT)
                e["argc_capped"] = bool(f & ARGC_CAPPED)
                e["argv_unknown"] = bool(f & NO_ARGV)
            out.append(e)
        return out
