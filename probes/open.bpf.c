/* rbtrace open: every file open, with its result.
 *
 * sys_enter_open / openat / openat2 / creat  filter on the task, the flags
 *     and the path prefix, then remember the arguments and the path string,
 *     keyed by tid: in `pending_short` when the path fits a short record,
 *     else in `pending_long`.
 * sys_exit_*  emit one record with the result, then forget the entry.
 *
 * The path is read at entry, while it is certainly the caller's.  A
 * bpf_probe_read_user_str() can't fault pages in, so it fails on a page the
 * process never touched (a string in a file mapping, say); the entry then
 * keeps the user pointer and the path is read at exit instead, after the
 * kernel's own getname() has faulted the page in.  The same goes for
 * openat2's struct open_how.  Filters that need what could not be read are
 * applied at exit in that case.
 *
 * Records are fixed-size (ringbuf_reserve needs a constant), so there are
 * two: open_event_short for paths below SHORT_PATH bytes and
 * open_event_long for the rest.  Only the used path bytes (and the NUL)
 * are copied; the rest of path[] is whatever the ring held before.
 */
#include "common.h"

#define SHORT_PATH 256             /* short record: path_len < 256 */
#define LONG_PATH 4096             /* PATH_MAX, the NUL included */

#define AT_FDCWD -100
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000

#define SYSCALL_OPEN 0
#define SYSCALL_OPENAT 1
#define SYSCALL_OPENAT2 2
#define SYSCALL_CREAT 3

/* status bits, mirrored in rbtrace/probes/open.py */
#define ST_PATH_TRUNCATED 1        /* longer than LONG_PATH - 1 bytes */
#define ST_PATH_FAULT 2            /* unreadable, at entry and at exit */
#define ST_HOW_FAULT 4             /* openat2's open_how unreadable */
#define ST_HOW_SHORT 8             /* openat2 usize < 24: no open_how */
#define ST_PATH_AT_EXIT 16         /* path read at exit (entry read faulted) */

/* -D flags set by rbtrace/probes/open.py:
 *   FILTER_PATH     string literal: the path must start with these bytes
 *   FILTER_FLAGS    these flag bits must all be set
 *   FILTER_ACCMODE  (flags & O_ACCMODE) must equal this */

struct open_info {
    u64 flags;                     /* creat: O_CREAT|O_WRONLY|O_TRUNC */
    u64 mode;
    u64 resolve;                   /* openat2 only */
    s32 dirfd;                     /* open, creat: AT_FDCWD */
    u32 path_len;                  /* bytes before the NUL */
    u16 syscall;
    u16 status;
    u32 pad;
};

struct open_event_short {
    struct rb_header h;
    s64 ret;
    struct open_info i;
    char path[SHORT_PATH];
};

struct open_event_long {
    struct rb_header h;
    s64 ret;
    struct open_info i;
    char path[LONG_PATH];
};

/* Entry state.  The short one is a prefix of the long one, so an entry
 * built in the long scratch is stored in pending_short by copying only its
 * first sizeof(struct open_state_short) bytes. */
struct open_state_long {
    struct open_info i;
    u64 path_ptr;                  /* user pointers, for reads at exit */
    u64 how_ptr;
    char path[LONG_PATH];
};

struct open_state_short {
    struct open_info i;
    u64 path_ptr;
    u64 how_ptr;
    char path[SHORT_PATH];
};

struct open_how_user {
    u64 flags;
    u64 mode;
    u64 resolve;
};

RBTRACE_EVENT(open_event_short);
RBTRACE_EVENT(open_event_long);

BPF_PERCPU_ARRAY(scratch, struct open_state_long, 1);
/* Opens in flight at once are at most one per thread.  Short entries are
 * preallocated (about 4 MiB): no allocation on the hot path.  Long ones
 * (4 KiB each) are allocated on demand. */
BPF_HASH(pending_short, u32, struct open_state_short, 10240);
BPF_F_TABLE("hash", u32, struct open_state_long, pending_long, 4096, BPF_F_NO_PREALLOC);

