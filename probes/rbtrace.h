/* rbtrace.h: the API of a probe of your own, for `rbtrace run FILE.bpf.c`.
 *
 * A probe file includes this header, declares its event structs and
 * hooks tracepoints; rbtrace compiles it with BCC, attaches it, reads the
 * ring buffer and decodes the records from the struct declarations:
 *
 *     #include "rbtrace.h"
 *
 *     struct kill_event {
 *         struct rb_header h;        // first: time, seq, pid, tid, ppid, uid, comm, cgroup
 *         s32 target;
 *         s32 sig;
 *     };
 *     RBTRACE_EVENT(kill_event);     // tells rbtrace the record layout
 *
 *     TRACEPOINT_PROBE(syscalls, sys_enter_kill)
 *     {
 *         struct kill_event *e = rbtrace_reserve(kill_event);
 *         if (!e)
 *             return 0;              // filtered out, or the ring is full
 *         e->target = args->pid;
 *         e->sig = args->sig;
 *         rbtrace_submit(e);
 *         return 0;
 *     }
 *
 * rbtrace_reserve() applies rbtrace's filters (-p, -u, -n and `-- CMD`),
 * reserves a record in the ring, counts it as dropped when the ring is
 * full, and fills in the header; rbtrace_submit() sends the record and
 * counts it.  Those counts make the loss accounting of rbtrace(8) exact,
 * so a record reserved must be submitted: decide what to skip before
 * reserving (rbtrace_task_wanted() and rbtrace_ret_wanted() help).
 * Calling events.ringbuf_reserve() or ringbuf_output() directly works,
 * but its drops are not counted (rbtrace says so when it starts).
 *
 * Everything here comes from common.h, rbtrace's own probes' header, which
 * this one includes: the ring buffer `events`, the per-CPU counters
 * `stats` with count(STAT_...), struct rb_header, RBTRACE_EVENT().
 * Options that change the code arrive as -D flags (FILTER_FAILED, FOLLOW),
 * all with defaults, so a probe file also compiles on its own; -p, -u and
 * -n are values read when the programs run (rbtrace_task_wanted()).
 *
 * The manual, with the rules for event structs and hooks: rbtrace-run(8).
 */
#ifndef RBTRACE_H
#define RBTRACE_H

#include "common.h"

/* Does the current task pass -p, -u, -n and `-- CMD`?  rbtrace_reserve()
 * asks for itself; ask first when the probe stores state for later (an
 * entry hook keeping arguments for the exit hook). */
static __always_inline int rbtrace_task_wanted(void)
{
    return current_wanted();
}

/* Does a call's return value pass -x (only failed calls, ret < 0)? */
static __always_inline int rbtrace_ret_wanted(long ret)
{
    return !(FILTER_FAILED && ret >= 0);
}

/* A record of `size` bytes beginning with struct rb_header, filled in;
 * 0 when the task is filtered out or the ring is full (counted). */
static __always_inline void *rbtrace_reserve_bytes(u32 size)
{
    if (!rbtrace_task_wanted())
        return 0;
    /* The number is taken before asking for space, so that a gap in the
     * delivered numbers is a record the full ring refused. */
    u64 seq = next_seq();
    return reserve_event(size, seq);
}

/* rbtrace_reserve(NAME): a struct NAME * ready to fill, or 0. */
#define rbtrace_reserve(name) \
    ((struct name *)rbtrace_reserve_bytes(sizeof(struct name)))

/* Send a record from rbtrace_reserve() to rbtrace, and count it. */
static __always_inline void rbtrace_submit(void *record)
{
    submit_event(record);
}

/* How rbtrace shows a member, when not as a number or a string:
 *   RBTRACE_HEX(NAME, MEMBER)    in hexadecimal, "0x7ffd12a0": pointers,
 *                                addresses, flag words;
 *   RBTRACE_BYTES(NAME, MEMBER)  its bytes in hexadecimal, "0a000001": a
 *                                u8 array that is not text.
 * MEMBER may be a path ("addr.sin_port"); the compiler checks it exists. */
#define RBTRACE_HEX(name, member) \
    _Static_assert(sizeof(((struct name *)0)->member) > 0, "RBTRACE_HEX")
#define RBTRACE_BYTES(name, member) \
    _Static_assert(sizeof(((struct name *)0)->member) > 0, "RBTRACE_BYTES")

/* For state kept between an entry and an exit hook: when it can't be
 * stored (the map is full), call this so the event counts as dropped. */
static __always_inline void rbtrace_count_map_full(void)
{
    count(STAT_MAP_FULL);
}

#endif
