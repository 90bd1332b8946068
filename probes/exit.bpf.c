/* rbtrace exit: every process exit, once per process, with how it ended.
 *
 * Hooked on the raw sched_process_exit tracepoint, which every thread of a
 * process passes in do_exit().  One of them is the process's end:
 *
 * - Linux 6.16 and later pass group_dead: true for the thread that brought
 *   signal->live to 0, the last one of the process.  Exact.
 * - Before 6.16 the hook passes only the task.  The leader's exit is not
 *   the process's end: a leader that calls pthread_exit() (or SYS_exit)
 *   first leaves a zombie while the other threads run on, and the leader
 *   that a non-leader's execve() replaces exits too (de_thread) while the
 *   process goes on.  So the end is read as the kernel decides it:
 *   do_exit() decrements signal->live before the hook, and a thread that
 *   reads 0 there is at or after the last decrement.  Two last threads
 *   exiting at once may both read 0 (an exit_group kills every thread
 *   together), so the first one to claim the process in `reported` (keyed
 *   by its signal_struct and its start time) writes the event.
 *
 * The record carries the wait status the parent will get, and the
 * process's start time; user space decodes them (rbtrace/kinds/exit.py).
 * Every kernel struct is read with offsets from the running kernel's BTF
 * (-D flags from rbtrace/kinds/exit.py).  Filters first, then the ring.
 */
#include "common.h"

#ifndef TASK_SIGNAL_OFF
#error "the task_struct and signal_struct offsets must come from the running kernel's BTF"
#endif

/* include/linux/sched/signal.h, "group exit in progress": 0x4 from
 * 2.6.28 to 6.18 at least.  A macro, so not in BTF. */
#define SIGNAL_GROUP_EXIT 0x00000004

struct exit_event {
    struct rb_header h;   /* comm: the process's (its leader's), not the last thread's */
    u64 start_ns;         /* group_leader->start_time: CLOCK_MONOTONIC, as ts_ns */
    u32 status;           /* the wait(2) status: code << 8, or signal | 0x80 (core) */
    u32 pad;
};

RBTRACE_EVENT(exit_event);

#if !EXIT_HAS_GROUP_DEAD
struct exit_key {
    u64 signal;           /* struct signal_struct *: one per process */
    u64 start_ns;         /* tells a reused address from the old process */
};
/* Only two threads racing to the hook at once need it: an entry lives
 * for microseconds, so a small LRU table is enough. */
BPF_TABLE("lru_hash", struct exit_key, u8, reported, 1024);
#endif

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
#if EXIT_HAS_GROUP_DEAD
    if (!ctx->args[1])    /* not the last thread of its process */
        return 0;
#endif
    if (!task_wanted(bpf_get_current_pid_tgid(), (u32)bpf_get_current_uid_gid()))
        return 0;
    void *task = (void *)bpf_get_current_task();
    void *signal = (void *)kernel_u64(task, TASK_SIGNAL_OFF);
    if (!signal)
        return 0;
#if !EXIT_HAS_GROUP_DEAD
    if (kernel_u32(signal, SIGNAL_LIVE_OFF) != 0)   /* atomic_t: other threads live */
        return 0;
#endif
    /* What wait_task_zombie() will report: the group's code once a group
     * exit is under way, else the leader's own exit code.  exit_group()
     * and fatal signals set the group's code (a core dump adds 0x80), and
     * since 5.17 so does the last thread's plain exit(2) (do_exit() ->
     * synchronize_group_exit(), before the hook); only older kernels take
     * the leader's code when another thread exits last. */
    void *leader = (void *)kernel_u64(task, TASK_GROUP_LEADER_OFF);
    u32 status;
    if (kernel_u32(signal, SIGNAL_FLAGS_OFF) & SIGNAL_GROUP_EXIT)
        status = kernel_u32(signal, SIGNAL_GROUP_EXIT_CODE_OFF);
    else
        status = kernel_u32(leader, TASK_EXIT_CODE_OFF);
    if (FILTER_FAILED && status == 0)
        return 0;
    /* The leader's name, which ps shows for the process: the last thread
     * may be any thread, and threads name themselves. */
    char comm[16];
    bpf_probe_read_kernel(comm, sizeof(comm), (char *)leader + TASK_COMM_OFF);
    if (!comm_wanted(comm))
        return 0;
    /* The process's start: de_thread() gives a non-leader that execs the
     * leader's start_time as it takes its place. */
    u64 start = kernel_u64(leader, TASK_START_TIME_OFF);
#if !EXIT_HAS_GROUP_DEAD
    struct exit_key key = {.signal = (u64)signal, .start_ns = start};
    u8 one = 1;
    if (reported.insert(&key, &one) != 0)
        return 0;         /* another last thread wrote it */
#endif
    u64 seq = next_seq();
    struct exit_event *e = reserve_event(sizeof(*e), seq);
    if (!e)
        return 0;
    e->start_ns = start;
    e->status = status;
    e->pad = 0;
    __builtin_memcpy(e->h.comm, comm, sizeof(comm));
    submit_event(e);
    return 0;
}
