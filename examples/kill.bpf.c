/* kill.bpf.c: every kill(2), with the signal, the target and the result.
 *
 *     rbtrace run kill.bpf.c
 *
 * An example of a probe of your own for rbtrace run (see rbtrace-run(8)):
 * the entry hook keeps the arguments, keyed by thread; the exit hook
 * writes one event with the result.  Copy it and change it.
 */
#include "rbtrace.h"

struct kill_event {
    struct rb_header h;         /* always first: time, pid, comm... */
    s64 ret;                    /* 0, or a negative errno (-ESRCH) */
    s32 target;                 /* the pid argument: > 0 a process, 0 the
                                   caller's group, -1 all, < -1 a group */
    s32 sig;                    /* 0 only checks that the target exists */
};
RBTRACE_EVENT(kill_event);

struct kill_args {
    s32 target;
    s32 sig;
};

/* Calls in flight, at most one per thread. */
BPF_HASH(pending, u32, struct kill_args, 10240);

TRACEPOINT_PROBE(syscalls, sys_enter_kill)
{
    if (!rbtrace_task_wanted())       /* -p, -u, -n, -- CMD */
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct kill_args a = {.target = (s32)args->pid, .sig = (s32)args->sig};
    if (pending.update(&tid, &a) < 0)
        rbtrace_count_map_full();     /* a lost event, counted */
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_kill)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct kill_args *a = pending.lookup(&tid);
    if (!a)
        return 0;
    if (rbtrace_ret_wanted(args->ret)) {      /* -x: failed calls only */
        struct kill_event *e = rbtrace_reserve(kill_event);
        if (e) {
            e->ret = args->ret;
            e->target = a->target;
            e->sig = a->sig;
            rbtrace_submit(e);
        }
    }
    pending.delete(&tid);
    return 0;
}
