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
 * With FULL_PATH (--full-path), a relative path also gets the directory it
 * is relative to, read in the kernel at the call: the caller's working
 * directory (task->fs->pwd) for AT_FDCWD, else the directory that dirfd
 * names (task->files->fdt->fd[dirfd]->f_path).  Its components follow the
 * path's NUL in path[], innermost first, each with its NUL (see dir_path()).
 * Reading /proc/PID/cwd when the event is decoded came too late for a
 * process that had exited by then (make's short-lived children, sh -c).
 *
 * Records are fixed-size (ringbuf_reserve needs a constant), so there are
 * two: open_event_short when the path, its NUL and the directory fit in
 * SHORT_PATH bytes, and open_event_long for the rest.  Only the used bytes
 * are copied; the rest of path[] is whatever the ring held before.
 */
#include "common.h"

#define SHORT_PATH 256             /* short record: path, NUL, dir <= 256 bytes */
#define LONG_PATH 4096             /* PATH_MAX, the NUL included */

#ifndef FULL_PATH
#define FULL_PATH 0                /* 1: --full-path, read the directory too */
#endif
#if FULL_PATH
#define DIR_BYTES 4096             /* the directory's components, NULs included */
#ifndef DIR_DEPTH
#define DIR_DEPTH 128              /* dentries and mounts walked for it */
#endif
#define NAME_BYTES 256             /* NAME_MAX + NUL: room past the end for a read */
#define DATA_BYTES (LONG_PATH + DIR_BYTES)
#else
#define NAME_BYTES 0
#define DATA_BYTES LONG_PATH
#endif
_Static_assert((DATA_BYTES & (DATA_BYTES - 1)) == 0, "DATA_BYTES masks a length: a power of 2");

#define AT_FDCWD -100
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000

/* -D flags from rbtrace/kinds/open.py (constants()), defined there only:
 *   SYSCALL_OPEN, _OPENAT, _OPENAT2, _CREAT   a record's `syscall` numbers
 * and a record's `status` bits:
 *   ST_PATH_TRUNCATED   longer than LONG_PATH - 1 bytes
 *   ST_PATH_FAULT       unreadable, at entry and at exit
 *   ST_HOW_FAULT        openat2's open_how unreadable
 *   ST_HOW_SHORT        openat2 usize < 24: no open_how
 *   ST_PATH_AT_EXIT     path read at exit (entry read faulted)
 *   ST_DIR              dir_len bytes of the directory's components follow
 *                       the path, up to its root
 *   ST_DIR_TRUNCATED    the same, but cut: deeper than DIR_DEPTH or longer
 *                       than DIR_BYTES; the innermost components are there
 *   ST_DIR_DELETED      the directory had been removed */
#if !defined(SYSCALL_OPEN) || !defined(SYSCALL_OPENAT) || !defined(SYSCALL_OPENAT2) || \
    !defined(SYSCALL_CREAT)
#error "SYSCALL_* come from rbtrace/kinds/open.py"
#endif
#if !defined(ST_PATH_TRUNCATED) || !defined(ST_PATH_FAULT) || !defined(ST_HOW_FAULT) || \
    !defined(ST_HOW_SHORT) || !defined(ST_PATH_AT_EXIT) || !defined(ST_DIR) || \
    !defined(ST_DIR_TRUNCATED) || !defined(ST_DIR_DELETED)
#error "the ST_* status bits come from rbtrace/kinds/open.py"
#endif

/* -D flags set by rbtrace/kinds/open.py for the filters:
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
    u32 dir_len;                   /* FULL_PATH: bytes after the path's NUL */
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
    char path[DATA_BYTES];
};

/* Entry state.  The short one is a prefix of the long one, so an entry
 * built in the long scratch is stored in pending_short by copying only its
 * first sizeof(struct open_state_short) bytes. */