static __always_inline int flags_wanted(u64 flags)
{
#ifdef FILTER_FLAGS
    if ((flags & (FILTER_FLAGS)) != (FILTER_FLAGS))
        return 0;
#endif
#ifdef FILTER_ACCMODE
    if ((flags & 3) != (FILTER_ACCMODE))
        return 0;
#endif
    return 1;
}

#ifdef FILTER_PATH
/* Byte by byte against the literal: unrolled, constant offsets, and the
 * first difference (the path's NUL included) ends it. */
static __always_inline int path_wanted(const char *path)
{
#pragma unroll
    for (int i = 0; i < sizeof(FILTER_PATH) - 1; i++) {
        if (path[i] != FILTER_PATH[i])
            return 0;
    }
    return 1;
}
#else
static __always_inline int path_wanted(const char *path) { return 1; }
#endif

/* Read the path into s->path; sets path_len and the status bits.
 * Returns 0 when the string could not be read. */
static __always_inline int read_path(struct open_state_long *s)
{
    const char *upath = (const char *)s->path_ptr;
    int n = bpf_probe_read_user_str(s->path, LONG_PATH, upath);
    if (n <= 0) {
        s->path[0] = 0;
        s->i.path_len = 0;
        return 0;
    }
    s->i.path_len = n - 1;
    if (n == LONG_PATH) {
        /* Exactly 4095 bytes, or cut: the byte after says which. */
        char next = 0;
        if (bpf_probe_read_user(&next, 1, upath + LONG_PATH - 1) < 0 || next)
            s->i.status |= ST_PATH_TRUNCATED;
    }
    return 1;
}

static __always_inline int read_how(struct open_state_long *s)
{
    struct open_how_user how = {};
    if (bpf_probe_read_user(&how, sizeof(how), (void *)s->how_ptr) < 0)
        return 0;
    s->i.flags = how.flags;
    s->i.mode = how.mode;
    s->i.resolve = how.resolve;
    return 1;
}

static __always_inline int enter(u16 syscall, s32 dirfd, const char *upath,
                                 u64 flags, u64 mode, const void *how, u64 usize)
{
    if (!current_wanted())
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    int zero = 0;
    struct open_state_long *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    s->i.flags = flags;
    s->i.mode = mode;
    s->i.resolve = 0;
    s->i.dirfd = dirfd;
    s->i.syscall = syscall;
    s->i.status = 0;
    s->i.pad = 0;
    s->path_ptr = (u64)upath;
    s->how_ptr = (u64)how;

    if (syscall == SYSCALL_OPENAT2) {
        if (usize < sizeof(struct open_how_user)) {
            s->i.flags = 0;             /* the call fails with EINVAL */
            s->i.mode = 0;
            s->i.status |= ST_HOW_SHORT;
        } else if (!read_how(s)) {
            s->i.flags = 0;
            s->i.mode = 0;
            s->i.status |= ST_HOW_FAULT;
        }
    }
    if (s->i.status & ST_HOW_SHORT) {
#if defined(FILTER_FLAGS) || defined(FILTER_ACCMODE)
        return 0;                       /* flags never known: can't be wanted */
#endif
    } else if (!(s->i.status & ST_HOW_FAULT) && !flags_wanted(s->i.flags)) {
        return 0;                       /* a faulted open_how is checked at exit */
    }

    if (read_path(s)) {
        if (!path_wanted(s->path))
            return 0;
    } else {
        s->i.status |= ST_PATH_FAULT;   /* try again at exit */
    }

    u32 tid = (u32)pid_tgid;
    int err;
    if (s->i.path_len < SHORT_PATH)
        err = pending_short.update(&tid, (struct open_state_short *)s);
    else
        err = pending_long.update(&tid, s);
    if (err < 0)
        count(STAT_MAP_FULL);
    return 0;
}

