/* rbtrace tcp: TCP connections, from connect or accept to close.
 *
 * Tracepoints only (kprobes and fentry do not load on every kernel rbtrace
 * runs on, so not tcp_v4_connect as BCC's tcpconnect hooks it):
 *
 * sys_enter_connect  a wanted task connects a TCP socket: remember the
 *     socket (struct sock *, from the fd) in `conns` with the caller as its
 *     owner, and the call in `pending`, keyed by tid.
 * sock:inet_sock_set_state  fires for every TCP state change on the host,
 *     often in softirq context, where the current task is whoever was
 *     interrupted.  Only sockets found in `conns` matter; their events are
 *     attributed to the remembered owner, not to the current task.
 *     SYN_SENT -> ESTABLISHED or CLOSE is the connect's outcome; -> CLOSE
 *     of an established connection is its end (the `close` event).
 * sys_exit_connect  the syscall's result: one `connect` event (source 0).
 *     EINPROGRESS (non-blocking) or EINTR: the outcome follows as a second
 *     `connect` event (source 1) when the state changes.
 * sys_exit_accept, sys_exit_accept4  an accepted TCP connection: `accept`
 *     event, and the socket remembered with the acceptor as its owner.
 *
 * Kernel structs (the fd table, struct socket, struct sock, tcp_sock) are
 * read with offsets from the running kernel's BTF, passed as -D flags by
 * rbtrace/kinds/tcp.py.
 *
 * A connection's filters (--port, --addr, -x) are decided once, when the
 * connect or accept returns (the local port of a connect is chosen inside
 * the call); a connection that is not wanted is forgotten then, so its
 * later events cost one failed map lookup.
 */
#include "common.h"

#ifndef CONNS_MAX
#define CONNS_MAX 16384            /* connections remembered at once */
#endif
#ifndef FILTER_PORT
#define FILTER_PORT 0              /* 0: any; else the local or remote port */
#endif
#ifndef FILTER_ADDR_FAMILY
#define FILTER_ADDR_FAMILY 0       /* 0: any; AF_INET/AF_INET6: the local or remote
                                      address is FILTER_ADDR_LO:HI (bytes as in
                                      memory, read as two little-endian u64) */
#define FILTER_ADDR_LO 0
#define FILTER_ADDR_HI 0
#endif

#ifndef SOCK_SK_PROTOCOL_OFF
#error "the socket, sock and tcp_sock offsets must come from the running kernel's BTF"
#endif

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOCK_STREAM 1
#define EINTR 4
#define ECONNABORTED 103
#define EINPROGRESS 115

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

/* Event kinds and connect sources, EV_* and SRC_*: -D flags from
   rbtrace/kinds/tcp.py (EVENTS, SOURCES), the one copy. */
#ifndef EV_CONNECT
#error "EV_* and SRC_* come from rbtrace/kinds/tcp.py as -D flags"
#endif

/* conn flags */
#define C_IN_CONNECT 1             /* a connect() on it is running */
#define C_PENDING 2                /* EINPROGRESS returned: the outcome is awaited */
#define C_OUTCOME 4                /* outcome seen during the connect() */
#define C_ESTABLISHED 8            /* report its close */

struct tcp_tuple {
    u8 saddr[16];                  /* IPv4: the first 4 bytes */
    u8 daddr[16];
    u16 sport;                     /* host byte order */
    u16 dport;
    u16 family;                    /* AF_INET or AF_INET6 */
    u16 pad;
};

struct tcp_event {
    struct rb_header h;            /* the owner for events in softirq context */
    s64 ret;                       /* connect: 0 or -errno */
    u64 duration_ns;               /* close: since the connect or accept call */
    u64 tx_bytes;                  /* close: tcp_sock.bytes_acked */
    u64 rx_bytes;                  /* close: tcp_sock.bytes_received */
    u64 sock;                      /* struct sock *: ties a connection's events */
    struct tcp_tuple t;
    u8 kind;                       /* EV_* */
    u8 source;                     /* connect: SRC_* */
    u16 pad[3];
};

struct conn {
    struct rb_header owner;        /* who connected or accepted */
    u64 start_ns;
    s64 ret;                       /* the outcome, when C_OUTCOME */
    struct tcp_tuple t;
    u32 flags;
    u32 pad;
};

