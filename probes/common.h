/* Shared by every rbtrace probe: the record header, the loss counters and
 * the filter macros.
 *
 * Options that change the code reach it as -D flags (see rbtrace/bpf.py);
 * every macro below has a default, so each .bpf.c file compiles on its
 * own.  Values that only select processes (-p, --tid, -u, -n) are read at
 * run time from rbtrace_config, so the compile cache serves every value.
 *
 * Kernel structs are never read through the compile-time headers: the
 * headers installed on the machine may be for another kernel (Debian's 6.1
 * headers on a 6.18 kernel here) and struct layouts differ.  Offsets come
 * from the running kernel's BTF (rbtrace/btf.py) as -DTASK_*_OFF flags.
 */
#ifndef RBTRACE_COMMON_H
#define RBTRACE_COMMON_H

#ifndef RING_PAGES
#define RING_PAGES 4096               /* 16 MiB with 4 KiB pages */
#endif
#ifndef FILTER_FAILED
#define FILTER_FAILED 0               /* 1: only calls that returned < 0 */
#endif
#ifndef FOLLOW
#define FOLLOW 0                      /* 1: only processes in `followed` */
#endif
#ifndef EXIT_HAS_GROUP_DEAD
#define EXIT_HAS_GROUP_DEAD 0         /* sched_process_exit passes group_dead */
#endif
#ifndef FOLLOW_MAX
#define FOLLOW_MAX 32768              /* followed processes alive at once */
#endif

#ifndef TASK_REAL_PARENT_OFF
#error "TASK_REAL_PARENT_OFF must come from the running kernel's BTF"
#endif
#ifndef TASK_TGID_OFF
#error "TASK_TGID_OFF must come from the running kernel's BTF"
#endif
#ifndef TASK_START_TIME_OFF
#error "TASK_GROUP_LEADER_OFF and TASK_START_TIME_OFF must come from the running kernel's BTF"
#endif

/* Which kind's program wrote a record (rb_header.rb_kind): one number per
 * kind, from its spec (rbtrace/spec.py kind_tag()).  Records of several
 * kinds share one ring in `rbtrace trace`, and user space tells them apart
 * by (rb_kind, size). */
#ifndef RB_KIND
#error "RB_KIND comes from rbtrace/spec.py (kind_tag)"
#endif

/* Indexes of the per-CPU loss/accounting counters: STAT_SUBMITTED (records
 * submitted to the ring), STAT_RINGBUF_FULL (reserve failed: dropped),
 * STAT_MAP_FULL (entry state could not be stored: dropped),
 * STAT_NOT_FOLLOWED (a child of a followed process not followed, its
 * events lost) and their number STAT_NR, as -D flags from the list that
 * reads them (rbtrace/bpf.py STATS).  seen = submitted + the two drops. */
#ifndef STAT_NR
#error "STAT_* come from rbtrace/bpf.py (STATS)"
#endif

/* Every record starts with this header.  Fields stay raw; Python formats. */
struct rb_header {
    u64 ts_ns;      /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 seq;        /* one per event attempt, across CPUs: gaps = drops */
    u32 pid;        /* tgid */
    u32 tid;
    u32 ppid;       /* real_parent->tgid, via BTF offsets */
    u32 uid;
    char comm[16];
    u64 proc_start_ns; /* the process's start: group_leader->start_time,
                          CLOCK_MONOTONIC as ts_ns; with pid and the boot,
                          a key no later process of that pid shares */
    u32 rb_kind;    /* RB_KIND of the program that wrote it */
    u32 rb_pad;     /* 0 */
    u64 cgroup_id;  /* bpf_get_current_cgroup_id(): the cgroup v2 id, the
                       inode number of its directory; user space makes the
                       container id of it (rbtrace/cgroups.py) */
};

BPF_RINGBUF_OUTPUT(events, RING_PAGES);

/* Names an event struct for user space.  BCC describes a table's value
 * type exactly (nested structs, padding), so rbtrace takes the record
 * layout from this never-used map instead of parsing C: the C struct stays
 * the only definition.  Not preallocated, so it costs no memory. */
