/* signal.bpf.c: every signal delivered to a process, with how it is
 * handled.
 *
 *     rbtrace run signal.bpf.c
 *
 * An example of a probe of your own for rbtrace run (see rbtrace-run(8)):
 * members shown in hexadecimal.  The event's pid and comm are the process
 * that receives the signal (the tracepoint fires in it).  Copy it and
 * change it.
 */
#include "rbtrace.h"

struct signal_event {
    struct rb_header h;         /* always first: time, pid, comm... */
    u64 handler;                /* 0 SIG_DFL, 1 SIG_IGN, else the handler's address */
    u64 sa_flags;               /* SA_* flags of the action */
    s32 sig;
    s32 code;                   /* si_code: SI_USER 0, SI_KERNEL 0x80, SI_TKILL -6... */
};
RBTRACE_EVENT(signal_event);
RBTRACE_HEX(signal_event, handler);
RBTRACE_HEX(signal_event, sa_flags);

TRACEPOINT_PROBE(signal, signal_deliver)
{
    struct signal_event *e = rbtrace_reserve(signal_event);
    if (!e)
        return 0;
    e->handler = args->sa_handler;
    e->sa_flags = args->sa_flags;
    e->sig = args->sig;
    e->code = args->code;
    rbtrace_submit(e);
    return 0;
}
