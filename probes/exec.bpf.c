/* rbtrace exec: every program execution, with its result.
 *
 * sys_enter_execve / sys_enter_execveat  capture filename and argv while
 *     the caller's memory still exists, keyed by tid.
 * sched:sched_process_exec  success: emit.  A non-leader thread that
 *     execs takes over the leader's pid, so the entry is found by old_pid.
 * sys_exit_execve / sys_exit_execveat  failure (ret < 0): emit.
 * An exec started inside the kernel (usermode helpers) has no syscall
 * entry: it is emitted from sched_process_exec with FLAG_NO_ARGV.
 */
#include "common.h"

#ifndef MAX_ARGS
#define MAX_ARGS 64                /* arguments captured */
#endif
#ifndef ARGS_BYTES
#define ARGS_BYTES 4096            /* bytes of argv captured, NULs included */
#endif
#ifndef ARGC_COUNT_MAX
#define ARGC_COUNT_MAX 4000        /* argv pointers counted for argc */
#endif
#define FILENAME_BYTES 4096        /* PATH_MAX */

#define SYSCALL_EXECVE 0
#define SYSCALL_EXECVEAT 1
#define SYSCALL_KERNEL 2

#define FLAG_ARGS_TRUNCATED 1      /* argc > captured args, or bytes cut */
#define FLAG_FILENAME_TRUNCATED 2
#define FLAG_FILENAME_FAULT 4      /* filename pointer unreadable */
#define FLAG_ARGV_FAULT 8          /* an argv pointer or string unreadable */
#define FLAG_ARGC_CAPPED 16        /* argc >= ARGC_COUNT_MAX, not exact */
#define FLAG_NO_ARGV 32            /* exec from the kernel: argv unknown */

struct exec_args {
    u64 enter_ns;
    u32 argc;
    u32 args_len;                  /* bytes used in args[] */
    u32 flags;
    u32 syscall;
    s32 dirfd;                     /* execveat only */
    s32 at_flags;                  /* execveat only */
    char filename[FILENAME_BYTES];
    char args[ARGS_BYTES];         /* argv strings, each NUL-terminated */
};

struct exec_event {
    struct rb_header h;
    s32 ret;
    u32 pad;
    struct exec_args a;
};

/* Built here, then copied into `pending`.  The spill area lets the last
 * argument be read with a constant maximum size whatever its offset: the
 * verifier cannot relate "offset + size <= ARGS_BYTES" on its own. */
struct exec_scratch {
    struct exec_args a;
    char spill[ARGS_BYTES];
};

RBTRACE_EVENT(exec_event);

BPF_PERCPU_ARRAY(scratch, struct exec_scratch, 1);
/* Not preallocated: in-flight execs are few, entries are ~8 KiB. */
BPF_F_TABLE("hash", u32, struct exec_args, pending, 4096, BPF_F_NO_PREALLOC);