#define RBTRACE_EVENT(name) \
    BPF_F_TABLE("hash", int, struct name, layout_##name, 1, BPF_F_NO_PREALLOC)
RBTRACE_EVENT(rb_header);   /* its layout: every event struct must begin with it */
BPF_PERCPU_ARRAY(stats, u64, STAT_NR);

/* Values of this run, written by user space before any hook is attached
 * (rbtrace/bpf.py).  Kept out of the compiled bytes, which the compile
 * cache shares between runs: `-p 1234` and `-p 5678` load the same
 * programs. */
struct rbtrace_config {
    u32 self_pid;     /* rbtrace's own tgid: never reported */
    u32 pid;          /* -p: this process (tgid) only; 0: any */
    u32 tid;          /* --tid: this thread only; 0: any */
    u32 uid_on;       /* -u given: then this user only */
    u32 uid;
    u32 ready;        /* 1 once written: before, as the map starts, all
                         zero, nothing is traced */
    u64 comm[2];      /* -n: this name, NUL-padded to 16 bytes; all 0: any */
    u32 cgroup_on;    /* --cgroup/--container: only tasks under the cgroup
                         in rbtrace_cgroup[0] */
    u32 config_pad;
};
BPF_ARRAY(rbtrace_config, struct rbtrace_config, 1);
/* --cgroup and --container: the cgroup v2 directory, its fd put in by
 * user space at load (a map value, not compiled-in bytes: the compile
 * cache serves every cgroup).  The cgroup and its descendants pass. */
BPF_CGROUP_ARRAY(rbtrace_cgroup, 1);
BPF_ARRAY(seq_counter, u64, 1);

/* bpf_loop callbacks, with HAVE_BPF_LOOP (rbtrace/bpf.py sets it where the
 * kernel has bpf_loop): the verifier checks a callback's body once, where
 * it walks a bounded loop once per iteration.  BCC 0.26 compiles a
 * callback but can't relocate a reference to it, and turns a second
 * parameter into a kprobe argument; so a callback takes only the index,
 * keeps its state in a map value, and is referred to by number:
 *     LOOP_CALLBACK(1, step) { ... return 0 (go on) or 1 (stop); }
 *     bpf_loop(n, LOOP_CALLBACK_REF(1), 0, 0);
 * rbtrace (loader.py link_callbacks) appends the function to each program
 * that refers to it and makes the reference a pseudo-function load. */
#ifndef HAVE_BPF_LOOP
#define HAVE_BPF_LOOP 0
#endif
#define LOOP_CALLBACK(n, name) int rbtrace_cb##n##__##name(u64 index)
#define LOOP_CALLBACK_REF(n) ((void *)(0x7262636200000000ULL | (n)))

static __always_inline void count(int which)
{
    u64 *v = stats.lookup(&which);
    if (v)
        (*v)++;               /* per-CPU slot: no atomics needed */
}

static __always_inline u64 next_seq(void)
{
    int zero = 0;
    u64 *v = seq_counter.lookup(&zero);
    if (!v)
        return 0;
    return __sync_fetch_and_add(v, 1);
}

/* Reads of kernel memory at an offset from the running kernel's BTF; 0
 * when unreadable (the helper zeroes its buffer on error). */
static __always_inline void *kernel_ptr(const void *base, u64 off)
{
    void *p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), (const char *)base + off);
    return p;
}

