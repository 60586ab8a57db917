/*
 * The types of drivers.user.tcp._tcpfast and the helpers both halves use: big-endian
 * and little-endian stores, RFC 1071 sums, sequence-space differences, the clock.
 * Included once, by _tcpfast.c.
 */
#ifndef TCPFAST_TYPES_H
#define TCPFAST_TYPES_H

typedef struct {
    PyObject_HEAD
    PyObject *out, *send, *pump, *flows, *touched;
    long long rcvbuf, sndbuf;
    double delack, idle_timeout;
    long long frames_in, reads, acks, frames_out;
    unsigned char *rbuf;
} CacheObject;

typedef struct {
    PyObject_HEAD
    CacheObject *cache;
    PyObject *key, *sock, *buf, *on_slow, *on_deadline, *leftover;
    int fd;
    unsigned char tpl[TPL_LEN];
    long long ip_base, pseudo;
    char lent, touched, unsent;
    double now, last_activity, delack_at, rtx_at, rtt_time, rto, srtt, rttvar, rto_min,
        rto_max, reported;
    long long rcv_nxt, rcv_adv, rcv_acked, ack_pending, max_guest_flight, rcv_ws, rcv_mss,
        ack_threshold, quick_ack, snd_una, snd_nxt, snd_wnd, max_snd_wnd, snd_wl1, snd_wl2,
        snd_ws, snd_mss, max_burst, cwnd, ssthresh, rtt_seq, held, err, window_updates;
} FlowObject;

static PyTypeObject CacheType;
static PyTypeObject FlowType;

/* ------------------------------------------------------------------ helpers */

/* 0 when __init__ has run (its last step allocates the read buffer) and the GC has not
 * cleared the cache; else -1 with RuntimeError: a cache made by __new__ alone is refused
 * rather than read through NULL pointers. */
static int
cache_ready(CacheObject *c)
{
    if (c->rbuf != NULL && c->out != NULL && c->send != NULL && c->pump != NULL
        && c->flows != NULL && c->touched != NULL)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "FlowCache.__init__ was not called");
    return -1;
}

/* A window-scale shift as RFC 7323 allows it (0..14): the shifts stay defined in C
 * whatever was stored. */
static long long
wscale(long long ws)
{
    return ws < 0 ? 0 : ws > 14 ? 14 : ws;
}

static long long
fold(long long total)
{
    while (total >> 16)
        total = (total & 0xFFFF) + (total >> 16);
    return total;
}

static long long
sum16(const unsigned char *p, Py_ssize_t n)
{
    long long total = 0;
    Py_ssize_t i;
    for (i = 0; i + 1 < n; i += 2)
        total += (p[i] << 8) | p[i + 1];
    if (n & 1)
        total += p[n - 1] << 8;
    return total;
}

static long long
seq_diff(long long a, long long b)
{
    return ((a - b + 0x80000000LL) & M32) - 0x80000000LL;
}

static unsigned
be16(const unsigned char *p)
{
    return (unsigned)(p[0] << 8) | p[1];
}

static long long
be32(const unsigned char *p)
{
    return ((long long)p[0] << 24) | ((long long)p[1] << 16) | (p[2] << 8) | p[3];
}

static void
put_be16(unsigned char *p, long long v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void
put_le16(unsigned char *p, long long v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void
put_be32(unsigned char *p, long long v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