static __always_inline void emit(struct open_info *i, const char *path, long ret)
{
    u32 len = i->path_len;
    u64 seq = next_seq();
    if (len < SHORT_PATH) {
        struct open_event_short *e = reserve_event(sizeof(*e), seq);
        if (!e)
            return;
        e->ret = ret;
        __builtin_memcpy(&e->i, i, sizeof(e->i));
        /* path and its NUL: at most SHORT_PATH bytes */
        bpf_probe_read_kernel(e->path, (len & (SHORT_PATH - 1)) + 1, path);
        submit_event(e);
    } else {
        struct open_event_long *e = reserve_event(sizeof(*e), seq);
        if (!e)
            return;
        e->ret = ret;
        __builtin_memcpy(&e->i, i, sizeof(e->i));
        bpf_probe_read_kernel(e->path, (len & (LONG_PATH - 1)) + 1, path);
        submit_event(e);
    }
}

/* An entry whose path or open_how could not be read at entry: read them
 * now (the kernel has faulted the pages in), apply the filters that were
 * skipped, then emit. */
static __always_inline void emit_deferred(struct open_state_short *p, long ret)
{
    int zero = 0;
    struct open_state_long *s = scratch.lookup(&zero);
    if (!s)
        return;
    __builtin_memcpy(&s->i, &p->i, sizeof(s->i));
    s->path_ptr = p->path_ptr;
    s->how_ptr = p->how_ptr;
    s->path[0] = 0;
    if (s->i.status & ST_HOW_FAULT) {
        if (read_how(s))
            s->i.status &= ~ST_HOW_FAULT;
    }
    if (s->i.status & (ST_HOW_FAULT | ST_HOW_SHORT)) {
#if defined(FILTER_FLAGS) || defined(FILTER_ACCMODE)
        return;                         /* flags unknown: can't be wanted */
#endif
    } else if (!flags_wanted(s->i.flags)) {
        return;
    }
    if (s->i.status & ST_PATH_FAULT) {
        if (read_path(s))
            s->i.status = (s->i.status & ~ST_PATH_FAULT) | ST_PATH_AT_EXIT;
#ifdef FILTER_PATH
        else
            return;                     /* path unknown: can't match */
#endif
        if (!path_wanted(s->path))
            return;
    } else {
        bpf_probe_read_kernel(s->path, SHORT_PATH, p->path);
    }
    emit(&s->i, s->path, ret);
}

static __always_inline int exit_common(long ret)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    /* Cheap checks first: a filtered task has no entry to look up. */
    if (!task_wanted(pid_tgid, (u32)bpf_get_current_uid_gid()))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct open_state_short *p = pending_short.lookup(&tid);
    if (p) {
        if (!(FILTER_FAILED && ret >= 0)) {
            if (p->i.status & (ST_PATH_FAULT | ST_HOW_FAULT))
                emit_deferred(p, ret);
            else
                emit(&p->i, p->path, ret);
        }
        pending_short.delete(&tid);
        return 0;
    }
    struct open_state_long *l = pending_long.lookup(&tid);
    if (l) {
        if (!(FILTER_FAILED && ret >= 0))
            emit(&l->i, l->path, ret);
        pending_long.delete(&tid);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return enter(SYSCALL_OPEN, AT_FDCWD, (const char *)args->filename,
                 (u32)args->flags, (u16)args->mode, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return enter(SYSCALL_OPENAT, (s32)args->dfd, (const char *)args->filename,
                 (u32)args->flags, (u16)args->mode, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat2)
{
    return enter(SYSCALL_OPENAT2, (s32)args->dfd, (const char *)args->filename,
                 0, 0, (const void *)args->how, (u64)args->usize);
}

TRACEPOINT_PROBE(syscalls, sys_enter_creat)
{
    return enter(SYSCALL_CREAT, AT_FDCWD, (const char *)args->pathname,
                 O_CREAT | O_WRONLY | O_TRUNC, (u16)args->mode, 0, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return exit_common(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return exit_common(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return exit_common(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_creat)
{
    return exit_common(args->ret);
}