static __always_inline u32 kernel_u32(const void *base, u64 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline u64 kernel_u64(const void *base, u64 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

#ifdef FDTABLE_FD_OFF
#define S_IFMT   0170000
#define S_IFSOCK 0140000
#define S_IFDIR  0040000

/* The struct file of the current task's fd when its inode is of `type`
 * (S_IFDIR, S_IFSOCK...), else 0: task->files->fdt->fd[fd], bounded by
 * fdt->max_fds.  For probes given the TASK_FILES_OFF, FILES_FDT_OFF,
 * FDTABLE_*_OFF, FILE_F_INODE_OFF and INODE_I_MODE_OFF offsets. */
static __always_inline void *current_fd_file(long fd, u16 type)
{
    if (fd < 0)
        return 0;                                   /* EBADF */
    void *task = (void *)bpf_get_current_task();
    void *fdt = kernel_ptr(kernel_ptr(task, TASK_FILES_OFF), FILES_FDT_OFF);
    if ((u64)fd >= kernel_u32(fdt, FDTABLE_MAX_FDS_OFF))
        return 0;                                   /* EBADF */
    void *file = kernel_ptr(kernel_ptr(fdt, FDTABLE_FD_OFF), (u64)fd * sizeof(void *));
    if (!file)
        return 0;                                   /* EBADF */
    u16 mode = 0;
    bpf_probe_read_kernel(&mode, sizeof(mode),
                          (char *)kernel_ptr(file, FILE_F_INODE_OFF) + INODE_I_MODE_OFF);
    return (mode & S_IFMT) == type ? file : 0;
}
#endif

/* The parent's tgid, read with offsets of the running kernel. */
static __always_inline u32 current_ppid(void)
{
    void *task = (void *)bpf_get_current_task();
    void *parent = 0;
    u32 ppid = 0;
    bpf_probe_read_kernel(&parent, sizeof(parent),
                          (char *)task + TASK_REAL_PARENT_OFF);
    if (parent)
        bpf_probe_read_kernel(&ppid, sizeof(ppid),
                              (char *)parent + TASK_TGID_OFF);
    return ppid;
}

#if FOLLOW
/* `-- CMD` and `--pid P --children`: the processes (tgids) being followed.
 * User space puts the root(s) in before the command is let go; the kernel
 * adds every child as it is forked and removes a process when its last
 * thread exits.  Membership, not ancestry, so a grandchild that is
 * reparented to init (daemonized) stays followed.  Fork and exit are
 * hooked even when the probe itself reports neither. */
BPF_HASH(followed, u32, u8, FOLLOW_MAX);

/* sched_process_fork fires in the parent, after the child is created and
 * before it is first woken (kernel_clone() calls it before
 * wake_up_new_task()), so the child can't run a single instruction
 * unfollowed.  A raw tracepoint, because the child's tgid is needed to
 * tell a new process from a new thread, and the tracepoint's fields give
 * only its tid. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!followed.lookup(&parent))
        return 0;
    void *child = (void *)ctx->args[1];
    u32 child_tgid = 0;
    bpf_probe_read_kernel(&child_tgid, sizeof(child_tgid), (char *)child + TASK_TGID_OFF);
    if (child_tgid == parent)     /* a thread: its process is followed */
        return 0;
    u8 one = 1;
    if (followed.insert(&child_tgid, &one) < 0)
        count(STAT_NOT_FOLLOWED);
    return 0;
}

/* Runs in the exiting task, on the raw sched_process_exit tracepoint.
 * Not attached by BCC: rbtrace/bpf.py attaches it after every other
 * program, because programs on one tracepoint run in the order they were
 * attached, and a probe's own program there must still see the process
 * as followed.  Since 6.16 the hook passes group_dead (the last thread of
 * the process is going, so its pid can be reused and must not stay
 * followed).  Before, the leader's exit is not the process's end (a
 * leader that calls pthread_exit() leaves its threads running, and the
 * leader that a non-leader's execve() replaces exits too), so the end is
 * read as the kernel decides it: no thread left live (do_exit()
 * decrements signal->live before the hook).  Two last threads may both
 * see that; deleting twice does no harm. */
int rbtrace_follow_exit(struct bpf_raw_tracepoint_args *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
#if EXIT_HAS_GROUP_DEAD
    if (!ctx->args[1])
        return 0;
#else
    void *task = (void *)bpf_get_current_task();
    void *signal = 0;
    int live = 1;
    bpf_probe_read_kernel(&signal, sizeof(signal), (char *)task + TASK_SIGNAL_OFF);
    if (signal)
        bpf_probe_read_kernel(&live, sizeof(live), (char *)signal + SIGNAL_LIVE_OFF);
    if (live)
        return 0;
#endif
    followed.delete(&tgid);
    return 0;
}

static __always_inline int follow_wanted(u32 tgid)
{
    return followed.lookup(&tgid) != 0;
}
#else
static __always_inline int follow_wanted(u32 tgid) { return 1; }
#endif

static __always_inline struct rbtrace_config *rbtrace_cfg(void)
{
    u32 zero = 0;
    return rbtrace_config.lookup(&zero);
}

/* Process filters that need only the current task: checked before any
 * state is stored or any ring space is reserved. */
static __always_inline int task_wanted(u64 pid_tgid, u32 uid)
{
    struct rbtrace_config *c = rbtrace_cfg();
    if (!c || !c->ready)
        return 0;
    /* rbtrace's own work (its writes, its opens) would otherwise feed
     * back into what it traces: tp on a write path loops on itself. */
    if (c->self_pid == (u32)(pid_tgid >> 32))
        return 0;
    if (!follow_wanted(pid_tgid >> 32))
        return 0;
    if (c->pid && (u32)(pid_tgid >> 32) != c->pid)
        return 0;
    if (c->tid && (u32)pid_tgid != c->tid)
        return 0;
    if (c->uid_on && uid != c->uid)
        return 0;
    /* 1: under it; 0: not; < 0: no cgroup in the map (then nothing). */
    if (c->cgroup_on && rbtrace_cgroup.check_current_task(0) != 1)
        return 0;
    return 1;
}

/* -n: is `comm` (16 bytes, as task->comm) the name asked for?  Compared as
 * two 64-bit words: a byte loop gets flattened by clang into 16
 * independent flags whose combinations the verifier walks one by one
 * (2^16 paths, over its 1M limit). */
static __always_inline int comm_wanted(const char *comm)
{
    struct rbtrace_config *c = rbtrace_cfg();
    if (!c)
        return 0;
    if (!(c->comm[0] | c->comm[1]))
        return 1;
    u64 w[2];
    __builtin_memcpy(w, comm, sizeof(w));
    return w[0] == c->comm[0] && w[1] == c->comm[1];
}

/* Is -n on?  Then the current task's name is worth reading. */
static __always_inline int comm_filter_on(void)
{
    struct rbtrace_config *c = rbtrace_cfg();
    return c && (c->comm[0] | c->comm[1]);
}

/* task_wanted() and comm_wanted() for the current task: the filters a
 * probe checks first, before it stores or reserves anything. */
static __always_inline int current_wanted(void)
{
    if (!task_wanted(bpf_get_current_pid_tgid(), (u32)bpf_get_current_uid_gid()))
        return 0;
    if (comm_filter_on()) {
        char comm[16];
        bpf_get_current_comm(comm, sizeof(comm));
        if (!comm_wanted(comm))
            return 0;
    }
    return 1;
}

/* The current process's start time.  The leader's: a thread has its own,
 * and de_thread() gives a non-leader that execs the leader's start_time
 * as it takes its place, so a process keeps one start through exec. */
static __always_inline u64 current_start_ns(void)
{
    void *task = (void *)bpf_get_current_task();
    return kernel_u64(kernel_ptr(task, TASK_GROUP_LEADER_OFF), TASK_START_TIME_OFF);
}

static __always_inline void fill_header(struct rb_header *h, u64 seq)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    h->ts_ns = bpf_ktime_get_ns();
    h->seq = seq;
    h->pid = pid_tgid >> 32;
    h->tid = (u32)pid_tgid;
    h->ppid = current_ppid();
    h->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(h->comm, sizeof(h->comm));
    h->proc_start_ns = current_start_ns();
    h->rb_kind = RB_KIND;
    h->rb_pad = 0;
    h->cgroup_id = bpf_get_current_cgroup_id();
}

/* A record of `size` bytes (a constant: the verifier wants one) that
 * starts with struct rb_header, the header filled in; 0 when the ring is
 * full, counted as a drop.  `seq` is taken by the caller before asking
 * for space, so that a gap in the delivered numbers is a refused record. */
static __always_inline void *reserve_event(u32 size, u64 seq)
{
    struct rb_header *h = events.ringbuf_reserve(size);
    if (!h) {
        count(STAT_RINGBUF_FULL);
        return 0;
    }
    fill_header(h, seq);
    return h;
}

/* Send a record from reserve_event(), and count it. */
static __always_inline void submit_event(void *record)
{
    events.ringbuf_submit(record, 0);
    count(STAT_SUBMITTED);
}

#endif
