/* exit.bpf.c: every process that ends by calling exit_group(2) (exit(3),
 * returning from main), with the status it passed.
 *
 *     rbtrace run exit.bpf.c
 *
 * An example of a probe of your own for rbtrace run (see rbtrace-run(8)):
 * one tracepoint, one event.  The parent sees code & 0xff as the exit
 * status.  Processes killed by a signal don't call exit_group and are not
 * reported.  Copy it and change it.
 */
#include "rbtrace.h"

struct exit_event {
    struct rb_header h;         /* always first: time, pid, comm... */
    s32 code;                   /* as passed to exit_group() */
};
RBTRACE_EVENT(exit_event);

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    struct exit_event *e = rbtrace_reserve(exit_event);
    if (!e)
        return 0;               /* filtered out (-p, -u, -n), or the ring is full */
    e->code = (s32)args->error_code;
    rbtrace_submit(e);
    return 0;
}
