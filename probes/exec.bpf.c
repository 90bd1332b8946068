/* rbtrace exec: every program execution, with its result.
 *
 * sys_enter_execve / sys_enter_execveat  capture filename and argv while
 *     the caller's memory still exists, keyed by tid.
 * sched:sched_process_exec  success: emit.  A non-leader thread that
 *     execs takes over the leader's pid (de_thread), so the entry is found
 *     by old_pid, the caller's tid.  For execveat the executable's path is
 *     read here too, from current->mm->exe_file (BTF offsets).
 * sys_exit_execve / sys_exit_execveat  failure (ret < 0): emit.
 * An exec started inside the kernel (usermode helpers) has no syscall
 * entry: it is emitted from sched_process_exec with FLAG_NO_ARGV.
 *
 * Records are variable in effect: the strings (filename, argv, exe) are
 * packed into data[] and the smallest size class that holds them is
 * reserved, so a typical exec costs a few hundred bytes of ring, not the
 * maximum.  Each class is its own event struct; user space tells them apart
 * by record size (rbtrace/ringbuf.py).
 *
 * rbtrace/kinds/exec.py (ExecCodec.cflags) defines, as -D flags, every
 * constant the decoder shares with this file: the limits (MAX_ARGS,
 * ARGS_BYTES, ARGV_PAGES, SCRATCH_SLOTS), the sizes FILENAME_BYTES and
 * EXE_BYTES, the size classes (EXEC_CLASSES), the SYSCALL_* numbers and
 * the FLAG_* bits.  None has a default here.
 */
#include "common.h"

#if !defined(MAX_ARGS) || !defined(ARGS_BYTES) || !defined(ARGV_PAGES) || \
    !defined(SCRATCH_SLOTS) || !defined(FILENAME_BYTES) || !defined(EXE_BYTES)
#error "the limits and sizes come from rbtrace/kinds/exec.py as -D flags"
#endif
#if !defined(EXEC_CLASSES) || !defined(SYSCALL_EXECVEAT) || !defined(FLAG_EXE)
#error "the size classes, syscall numbers and flag bits come from rbtrace/kinds/exec.py"
#endif
/* MAX_ARGS        arguments captured
 * ARGS_BYTES      bytes of argv captured, NULs included
 * ARGV_PAGES      pages of argv pointers scanned to count argc
 * SCRATCH_SLOTS   possible CPUs: one scratch slot each
 * FILENAME_BYTES  PATH_MAX, NUL included
 * EXE_BYTES       path components of the executable */
#define PTRS_PER_PAGE 512          /* argv pointers in a 4 KiB page */
#define EXE_DEPTH 64               /* dentries and mounts walked for it */
#define NAME_BYTES 256             /* NAME_MAX + NUL */
#define DATA_BYTES (FILENAME_BYTES + ARGS_BYTES + EXE_BYTES)

/* Hides a value from clang, so that a bound check the verifier needs is
 * not folded into an earlier, equivalent test on another register. */
#define OPAQUE(x) asm volatile("" : "+r"(x))

#ifndef TASK_MM_OFF
#error "the mm and exe_file offsets must come from the running kernel's BTF"
#endif

/* SYSCALL_EXECVE, SYSCALL_EXECVEAT, SYSCALL_KERNEL: the syscall member.
 * FLAG_* bits of the flags member, each set when:
 *   ARGS_TRUNCATED      argc > MAX_ARGS, or the bytes reached ARGS_BYTES
 *                       (user space tells if cut)
 *   FILENAME_TRUNCATED  longer than PATH_MAX (ENAMETOOLONG)
 *   FILENAME_FAULT      filename pointer unreadable
 *   ARGV_FAULT          an argv pointer or string unreadable
 *   ARGC_CAPPED         argv longer than ARGV_PAGES: argc is a minimum
 *   NO_ARGV             exec from the kernel: argv unknown
 *   ARGV_NULL           argv was a NULL pointer
 *   EXE                 exe_len bytes of exe components follow
 *   EXE_TRUNCATED       path deeper or longer than the limits
 *   EXE_DELETED         the executable file was unlinked
 *   ARGC_FAULT          the argv array itself was unreadable
 *   ARGV_FROM_EXEC      argv read from the new program
 *   FILENAME_FROM_EXEC  filename from bprm->filename */