static __always_inline int enter(const char *filename, const char *const *argv,
                                 u32 syscall, s32 dirfd, s32 at_flags)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!task_wanted(pid_tgid, uid))
        return 0;

    int zero = 0;
    struct exec_scratch *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    struct exec_args *a = &s->a;
    a->enter_ns = bpf_ktime_get_ns();
    a->flags = 0;
    a->syscall = syscall;
    a->dirfd = dirfd;
    a->at_flags = at_flags;

    int n = bpf_probe_read_user_str(a->filename, sizeof(a->filename), filename);
    if (n < 0) {
        a->filename[0] = 0;
        a->flags |= FLAG_FILENAME_FAULT;
    } else if (n == sizeof(a->filename)) {
        a->flags |= FLAG_FILENAME_TRUNCATED;
    }

    /* Capture the first MAX_ARGS arguments (up to ARGS_BYTES), then only
     * count pointers up to ARGC_COUNT_MAX for the real argc.  The running
     * offset and count live in the map value, not in registers: loaded
     * back as unknown scalars they make every iteration end in the same
     * verifier state, so the loops verify in linear time.  (bpf_loop
     * would lift the bound, but BCC 0.26 can't relocate its callback.) */
    a->argc = 0;
    a->args_len = 0;
    int done = 0;
    for (u32 i = 0; i < MAX_ARGS; i++) {
        const char *arg = 0;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) < 0) {
            a->flags |= FLAG_ARGV_FAULT;
            done = 1;
            break;
        }
        if (!arg) {
            done = 1;
            break;
        }
        a->argc++;
        u32 off = a->args_len;
        if (off >= ARGS_BYTES) {
            a->flags |= FLAG_ARGS_TRUNCATED;
            continue;
        }
        /* Reads at most ARGS_BYTES into args[off..], spilling past args[]
         * into the scratch's spill[] (never reported): the verifier can't
         * prove "off + n <= ARGS_BYTES", a constant maximum it can. */
        n = bpf_probe_read_user_str(&a->args[off], ARGS_BYTES, arg);
        if (n < 0) {
            /* Unreadable string: an empty argument stands in, flagged. */
            a->flags |= FLAG_ARGV_FAULT;
            a->args[off] = 0;
            n = 1;
        } else if (n == ARGS_BYTES) {
            a->flags |= FLAG_ARGS_TRUNCATED;
        }
        a->args_len = off + n;
    }
    for (u32 i = MAX_ARGS; !done && i < ARGC_COUNT_MAX; i++) {
        const char *arg = 0;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) < 0) {
            a->flags |= FLAG_ARGV_FAULT;
            done = 1;
        } else if (!arg) {
            done = 1;
        } else {
            a->argc++;
            a->flags |= FLAG_ARGS_TRUNCATED;
        }
    }
    if (!done)
        a->flags |= FLAG_ARGC_CAPPED;
    if (a->args_len > ARGS_BYTES) {
        a->args_len = ARGS_BYTES;
        a->flags |= FLAG_ARGS_TRUNCATED;
    }

    u32 tid = (u32)pid_tgid;
    if (pending.update(&tid, a) < 0)
        count(STAT_MAP_FULL);
    return 0;
}

static __always_inline void emit(struct exec_args *a, s32 ret)
{
    if (FILTER_FAILED && ret >= 0)
        return;
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    if (!comm_wanted(comm))
        return;
    u64 seq = next_seq();
    struct exec_event *e = events.ringbuf_reserve(sizeof(struct exec_event));
    if (!e) {
        count(STAT_RINGBUF_FULL);
        return;
    }
    fill_header(&e->h, seq);
    e->ret = ret;
    e->pad = 0;
    /* The header and counters first, then the strings: only the used part
     * of args[] is copied. */
    e->a.enter_ns = a->enter_ns;
    e->a.argc = a->argc;
    e->a.args_len = a->args_len;
    e->a.flags = a->flags;
    e->a.syscall = a->syscall;
    e->a.dirfd = a->dirfd;
    e->a.at_flags = a->at_flags;
    bpf_probe_read_kernel(e->a.filename, sizeof(e->a.filename), a->filename);
    u32 len = a->args_len;
    if (len > ARGS_BYTES)
        len = ARGS_BYTES;
    bpf_probe_read_kernel(e->a.args, len, a->args);
    events.ringbuf_submit(e, 0);
    count(STAT_SUBMITTED);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return enter(args->filename, args->argv, SYSCALL_EXECVE, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return enter(args->filename, args->argv, SYSCALL_EXECVEAT,
                 (s32)args->fd, (s32)args->flags);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 old_pid = args->old_pid;
    struct exec_args *a = pending.lookup(&old_pid);
    if (a) {
        emit(a, 0);
        pending.delete(&old_pid);
        return 0;
    }
    /* No syscall entry seen.  Either filtered out at entry, or an exec
     * started by the kernel itself (which never enters execve). */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!task_wanted(pid_tgid, uid))
        return 0;
    int zero = 0;
    struct exec_scratch *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    /* Only kernel threads turning into user processes get here unfiltered
     * (PF_KTHREAD parents: kworkers running usermode helpers). */
    unsigned short loc = args->data_loc_filename & 0xffff;
    s->a.enter_ns = 0;
    s->a.argc = 0;
    s->a.args_len = 0;
    s->a.flags = FLAG_NO_ARGV;
    s->a.syscall = SYSCALL_KERNEL;
    s->a.dirfd = 0;
    s->a.at_flags = 0;
    bpf_probe_read_kernel_str(s->a.filename, sizeof(s->a.filename),
                              (char *)args + loc);
    emit(&s->a, 0);
    return 0;
}

static __always_inline int exit_common(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct exec_args *a = pending.lookup(&tid);
    if (!a)
        return 0;               /* success: already emitted at exec */
    if (ret < 0)
        emit(a, (s32)ret);
    pending.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    return exit_common(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    return exit_common(args->ret);
}