RBTRACE_EVENT(tcp_event);

BPF_HASH(conns, u64, struct conn, CONNS_MAX);
BPF_HASH(pending, u32, u64, 10240);        /* tid -> sock of a running connect() */
BPF_PERCPU_ARRAY(scratch, struct conn, 1);

/* The struct sock of a TCP socket fd of the current task, else 0:
 * task->files->fdt->fd[fd]->private_data (a struct socket when the inode
 * is a socket's), then socket->sk. */
static __always_inline void *tcp_sock_of_fd(long fd)
{
    void *file = current_fd_file(fd, S_IFSOCK);
    if (!file)
        return 0;
    void *socket = kernel_ptr(file, FILE_PRIVATE_DATA_OFF);
    void *sk = kernel_ptr(socket, SOCKET_SK_OFF);
    if (!sk)
        return 0;
    u16 protocol = 0, type = 0, family = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), (char *)sk + SOCK_SK_PROTOCOL_OFF);
    bpf_probe_read_kernel(&type, sizeof(type), (char *)sk + SOCK_SK_TYPE_OFF);
    bpf_probe_read_kernel(&family, sizeof(family), (char *)sk + SKC_FAMILY_OFF);
    if (protocol != IPPROTO_TCP || type != SOCK_STREAM ||
        (family != AF_INET && family != AF_INET6))
        return 0;
    return sk;
}

/* The local address and port of a socket, as they are now. */
static __always_inline void read_local(void *sk, struct tcp_tuple *t)
{
    u16 num = 0;
    bpf_probe_read_kernel(&num, sizeof(num), (char *)sk + SKC_NUM_OFF);
    t->sport = num;                                /* skc_num: host order */
    if (t->family == AF_INET6)
        bpf_probe_read_kernel(t->saddr, 16, (char *)sk + SKC_V6_RCV_SADDR_OFF);
    else
        bpf_probe_read_kernel(t->saddr, 4, (char *)sk + SKC_RCV_SADDR_OFF);
}

static __always_inline void read_remote(void *sk, struct tcp_tuple *t)
{
    u16 dport = 0;
    bpf_probe_read_kernel(&dport, sizeof(dport), (char *)sk + SKC_DPORT_OFF);
    t->dport = __builtin_bswap16(dport);           /* skc_dport: network order */
    if (t->family == AF_INET6)
        bpf_probe_read_kernel(t->daddr, 16, (char *)sk + SKC_V6_DADDR_OFF);
    else
        bpf_probe_read_kernel(t->daddr, 4, (char *)sk + SKC_DADDR_OFF);
}

#if FILTER_ADDR_FAMILY
static __always_inline int addr_is(const u8 *a)
{
    u64 w[2];
    __builtin_memcpy(w, a, sizeof(w));
    if (FILTER_ADDR_FAMILY == AF_INET)
        return (w[0] & 0xffffffffULL) == (u64)FILTER_ADDR_LO;
    return w[0] == (u64)FILTER_ADDR_LO && w[1] == (u64)FILTER_ADDR_HI;
}
#endif

/* --port, --addr: either end of the connection. */
static __always_inline int tuple_wanted(const struct tcp_tuple *t)
{
    if (FILTER_PORT && t->sport != FILTER_PORT && t->dport != FILTER_PORT)
        return 0;
#if FILTER_ADDR_FAMILY
    if (t->family != FILTER_ADDR_FAMILY)
        return 0;
    if (!addr_is(t->saddr) && !addr_is(t->daddr))
        return 0;
#endif
    return 1;
}

/* A record whose header is `owner`'s, stamped now. */
static __always_inline struct tcp_event *reserve_owned(const struct rb_header *owner, u64 seq)
{
    struct tcp_event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        count(STAT_RINGBUF_FULL);
        return 0;
    }
    __builtin_memcpy(&e->h, owner, sizeof(e->h));
    e->h.ts_ns = bpf_ktime_get_ns();
    e->h.seq = seq;
    return e;
}

static __always_inline void emit(const struct rb_header *owner, u8 kind, u8 source, s64 ret,
                                 void *sk, const struct tcp_tuple *t)
{
    u64 seq = next_seq();
    struct tcp_event *e = reserve_owned(owner, seq);
    if (!e)
        return;
    e->ret = ret;
    e->duration_ns = 0;
    e->tx_bytes = 0;
    e->rx_bytes = 0;
    e->sock = (u64)sk;
    __builtin_memcpy(&e->t, t, sizeof(e->t));
    e->kind = kind;
    e->source = source;
    submit_event(e);
}