/* Fixed part of the state kept from entry to result, and of each record. */
struct exec_info {
    u32 tid;                       /* the calling thread */
    u32 argc;                      /* counted (see FLAG_ARGC_CAPPED) */
    u32 args_len;                  /* data[0..]: argv strings, each with its
                                      NUL (the last one may be cut) */
    u32 filename_len;              /* then the filename, NUL included */
    u32 exe_len;                   /* then exe components, leaf first */
    u32 flags;
    u32 syscall;
    s32 dirfd;                     /* execveat only */
    s32 at_flags;                  /* execveat only */
    u32 pad;
};

struct exec_args {
    struct exec_info i;
    char data[ARGS_BYTES + FILENAME_BYTES];
};

/* The spill area lets every string be read with a constant maximum size
 * whatever its offset: the verifier cannot relate "offset + size <= end"
 * on its own.  The exe components are appended into it too. */
struct exec_scratch {
    struct exec_args a;
    char spill[ARGS_BYTES + EXE_BYTES + 8];
    u64 ptrs[2 * PTRS_PER_PAGE];   /* a page of argv pointers, for argc;
                                      twice that, for a masked bound */
#if HAVE_BPF_LOOP
    struct {                       /* what the bpf_loop callbacks carry */
        u64 argv;                  /* the argv array (argument capture) */
        u64 addr;                  /* the next argv pointer to count */
        u64 done;                  /* argc counted */
        void *dentry;              /* the exe path walk */
        void *mnt;
        void *vfsmnt;
        u64 complete;
    } loop;
#endif
};

struct exec_head {
    struct rb_header h;
    s32 ret;
    u32 pad;
    struct exec_info i;
};