struct open_state_long {
    struct open_info i;
    u64 path_ptr;                  /* user pointers, for reads at exit */
    u64 how_ptr;
    char path[DATA_BYTES];
#if FULL_PATH
    char spill[NAME_BYTES];        /* a name read past DIR_BYTES lands here */
    u64 walk_dentry;               /* dir_path()'s loop state: see there */
    u64 walk_mnt;                  /* struct mount * */
    u64 walk_mnt_root;             /* its root dentry */
#endif
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
 * (4 KiB each, 8.25 KiB with FULL_PATH) are allocated on demand. */
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

#if FULL_PATH
#ifndef TASK_FS_OFF
#error "the fs, files, path and mount offsets must come from the running kernel's BTF"
#endif


/* The directory a relative path of this call is resolved against, as
 * components appended after the path's NUL: innermost first, each with its
 * NUL, up to the root of the caller's mount namespace.  The walk is the
 * one d_path() makes (fs/d_path.c prepend_path): up d_parent, and from the
 * root dentry of a mount to its mountpoint in the parent mount, until a
 * mount that has no parent.  It does not stop at the caller's root
 * (chroot): like /proc/PID/cwd read from the host, the path is the one
 * seen from the namespace's root.
 *
 * Kernel structs are read with the running kernel's BTF offsets.  Nothing
 * is locked: a rename racing with the call may give a mixed path, as it
 * may for any reader of /proc.  Cost, measured on 6.18: about 55 ns per
 * level walked (benchmarks/full_path.py). */
static __always_inline void dir_path(struct open_state_long *s)
{
    void *task = (void *)bpf_get_current_task();
    void *vfsmnt, *dentry;
    s32 dirfd = s->i.dirfd;
    if (dirfd == AT_FDCWD) {
        void *fs = kernel_ptr(task, TASK_FS_OFF);
        if (!fs)
            return;                /* an exiting task: no fs any more */
        vfsmnt = kernel_ptr(fs, FS_PWD_OFF + PATH_MNT_OFF);
        dentry = kernel_ptr(fs, FS_PWD_OFF + PATH_DENTRY_OFF);
    } else {
        /* EBADF, ENOTDIR, or a pipe, socket...: no directory */
        void *file = current_fd_file(dirfd, S_IFDIR);
        if (!file)
            return;
        vfsmnt = kernel_ptr(file, FILE_F_PATH_OFF + PATH_MNT_OFF);
        dentry = kernel_ptr(file, FILE_F_PATH_OFF + PATH_DENTRY_OFF);
    }
    if (!vfsmnt || !dentry)
        return;

    /* d_unlinked(): unhashed, and not the root of its tree.  The walk still
     * gives where it was (its d_parent is kept), as /proc adds
     * " (deleted)" to it. */
    void *pprev = kernel_ptr(dentry, DENTRY_D_HASH_OFF + sizeof(void *));
    if (!pprev && kernel_ptr(dentry, DENTRY_D_PARENT_OFF) != dentry)
        s->i.status |= ST_DIR_DELETED;

    /* The loop's state (where the walk is, how many bytes are kept) lives
     * in the map value, not in registers: loaded back as unknown values,
     * every way into an iteration (cwd or dirfd, a mount crossed or a
     * dentry climbed) is one verifier state.  The verifier then processes
     * about 145 instructions per level, 18.5k per program with DIR_DEPTH
     * 128 (42.5k with the state in registers; 1M is its limit). */
    s->walk_dentry = (u64)dentry;
    s->walk_mnt = (u64)vfsmnt - MOUNT_MNT_OFF;           /* container_of */
    s->walk_mnt_root = (u64)kernel_ptr(vfsmnt, VFSMOUNT_MNT_ROOT_OFF);
#pragma clang loop unroll(disable)
    for (int depth = 0; depth < DIR_DEPTH; depth++) {
        dentry = (void *)s->walk_dentry;
        if ((u64)dentry == s->walk_mnt_root) {
            void *mnt = (void *)s->walk_mnt;
            void *parent = kernel_ptr(mnt, MOUNT_MNT_PARENT_OFF);
            if (!parent || parent == mnt) {
                s->i.status |= ST_DIR;                    /* the namespace's root */
                return;
            }
            s->walk_dentry = (u64)kernel_ptr(mnt, MOUNT_MNT_MOUNTPOINT_OFF);
            s->walk_mnt = (u64)parent;
            s->walk_mnt_root = (u64)kernel_ptr(parent, MOUNT_MNT_OFF + VFSMOUNT_MNT_ROOT_OFF);
            continue;
        }
        /* d_parent and d_name.name, in one read when they are close (they
         * are 16 bytes apart on 6.18): each helper call costs. */
        void *up, *name;
#if DENTRY_D_NAME_OFF + QSTR_NAME_OFF > DENTRY_D_PARENT_OFF && \
    DENTRY_D_NAME_OFF + QSTR_NAME_OFF - DENTRY_D_PARENT_OFF <= 56
#define NAME_FROM_PARENT (DENTRY_D_NAME_OFF + QSTR_NAME_OFF - DENTRY_D_PARENT_OFF)
        u64 pair[NAME_FROM_PARENT / 8 + 1] = {};
        bpf_probe_read_kernel(pair, sizeof(pair), (char *)dentry + DENTRY_D_PARENT_OFF);
        up = (void *)pair[0];
        __builtin_memcpy(&name, (char *)pair + NAME_FROM_PARENT, sizeof(name));
#else
        up = kernel_ptr(dentry, DENTRY_D_PARENT_OFF);
        name = kernel_ptr(dentry, DENTRY_D_NAME_OFF + QSTR_NAME_OFF);
#endif
        if (!up || up == dentry) {
            s->i.status |= ST_DIR;   /* a root that is not a mount's root: d_path stops too */
            return;
        }
        /* Where the name goes: after the path, its NUL and the names so
         * far.  A branch that leaves the loop bounds it for the verifier
         * (a clamp would split every later iteration in two states). */
        u64 at = (u64)s->i.path_len + 1 + s->i.dir_len;
        if (at >= DATA_BYTES)
            break;
        /* Read first, into the spill past the end if need be; keep the
         * name only if it fits in DIR_BYTES. */
        long n = bpf_probe_read_kernel_str(&s->path[at], NAME_BYTES, name);
        if (n <= 0 || (u64)s->i.dir_len + n > DIR_BYTES)
            break;
        s->i.dir_len += n;
        s->walk_dentry = (u64)up;
    }
    s->i.status |= ST_DIR_TRUNCATED;
}

/* Only a relative path is resolved against a directory; an empty one
 * fails (ENOENT) and a cut one too (ENAMETOOLONG). */
static __always_inline void dir_path_if_relative(struct open_state_long *s)
{
    if (s->path[0] && s->path[0] != '/' && !(s->i.status & ST_PATH_TRUNCATED))
        dir_path(s);
}
#else
static __always_inline void dir_path_if_relative(struct open_state_long *s) {}
#endif

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
    s->i.dir_len = 0;
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
        dir_path_if_relative(s);        /* the directory as it is now, at entry */
    } else {
        s->i.status |= ST_PATH_FAULT;   /* try again at exit */
    }

    u32 tid = (u32)pid_tgid;
    int err;
    if ((u64)s->i.path_len + 1 + s->i.dir_len <= SHORT_PATH)
        err = pending_short.update(&tid, (struct open_state_short *)s);
    else
        err = pending_long.update(&tid, s);
    if (err < 0)
        count(STAT_MAP_FULL);
    return 0;
}