/* The connect's outcome, after EINPROGRESS (or EINTR) was returned. */
static __always_inline void outcome(struct conn *c, u64 sk)
{
    if (!FILTER_FAILED || c->ret < 0)
        emit(&c->owner, EV_CONNECT, SRC_STATE, c->ret, (void *)sk, &c->t);
    if (c->ret < 0 || FILTER_FAILED) {
        conns.delete(&sk);
        return;
    }
    c->flags = (c->flags & ~(C_PENDING | C_OUTCOME)) | C_ESTABLISHED;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    if (!current_wanted())
        return 0;
    u64 sk = (u64)tcp_sock_of_fd((long)(int)args->fd);
    if (!sk)
        return 0;
    u16 family = 0;
    bpf_probe_read_user(&family, sizeof(family), (void *)args->uservaddr);
    if (family != AF_INET && family != AF_INET6)
        return 0;                  /* AF_UNSPEC dissolves an association: no connection */
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct conn *old = conns.lookup(&sk);
    if (old) {
        /* Connected, or a connect in progress: a second call (EISCONN,
         * EALREADY) is reported, and the connection stays as it is. */
        old->flags |= C_IN_CONNECT;
    } else {
        int zero = 0;
        struct conn *c = scratch.lookup(&zero);
        if (!c)
            return 0;
        __builtin_memset(c, 0, sizeof(*c));
        fill_header(&c->owner, 0);
        c->start_ns = c->owner.ts_ns;
        c->t.family = family;
        /* the destination as the caller gave it: sockaddr_in's and
         * sockaddr_in6's port are both at offset 2, network order */
        u16 port = 0;
        bpf_probe_read_user(&port, sizeof(port), (char *)args->uservaddr + 2);
        c->t.dport = __builtin_bswap16(port);
        if (family == AF_INET)
            bpf_probe_read_user(c->t.daddr, 4, (char *)args->uservaddr + 4);
        else
            bpf_probe_read_user(c->t.daddr, 16, (char *)args->uservaddr + 8);
        c->flags = C_IN_CONNECT;
        if (conns.update(&sk, c) < 0) {
            count(STAT_MAP_FULL);  /* this connection is not traced: one loss */
            return 0;
        }
    }
    if (pending.update(&tid, &sk) < 0) {
        count(STAT_MAP_FULL);
        conns.delete(&sk);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *skp = pending.lookup(&tid);
    if (!skp)
        return 0;
    u64 sk = *skp;
    pending.delete(&tid);
    struct conn *c = conns.lookup(&sk);
    if (!c)
        return 0;
    c->flags &= ~C_IN_CONNECT;
    s64 ret = args->ret;
    int was_connected = c->flags & (C_ESTABLISHED | C_PENDING);
    struct tcp_tuple t;
    __builtin_memcpy(&t, &c->t, sizeof(t));
    if (!(c->flags & C_OUTCOME) && !was_connected) {
        /* The outcome, when seen during the call, saved the tuple; else the
         * local end is the socket's now (port chosen, or 0 on an early
         * failure).  The destination stays the caller's. */
        read_local((void *)sk, &t);
        __builtin_memcpy(&c->t, &t, sizeof(t));
    }
    if (!tuple_wanted(&t)) {
        conns.delete(&sk);
        return 0;
    }
    /* Interrupted by a signal, the call sees ERESTARTSYS (512) and the
     * like, which become EINTR or a restarted call: the handshake goes on. */
    int in_progress = ret == -EINPROGRESS || ret == -EINTR || (ret <= -512 && ret >= -516);
    if (!FILTER_FAILED || (ret < 0 && !in_progress)) {
        struct rb_header h;
        fill_header(&h, 0);
        emit(&h, EV_CONNECT, SRC_SYSCALL, ret, (void *)sk, &t);
    }
    if (was_connected)
        return 0;                  /* EISCONN, EALREADY: nothing changes */
    if (in_progress) {
        if (c->flags & C_OUTCOME)
            outcome(c, sk);        /* the handshake ended inside the call */
        else
            c->flags |= C_PENDING;
    } else if (ret == 0 && !FILTER_FAILED) {
        c->flags = (c->flags & ~C_OUTCOME) | C_ESTABLISHED;
    } else {
        conns.delete(&sk);         /* failed (or not wanted with -x): no close */
    }
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    struct conn *c = conns.lookup(&sk);
    if (!c)
        return 0;
    int newstate = args->newstate;
    struct tcp_tuple t = {};
    t.family = args->family;
    t.sport = args->sport;
    t.dport = args->dport;
    if (t.family == AF_INET6) {
        __builtin_memcpy(t.saddr, args->saddr_v6, 16);
        __builtin_memcpy(t.daddr, args->daddr_v6, 16);
    } else {
        __builtin_memcpy(t.saddr, args->saddr, 4);
        __builtin_memcpy(t.daddr, args->daddr, 4);
    }
    if (args->oldstate == TCP_SYN_SENT &&
        (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE)) {
        /* The tuple before tcp_done() clears the local port (a refused
         * connect's socket has sport 0 when the call returns).  sk_err is
         * set before the state changes (tcp_done_with_error()). */
        __builtin_memcpy(&c->t, &t, sizeof(t));
        int err = 0;
        if (newstate == TCP_CLOSE)
            bpf_probe_read_kernel(&err, sizeof(err), (char *)sk + SOCK_SK_ERR_OFF);
        /* No error: the owner closed the socket before the handshake
         * ended; reported as ECONNABORTED. */
        c->ret = newstate == TCP_ESTABLISHED ? 0 : -(s64)(err ? err : ECONNABORTED);
        if (c->flags & C_IN_CONNECT)
            c->flags |= C_OUTCOME; /* sys_exit_connect reports it */
        else if (c->flags & C_PENDING)
            outcome(c, sk);
        else if (newstate == TCP_CLOSE)
            conns.delete(&sk);
        return 0;
    }
    if (newstate != TCP_CLOSE || (c->flags & C_IN_CONNECT))
        return 0;
    if (c->flags & C_ESTABLISHED) {
        u64 seq = next_seq();
        struct tcp_event *e = reserve_owned(&c->owner, seq);
        if (e) {
            e->ret = 0;
            e->duration_ns = e->h.ts_ns - c->start_ns;
            e->tx_bytes = 0;
            e->rx_bytes = 0;
            bpf_probe_read_kernel(&e->tx_bytes, 8, (char *)sk + TCP_BYTES_ACKED_OFF);
            bpf_probe_read_kernel(&e->rx_bytes, 8, (char *)sk + TCP_BYTES_RECEIVED_OFF);
            e->sock = sk;
            __builtin_memcpy(&e->t, &t, sizeof(t));
            e->kind = EV_CLOSE;
            e->source = 0;
            submit_event(e);
        }
    }
    conns.delete(&sk);
    return 0;
}

static __always_inline int accepted(long ret)
{
    if (FILTER_FAILED || ret < 0)
        return 0;                  /* -x: failed connects only */
    if (!current_wanted())
        return 0;
    u64 sk = (u64)tcp_sock_of_fd(ret);
    if (!sk)
        return 0;
    int zero = 0;
    struct conn *c = scratch.lookup(&zero);
    if (!c)
        return 0;
    __builtin_memset(c, 0, sizeof(*c));
    bpf_probe_read_kernel(&c->t.family, sizeof(c->t.family), (char *)sk + SKC_FAMILY_OFF);
    read_local((void *)sk, &c->t);
    read_remote((void *)sk, &c->t);
    if (!tuple_wanted(&c->t))
        return 0;
    fill_header(&c->owner, 0);
    c->start_ns = c->owner.ts_ns;
    c->flags = C_ESTABLISHED;
    u8 state = 0;
    bpf_probe_read_kernel(&state, sizeof(state), (char *)sk + SKC_STATE_OFF);
    /* Already closed (reset before the accept): there is no close to
     * wait for, and an entry would stay forever. */
    if (state != TCP_CLOSE && conns.update(&sk, c) < 0)
        count(STAT_MAP_FULL);      /* its close will not be reported: one loss */
    emit(&c->owner, EV_ACCEPT, 0, 0, (void *)sk, &c->t);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept)
{
    return accepted(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept4)
{
    return accepted(args->ret);
}