#define EXEC_CLASS(n) \
    struct exec_event_##n { struct exec_head x; char data[n]; }; \
    RBTRACE_EVENT(exec_event_##n);

/* Size classes, by data bytes, below the maximum: EXEC_CLASSES(X) is
 * X(256) X(1024) ..., those smaller than DATA_BYTES (rbtrace/kinds/exec.py
 * CLASSES); then the maximum itself. */
EXEC_CLASSES(EXEC_CLASS)
struct exec_event_max { struct exec_head x; char data[DATA_BYTES]; };
RBTRACE_EVENT(exec_event_max);

/* One slot per possible CPU, indexed by the CPU we run on (tracepoint
 * programs run with preemption off).  A plain array rather than a per-CPU
 * one: per-CPU values are limited to 32 KiB, and --max-arg-bytes needs
 * more. */
BPF_ARRAY(scratch, struct exec_scratch, SCRATCH_SLOTS);
/* Not preallocated: in-flight execs are few, entries are ~8 KiB. */
BPF_F_TABLE("hash", u32, struct exec_args, pending, 4096, BPF_F_NO_PREALLOC);

static __always_inline struct exec_scratch *get_scratch(void)
{
    u32 cpu = bpf_get_smp_processor_id();
    return scratch.lookup(&cpu);
}

/* Counts the argv pointers from *addr to the end of its page into argc:
 * 1 when argv ends there (or can't be read), else 0 with *addr moved to
 * the next page.  One round of the argc scan in enter(). */
static __always_inline int argc_page(struct exec_scratch *s, u64 *addr)
{
    struct exec_args *a = &s->a;
    /* Pointers to the page end; 1 for an unaligned one across pages.
     * Branchless, so that one verifier state goes round the loop. */
    u64 n = (4096 - (*addr & 4095)) / sizeof(void *);
    n |= (n - 1) >> 63;
    OPAQUE(n);
    n &= 2 * PTRS_PER_PAGE - 1;   /* no-op (n <= 512): bounds the read */
    if (bpf_probe_read_user(s->ptrs, n * sizeof(void *), (void *)*addr) < 0) {
        a->i.flags |= FLAG_ARGV_FAULT | FLAG_ARGC_FAULT;
        return 1;
    }
    /* first = index of the first NULL in ptrs[] (or 512); entries past
     * n are stale, so a NULL among the first n ends argv. */
    u64 alive = 1, first = 0;
#pragma clang loop unroll_count(8)
    for (int j = 0; j < PTRS_PER_PAGE; j++) {
        u64 p = s->ptrs[j];
        u64 neg = 0 - p;
        OPAQUE(neg);
        alive &= (p | neg) >> 63;        /* p != 0, without a branch */
        first += alive;
    }
    if (first < n) {
        a->i.argc += first;
        return 1;
    }
    a->i.argc += n;
    *addr += n * sizeof(void *);
    return 0;
}

/* Captures argument i at the end of data[] (see enter()): 1 when there
 * are no more to capture, else 0. */
static __always_inline int capture_arg(struct exec_args *a, const char *const *argv, u32 i)
{
    if (i >= a->i.argc)
        return 1;
    u64 used = a->i.args_len;
    if (used >= ARGS_BYTES)
        return 1;
    /* A pointer that went bad since it was counted (another thread)
     * stays NULL, and the string read below fails on it. */
    const char *arg = 0;
    bpf_probe_read_user(&arg, sizeof(arg), &argv[i]);
    /* Reads at most ARGS_BYTES + 1 into data[used ..], spilling past
     * data[] into the scratch's spill[]: a string is complete iff its
     * NUL lands below ARGS_BYTES.  On a fault the helper zeroes the
     * buffer, so an empty argument stands in (flagged). */
    long r = bpf_probe_read_user_str(&a->data[used], ARGS_BYTES + 1, arg);
    u64 bad = (u64)r >> 63;
    OPAQUE(bad);
    a->i.flags |= bad * FLAG_ARGV_FAULT;
    a->i.args_len = used + ((r & (bad - 1)) | bad);    /* r, or 1 */
    return 0;
}

#if HAVE_BPF_LOOP
/* The same loops as bpf_loop callbacks, their state in the scratch (the
 * CPU's slot: tracepoint programs run with preemption off). */
LOOP_CALLBACK(1, argc_page)
{
    struct exec_scratch *s = get_scratch();
    if (!s)
        return 1;
    u64 addr = s->loop.addr;
    int done = argc_page(s, &addr);
    s->loop.addr = addr;
    s->loop.done = done;
    return done;
}

LOOP_CALLBACK(2, capture_arg)
{
    struct exec_scratch *s = get_scratch();
    if (!s)
        return 1;
    return capture_arg(&s->a, (const char *const *)s->loop.argv, index);
}
#endif

static __always_inline int enter(const char *filename, const char *const *argv,
                                 u32 syscall, s32 dirfd, s32 at_flags)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!task_wanted(pid_tgid, uid))
        return 0;

    struct exec_scratch *s = get_scratch();
    if (!s)
        return 0;
    struct exec_args *a = &s->a;
    a->i.tid = (u32)pid_tgid;
    a->i.argc = 0;
    a->i.args_len = 0;
    a->i.filename_len = 0;
    a->i.exe_len = 0;
    a->i.flags = 0;
    a->i.syscall = syscall;
    a->i.dirfd = dirfd;
    a->i.at_flags = at_flags;
    a->i.pad = 0;

    int done = 0;
    if (!argv) {
        /* Linux runs it with an empty argv (fs/exec.c; since 5.18 with ""
         * added as argv[0] for the new program); strace shows NULL. */
        a->i.flags |= FLAG_ARGV_NULL;
        done = 1;
    }

    /* argc: count the pointers up to the NULL, a page of them at a time
     * (one helper call per 512), reading only up to the page end so that
     * the read can't fault past the array.  The scan is branchless: per
     * pointer the verifier walks a few ALU instructions and pushes no
     * state, so it can look at tens of thousands of them (a branch per
     * pointer hits its limit of 8192 pending jumps).  With bpf_loop the
     * verifier checks one page's work once, not once per page. */