static __always_inline void emit(struct open_info *i, const char *path, long ret)
{
    /* The path, its NUL and the directory's components (FULL_PATH). */
    u64 used = (u64)i->path_len + 1 + i->dir_len;
    u64 seq = next_seq();
    if (used <= SHORT_PATH) {
        struct open_event_short *e = reserve_event(sizeof(*e), seq);
        if (!e)
            return;
        e->ret = ret;
        __builtin_memcpy(&e->i, i, sizeof(e->i));
        bpf_probe_read_kernel(e->path, ((used - 1) & (SHORT_PATH - 1)) + 1, path);
        submit_event(e);
    } else {
        struct open_event_long *e = reserve_event(sizeof(*e), seq);
        if (!e)
            return;
        e->ret = ret;
        __builtin_memcpy(&e->i, i, sizeof(e->i));
        bpf_probe_read_kernel(e->path, ((used - 1) & (DATA_BYTES - 1)) + 1, path);
        submit_event(e);
    }
}

/* An entry whose path or open_how could not be read at entry: read them
 * now (the kernel has faulted the pages in), apply the filters that were
 * skipped, then emit.  A path read only now gets its directory (FULL_PATH)
 * now too: the same one unless another thread sharing the caller's fs
 * changed directory during the call. */
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
        s->i.dir_len = 0;
        dir_path_if_relative(s);
    } else {
        bpf_probe_read_kernel(s->path, SHORT_PATH, p->path);
    }
    emit(&s->i, s->path, ret);
}

/* For an entry kept with an unread open_how: read it now and apply the
 * flag filters skipped at entry.  0: not wanted. */
static __always_inline int how_wanted_at_exit(struct open_state_long *s)
{
    if (s->i.status & ST_HOW_FAULT) {
        if (read_how(s))
            s->i.status &= ~ST_HOW_FAULT;
        else {
#if defined(FILTER_FLAGS) || defined(FILTER_ACCMODE)
            return 0;                   /* flags unknown: can't be wanted */
#endif
            return 1;
        }
        return flags_wanted(s->i.flags);
    }
    return 1;
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
    /* A long entry has its path (a faulted one is empty, hence short);
     * only openat2's open_how may be left to read. */
    struct open_state_long *l = pending_long.lookup(&tid);
    if (l) {
        if (!(FILTER_FAILED && ret >= 0) && how_wanted_at_exit(l))
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