#if HAVE_BPF_LOOP
    s->loop.argv = (u64)argv;
    s->loop.addr = (u64)argv;
    s->loop.done = done;
    if (!done)
        bpf_loop(ARGV_PAGES, LOOP_CALLBACK_REF(1), 0, 0);
    done = s->loop.done;
#else
    u64 addr = (u64)argv;
#pragma clang loop unroll(disable)
    for (u32 c = 0; !done && c < ARGV_PAGES; c++)
        done = argc_page(s, &addr);
#endif
    if (!done)
        a->i.flags |= FLAG_ARGC_CAPPED;

    /* Capture the first MAX_ARGS arguments, up to ARGS_BYTES, at the start
     * of data[].  The running offset lives in the map value, not in a
     * register: loaded back as an unknown scalar it makes every iteration
     * end in the same verifier state, and the body has no branch that
     * does not leave the loop: each argument costs the verifier ~50
     * instructions and two pending branches (it allows 8192); with
     * bpf_loop, once in all. */
#if HAVE_BPF_LOOP
    bpf_loop(MAX_ARGS, LOOP_CALLBACK_REF(2), 0, 0);
#else
    for (u32 i = 0; i < MAX_ARGS; i++)
        if (capture_arg(a, argv, i))
            break;
#endif
    u64 used = a->i.args_len;
    if (used > ARGS_BYTES)
        used = ARGS_BYTES;                    /* the last string is cut */
    a->i.args_len = used;
    if (used == ARGS_BYTES || a->i.argc > MAX_ARGS)
        a->i.flags |= FLAG_ARGS_TRUNCATED;    /* user space refines "cut" */

    /* The filename after the strings.  One byte more than PATH_MAX: a
     * name that fills all of it is longer than the kernel takes. */
    OPAQUE(used);
    if (used > ARGS_BYTES)
        used = ARGS_BYTES;                    /* never: for the verifier */
    int n = bpf_probe_read_user_str(&a->data[used], FILENAME_BYTES + 1, filename);
    if (n < 0) {
        n = 1;                                /* the helper wrote a NUL */
        a->i.flags |= FLAG_FILENAME_FAULT;
    } else if (n > FILENAME_BYTES) {
        n = FILENAME_BYTES;
        a->i.flags |= FLAG_FILENAME_TRUNCATED;
    }
    a->i.filename_len = n;

    u32 tid = (u32)pid_tgid;
    if (pending.update(&tid, a) < 0)
        count(STAT_MAP_FULL);
    return 0;
}

/* BCC rewrites map calls only outside macros: these wrap the ring's, for
 * EMIT_CLASS.  Inlined, the size stays the constant the verifier needs.
 * (RING_PAGES counts 4 KiB pages: see common.h.) */
static __always_inline void *ring_reserve(u64 size)
{
    return events.ringbuf_reserve(size);
}

/* Wake the consumer for one record in 64 only, and for big ones: it
 * drains on its own timer (10 Hz) anyway, and a wakeup per exec cost the
 * traced workload more than the probe does (2000 fork+execs on 2 CPUs:
 * 1.25 s untraced, 1.70 s with a wakeup per event, 1.26 s without).
 * (BCC 0.26 has no ringbuf_query to wake on the fill level instead.) */
static __always_inline void ring_submit(void *e, u64 seq, u64 size)
{
    int wake = (seq & 63) == 0 || size >= 65536;
    events.ringbuf_submit(e, wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Reserve the smallest class that holds `len` data bytes and fill it. */
#define EMIT_CLASS(n)                                                        \
    if (len <= n) {                                                          \
        struct exec_event_##n *e = ring_reserve(sizeof(*e));                  \
        if (!e) {                                                            \
            count(STAT_RINGBUF_FULL);                                        \
            return;                                                          \
        }                                                                    \
        fill_header(&e->x.h, seq);                                           \
        e->x.h.tid = a->i.tid;                                               \
        e->x.ret = ret;                                                      \
        e->x.pad = 0;                                                        \
        e->x.i = a->i;                                                       \
        OPAQUE(len);                                                         \
        if (len > n)                                                         \
            len = n;                  /* never: for the verifier */          \
        bpf_probe_read_kernel(e->data, len, a->data);                        \
        ring_submit(e, seq, n);                                              \
        count(STAT_SUBMITTED);                                               \
        return;                                                              \
    }

/* --comm: the current task's name, which is the new program's at
 * sched_process_exec and the caller's at a failed call's exit.  Checked
 * first thing in those programs, before any work on the event. */
static __always_inline int current_comm_wanted(void)
{
    if (!comm_filter_on())
        return 1;
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    return comm_wanted(comm);
}

/* Emit the event for entry `a`: the filters are checked (--failed here,
 * the others earlier), then a record reserved, filled and submitted. */
static __always_inline void emit(struct exec_args *a, s32 ret)
{
    if (FILTER_FAILED && ret >= 0)
        return;
    /* 64-bit throughout: a u32 passed to a helper travels in a register
     * whose upper half the verifier can't bound. */
    u64 len = (u64)a->i.args_len + a->i.filename_len + a->i.exe_len;
    u64 seq = next_seq();
    EXEC_CLASSES(EMIT_CLASS)
    {
        struct exec_event_max *e = ring_reserve(sizeof(*e));
        if (!e) {
            count(STAT_RINGBUF_FULL);
            return;
        }
        fill_header(&e->x.h, seq);
        e->x.h.tid = a->i.tid;
        e->x.ret = ret;
        e->x.pad = 0;
        e->x.i = a->i;
        OPAQUE(len);
        if (len > DATA_BYTES)
            len = DATA_BYTES;
        bpf_probe_read_kernel(e->data, len, a->data);
        ring_submit(e, seq, DATA_BYTES);
        count(STAT_SUBMITTED);
    }
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

/* The path of the running executable (current->mm->exe_file), appended to
 * s->a.data as NUL-terminated components from the file up to the root,
 * the way d_path() walks it (fs/d_path.c prepend_path): up the dentries,
 * and across a mount root to the mountpoint in the parent mount.  It stops
 * at the root of the mount tree the file is in; user space joins the
 * components in reverse.  Needed because execveat(fd, "", AT_EMPTY_PATH)
 * (fexecve) names no path at all. */
/* One step of the walk in exe_path(): 1 when it ends (*complete set when
 * the root was reached), else 0. */
static __always_inline int exe_step(struct exec_scratch *s, void **dentry, void **mnt,
                                    void **vfsmnt, int *complete)
{
    if (*dentry == kernel_ptr(*vfsmnt, VFSMOUNT_MNT_ROOT_OFF)) {
        void *parent = kernel_ptr(*mnt, MOUNT_MNT_PARENT_OFF);
        if (!parent || parent == *mnt) {
            *complete = 1;                          /* the root mount */
            return 1;
        }
        *dentry = kernel_ptr(*mnt, MOUNT_MNT_MOUNTPOINT_OFF);
        *mnt = parent;
        *vfsmnt = (char *)parent + MOUNT_MNT_OFF;
        return 0;
    }
    void *up = kernel_ptr(*dentry, DENTRY_D_PARENT_OFF);
    if (!up || up == *dentry) {
        *complete = 1;               /* a root that is not a mount root */
        return 1;
    }
    const char *name = kernel_ptr(*dentry, DENTRY_D_NAME_OFF + QSTR_NAME_OFF);
    u32 used = s->a.i.exe_len;
    if (used >= EXE_BYTES - NAME_BYTES)
        return 1;
    u64 base = (u64)s->a.i.args_len + s->a.i.filename_len;
    OPAQUE(base);
    if (base > ARGS_BYTES + FILENAME_BYTES)
        base = ARGS_BYTES + FILENAME_BYTES;         /* never: for the verifier */
    int n = bpf_probe_read_kernel_str(&s->a.data[base + used], NAME_BYTES, name);
    if (n <= 0)
        return 1;
    s->a.i.exe_len = used + n;
    *dentry = up;
    return 0;
}

#if HAVE_BPF_LOOP
LOOP_CALLBACK(3, exe_step)
{
    struct exec_scratch *s = get_scratch();
    if (!s)
        return 1;
    void *dentry = s->loop.dentry, *mnt = s->loop.mnt, *vfsmnt = s->loop.vfsmnt;
    int complete = 0;
    int stop = exe_step(s, &dentry, &mnt, &vfsmnt, &complete);
    s->loop.dentry = dentry;
    s->loop.mnt = mnt;
    s->loop.vfsmnt = vfsmnt;
    s->loop.complete = complete;
    return stop;
}
#endif

static __always_inline void exe_path(struct exec_scratch *s)
{
    void *task = (void *)bpf_get_current_task();
    void *mm = kernel_ptr(task, TASK_MM_OFF);
    if (!mm)
        return;
    void *file = kernel_ptr(mm, MM_EXE_FILE_OFF);
    if (!file)
        return;
    void *vfsmnt = kernel_ptr(file, FILE_F_PATH_OFF + PATH_MNT_OFF);
    void *dentry = kernel_ptr(file, FILE_F_PATH_OFF + PATH_DENTRY_OFF);
    if (!vfsmnt || !dentry)
        return;
    void *mnt = (char *)vfsmnt - MOUNT_MNT_OFF;      /* container_of */

    /* d_unlinked(): unhashed, and not the root of its tree. */
    void *pprev = kernel_ptr(dentry, DENTRY_D_HASH_OFF + sizeof(void *));
    if (!pprev && kernel_ptr(dentry, DENTRY_D_PARENT_OFF) != dentry)
        s->a.i.flags |= FLAG_EXE_DELETED;

    int complete = 0;
#if HAVE_BPF_LOOP
    s->loop.dentry = dentry;
    s->loop.mnt = mnt;
    s->loop.vfsmnt = vfsmnt;
    s->loop.complete = 0;
    bpf_loop(EXE_DEPTH, LOOP_CALLBACK_REF(3), 0, 0);
    complete = s->loop.complete;
#else
    for (int depth = 0; depth < EXE_DEPTH; depth++)
        if (exe_step(s, &dentry, &mnt, &vfsmnt, &complete))
            break;
#endif
    if (complete)
        s->a.i.flags |= FLAG_EXE;
    else
        s->a.i.flags |= FLAG_EXE_TRUNCATED;
}

/* Strings the caller's memory did not have resident at syscall entry
 * (string literals in a page of the program never touched yet: a BPF
 * program at a tracepoint can't fault pages in) are taken from what the
 * kernel made of them, once the exec succeeded:
 *   argv: the new program's copy, mm->arg_start..arg_end, the strings
 *     back to back with their NULs, as data[] holds them.  Only when the
 *     new program's argc (at mm->start_stack) equals the count made at
 *     entry: a #! script or binfmt_misc handler gets a rewritten argv
 *     (interpreter first, argv[0] replaced) and one more argument or two.
 *   filename: the tracepoint's own, bprm->filename, which is the string
 *     passed, except for execveat with a directory fd (fs/exec.c
 *     alloc_bprm: "/dev/fd/N" or "/dev/fd/N/name"; user space undoes it).
 * The record is rebuilt in the scratch, args first, then filename, then
 * for execveat the executable's path. */
static __always_inline void rebuild(struct exec_scratch *s, struct exec_args *a,
                                    void *tp_args, unsigned short loc)
{
    s->a.i = a->i;
    s->a.i.exe_len = 0;
    u32 flags = a->i.flags;
    u64 alen = a->i.args_len;
    int recovered = 0;
    if ((flags & FLAG_ARGV_FAULT) &&
        !(flags & (FLAG_ARGC_CAPPED | FLAG_ARGV_NULL | FLAG_ARGC_FAULT))) {
        void *mm = kernel_ptr((void *)bpf_get_current_task(), TASK_MM_OFF);
        u64 start = (u64)kernel_ptr(mm, MM_ARG_START_OFF);
        u64 end = (u64)kernel_ptr(mm, MM_ARG_END_OFF);
        u64 sp = (u64)kernel_ptr(mm, MM_START_STACK_OFF);
        u64 new_argc = 0;
        bpf_probe_read_user(&new_argc, sizeof(new_argc), (void *)sp);
        if (mm && new_argc == a->i.argc && end > start) {
            u64 len = end - start;
            if (len > ARGS_BYTES) {
                len = ARGS_BYTES;
            }
            OPAQUE(len);
            if (len > ARGS_BYTES)
                len = ARGS_BYTES;             /* never: for the verifier */
            if (bpf_probe_read_user(s->a.data, len, (void *)start) == 0) {
                alen = len;
                recovered = 1;
                s->a.i.flags = (s->a.i.flags & ~FLAG_ARGV_FAULT) | FLAG_ARGV_FROM_EXEC;
            }
        }
    }
    if (!recovered) {
        OPAQUE(alen);
        if (alen > ARGS_BYTES)
            alen = ARGS_BYTES;                /* never: for the verifier */
        bpf_probe_read_kernel(s->a.data, alen, a->data);
    }
    s->a.i.args_len = alen;

    OPAQUE(alen);
    if (alen > ARGS_BYTES)
        alen = ARGS_BYTES;                    /* never: for the verifier */
    if (flags & FLAG_FILENAME_FAULT) {
        int n = bpf_probe_read_kernel_str(&s->a.data[alen], FILENAME_BYTES,
                                          (char *)tp_args + loc);
        if (n > 0) {
            s->a.i.filename_len = n;
            s->a.i.flags = (s->a.i.flags & ~FLAG_FILENAME_FAULT) | FLAG_FILENAME_FROM_EXEC;
        } else {
            s->a.data[alen] = 0;
            s->a.i.filename_len = 1;
        }
    } else {
        u64 flen = a->i.filename_len;
        OPAQUE(flen);
        if (flen > FILENAME_BYTES)
            flen = FILENAME_BYTES;            /* never: for the verifier */
        bpf_probe_read_kernel(&s->a.data[alen], flen, &a->data[a->i.args_len]);
    }
    if (a->i.syscall == SYSCALL_EXECVEAT)
        exe_path(s);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 old_pid = args->old_pid;
    unsigned short loc = args->data_loc_filename & 0xffff;
    struct exec_args *a = pending.lookup(&old_pid);
    if (FILTER_FAILED || !current_comm_wanted()) {
        if (a)
            pending.delete(&old_pid);
        return 0;
    }
    if (a) {
        if (a->i.syscall == SYSCALL_EXECVEAT ||
            (a->i.flags & (FLAG_ARGV_FAULT | FLAG_FILENAME_FAULT))) {
            struct exec_scratch *s = get_scratch();
            if (s) {
                rebuild(s, a, args, loc);
                emit(&s->a, 0);
            }
        } else {
            emit(a, 0);
        }
        pending.delete(&old_pid);
        return 0;
    }
    /* No syscall entry seen.  Either filtered out at entry, or an exec
     * started by the kernel itself (which never enters execve), or one
     * already under way when rbtrace attached. */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (!task_wanted(pid_tgid, uid))
        return 0;
    struct exec_scratch *s = get_scratch();
    if (!s)
        return 0;
    s->a.i.tid = (u32)pid_tgid;
    s->a.i.argc = 0;
    s->a.i.args_len = 0;
    s->a.i.exe_len = 0;
    s->a.i.flags = FLAG_NO_ARGV;
    s->a.i.syscall = SYSCALL_KERNEL;
    s->a.i.dirfd = 0;
    s->a.i.at_flags = 0;
    s->a.i.pad = 0;
    int n = bpf_probe_read_kernel_str(s->a.data, FILENAME_BYTES, (char *)args + loc);
    s->a.i.filename_len = n > 0 ? n : 0;
    emit(&s->a, 0);
    return 0;
}

static __always_inline int exit_common(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct exec_args *a = pending.lookup(&tid);
    if (!a)
        return 0;               /* success: already emitted at exec */
    if (ret < 0 && current_comm_wanted())
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
