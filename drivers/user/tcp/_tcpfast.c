/*
 * drivers.user.tcp._tcpfast: the established-flow fast path of guest TCP in C.
 *
 * The compiled twin of drivers/user/tcp/fastflow.py, which is the reference for
 * behaviour (its docstring says what is taken, what declines and why); this
 * file follows it statement by statement. drivers/user/tcp/lending.py moves a
 * connection's state between its TcpEndpoint and a Flow here (member
 * descriptors with the twin's names), so the machine stays the one place for
 * everything but the steady state.
 *
 * What it owns:
 *   - FlowCache: the lent flows of one netdev (a dict keyed by 12 wire bytes),
 *     guest_frames() over a batch of guest frames behind virtio-net headers,
 *     flush() for the ACKs owed at the end of a batch, a read scratch buffer;
 *   - Flow: one connection while lent; readable() is its host socket's asyncio
 *     reader callback.
 *
 * Memory safety: a guest frame is only read within the length of its buffer:
 * every offset is checked against that length before use (the Ethernet, IPv4
 * and TCP headers are fixed-size here, 66 bytes, checked once; the payload
 * end comes from the IPv4 total length, checked against the buffer). Frames we
 * build are sized before they are written. Python objects we call back into
 * (on_slow, on_deadline, send, pump) may change anything: every object used
 * after such a call is held by a reference of ours.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define M32 0xFFFFFFFFLL
#define VNET_LEN 12
#define IP_OFF (VNET_LEN + 14)
#define TCP_OFF (IP_OFF + 20)
#define TPL_LEN (TCP_OFF + 20)
#define ETH_ZLEN 60
#define NEEDS_CSUM 1
#define GSO_TCPV4 1
#define F_ACK 0x10
#define F_PSH 0x08
#define READ_MAX (256 * 1024)
#define READS_PER_WAKEUP 4
#define GRANULARITY 0.001

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

/* ---------------------------------------------------------------- the flow */

static double
flow_deadline(FlowObject *f)
{
    double best = f->last_activity + f->cache->idle_timeout;
    if (f->rtx_at < best)
        best = f->rtx_at;
    if (f->delack_at < best)
        best = f->delack_at;
    return best;
}

/* The fast path moved the deadline earlier: record it and tell the splicer. */
static int
check_deadline(FlowObject *f)
{
    double when = flow_deadline(f);
    if (when < f->reported) {
        f->reported = when;
        PyObject *r = PyObject_CallNoArgs(f->on_deadline);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static long long
window(FlowObject *f, int ack_sent)
{
    if (ack_sent) {
        f->rcv_acked = f->rcv_nxt;
        f->ack_pending = 0;
        f->delack_at = INFINITY;
    }
    long long ws = f->rcv_ws;
    long long rcvbuf = f->cache->rcvbuf;
    long long free_ = rcvbuf - f->held;
    if (free_ < f->rcv_mss && free_ < rcvbuf / 2)
        free_ = 0;
    long long raw = free_ >> ws;
    if (raw > 0xFFFF)
        raw = 0xFFFF;
    long long edge = f->rcv_nxt + (raw << ws);
    if (edge >= f->rcv_adv) {
        f->rcv_adv = edge;
        return raw;
    }
    long long room = f->rcv_adv - f->rcv_nxt;
    if (room < 0)
        room = 0;
    room >>= ws;
    return room > 0xFFFF ? 0xFFFF : room;
}

/* FrameBuilder.frame / burst for a segment without options. */
static PyObject *
build_frame(FlowObject *f, long long seq, int flags, long long wnd, const unsigned char *data,
            Py_ssize_t plen)
{
    Py_ssize_t len = TPL_LEN + plen;
    Py_ssize_t outlen = len - VNET_LEN < ETH_ZLEN ? ETH_ZLEN + VNET_LEN : len;
    PyObject *b = PyBytes_FromStringAndSize(NULL, outlen);
    if (b == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(b);
    memcpy(p, f->tpl, TPL_LEN);
    if (plen)
        memcpy(p + TPL_LEN, data, (size_t)plen);
    if (outlen > len)
        memset(p + len, 0, (size_t)(outlen - len));
    int gso = plen > f->snd_mss;
    long long tcp_len = 20 + plen;
    long long total = 20 + tcp_len;
    p[0] = NEEDS_CSUM;
    p[1] = gso ? GSO_TCPV4 : 0;
    put_le16(p + 2, TCP_OFF - VNET_LEN + 20);
    put_le16(p + 4, gso ? f->snd_mss : 0);
    put_le16(p + 6, TCP_OFF - VNET_LEN);
    put_le16(p + 8, 16);
    put_le16(p + 10, 0);
    put_be16(p + IP_OFF + 2, total);
    put_be16(p + IP_OFF + 10, ~fold(f->ip_base + total) & 0xFFFF);
    unsigned char *t = p + TCP_OFF;
    put_be32(t + 4, seq & M32);
    put_be32(t + 8, f->rcv_nxt & M32);
    t[12] = 0x50;
    t[13] = (unsigned char)flags;
    put_be16(t + 14, wnd);
    put_be16(t + 16, fold(f->pseudo + tcp_len));
    put_be16(t + 18, 0);
    return b;
}

static int
send_ack(FlowObject *f, PyObject *out)
{
    long long wnd = window(f, 1);
    PyObject *frame = build_frame(f, f->snd_nxt, F_ACK, wnd, NULL, 0);
    if (frame == NULL)
        return -1;
    int rc = PyList_Append(out, frame);
    Py_DECREF(frame);
    if (rc == 0)
        f->cache->acks++;
    return rc;
}

static void
rto_sample(FlowObject *f, double rtt)
{
    if (rtt < 0)
        return;
    if (f->srtt < 0) {
        f->srtt = rtt;
        f->rttvar = rtt / 2;
    } else {
        f->rttvar = 0.75 * f->rttvar + 0.25 * fabs(f->srtt - rtt);
        f->srtt = 0.875 * f->srtt + 0.125 * rtt;
    }
    double v = 4 * f->rttvar;
    double rto = f->srtt + (GRANULARITY > v ? GRANULARITY : v);
    if (rto < f->rto_min)
        rto = f->rto_min;
    if (rto > f->rto_max)
        rto = f->rto_max;
    f->rto = rto;
}

static int
acked(FlowObject *f, long long ack, double now)
{
    long long n = ack - f->snd_una;
    Py_ssize_t have = PyByteArray_GET_SIZE(f->buf);
    if (n > have)
        n = have;
    f->snd_una = ack;
    if (n > 0 && PySequence_DelSlice(f->buf, 0, (Py_ssize_t)n) < 0)
        return -1;
    if (f->rtt_seq >= 0 && ack > f->rtt_seq) {
        rto_sample(f, now - f->rtt_time);
        f->rtt_seq = -1;
    }
    return 0;
}

/* The congestion window and timer after a cumulative ACK of `n` bytes. */
static void
acked_cwnd(FlowObject *f, long long n, long long ack, double now)
{
    long long mss = f->snd_mss;
    if (f->cwnd < f->ssthresh) {
        f->cwnd += n;
    } else {
        long long inc = f->cwnd > 0 ? mss * n / f->cwnd : 1;
        f->cwnd += inc > 1 ? inc : 1;
    }
    long long cap = 2 * f->cache->sndbuf;
    if (f->cwnd > cap)
        f->cwnd = cap;
    f->rtx_at = ack >= f->snd_nxt ? INFINITY : now + f->rto;
}

static void
to_host(FlowObject *f, const unsigned char *data, Py_ssize_t plen)
{
    ssize_t n = send(f->fd, data, (size_t)plen, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            f->err = errno ? errno : EIO;
        n = 0;
    }
    if (n < plen) {
        PyObject *rest = PyBytes_FromStringAndSize((const char *)data + n, plen - n);
        if (rest == NULL) {
            PyErr_Clear();
            f->err = ENOMEM;
            return;
        }
        Py_SETREF(f->leftover, rest);
    }
}

/* One parsed segment for a lent flow: 1 taken, 0 declined, -1 error. */
static int
flow_segment(FlowObject *f, long long seq32, long long ack32, long long wnd,
             const unsigned char *payload, Py_ssize_t plen, double now)
{
    CacheObject *cache = f->cache;
    long long rcv_nxt = f->rcv_nxt;
    if (seq32 != (rcv_nxt & M32))
        return 0;
    long long snd_una = f->snd_una;
    long long ack = snd_una + seq_diff(ack32, snd_una & M32);
    long long snd_max = f->snd_nxt;
    if (ack < snd_una || ack > snd_max)
        return 0;
    long long new_wnd = wnd << f->snd_ws;
    if (!new_wnd)
        return 0;
    if (ack == snd_una && !plen && snd_max > snd_una && new_wnd == f->snd_wnd)
        return 0;
    if (plen > f->rcv_adv - rcv_nxt)
        return 0;
    cache->frames_in++;
    f->now = now;
    f->last_activity = now;
    if (ack > snd_una) {
        if (acked(f, ack, now) < 0)
            return -1;
        acked_cwnd(f, ack - snd_una, ack, now);
    }
    if (rcv_nxt > f->snd_wl1 || (rcv_nxt == f->snd_wl1 && ack >= f->snd_wl2)) {
        f->snd_wnd = new_wnd;
        f->snd_wl1 = rcv_nxt;
        f->snd_wl2 = ack;
        if (new_wnd > f->max_snd_wnd)
            f->max_snd_wnd = new_wnd;
    }
    if (plen) {
        long long flight = rcv_nxt + plen - f->rcv_acked;
        if (flight > f->max_guest_flight)
            f->max_guest_flight = flight;
        f->rcv_nxt = rcv_nxt + plen;
        f->ack_pending += plen;
        f->held += plen;
        to_host(f, payload, plen);
    }
    if (f->ack_pending) {
        if (f->ack_pending >= f->ack_threshold) {
            if (send_ack(f, cache->out) < 0)
                return -1;
        } else if (f->delack_at == INFINITY) {
            f->delack_at = now + cache->delack;
        }
    }
    if (!f->touched) {
        if (PyList_Append(cache->touched, (PyObject *)f) < 0)
            return -1;
        f->touched = 1;
    }
    if (check_deadline(f) < 0)
        return -1;
    if (f->err || PyObject_IsTrue(f->leftover) == 1) {
        PyObject *r = PyObject_CallNoArgs(f->on_slow);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 1;
}

/* Sender.output for new data when all of it can go at once; 0: nothing sent. */
static int
flow_output(FlowObject *f, const unsigned char *data, Py_ssize_t n, double now,
            PyObject *frames)
{
    long long start = f->snd_nxt;
    long long in_flight = start - f->snd_una;
    if (n > f->snd_una + f->snd_wnd - start || n > f->cwnd - in_flight || n > f->max_burst)
        return 0;
    if (f->rtt_seq < 0) {
        f->rtt_seq = start;
        f->rtt_time = now;
    }
    long long wnd = window(f, 1);
    PyObject *frame = build_frame(f, start, F_ACK | F_PSH, wnd, data, n);
    if (frame == NULL)
        return -1;
    int rc = PyList_Append(frames, frame);
    Py_DECREF(frame);
    if (rc < 0)
        return -1;
    f->cache->frames_out++;
    f->snd_nxt = start + n;
    if (f->rtx_at == INFINITY)
        f->rtx_at = now + f->rto;
    return 1;
}

static int
append_buf(PyObject *buf, const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t have = PyByteArray_GET_SIZE(buf);
    if (PyByteArray_Resize(buf, have + n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(buf) + have, data, (size_t)n);
    return 0;
}

static PyObject *
call_slow(FlowObject *f)
{
    PyObject *r = PyObject_CallNoArgs(f->on_slow);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* The reads of one wake-up; frames go to `frames`. 1: hand back, 0: done, -1: error. */
static int
flow_reads(FlowObject *f, double now, PyObject *frames)
{
    CacheObject *cache = f->cache;
    int i;
    for (i = 0; i < READS_PER_WAKEUP; i++) {
        long long room = cache->sndbuf - PyByteArray_GET_SIZE(f->buf);
        if (room > READ_MAX)
            room = READ_MAX;
        if (room <= 0)
            return 1;
        ssize_t n = recv(f->fd, cache->rbuf, (size_t)room, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 0;
            f->err = errno ? errno : EIO;
            return 1;
        }
        if (n == 0)
            return 1;
        cache->reads++;
        f->now = now;
        f->last_activity = now;
        if (append_buf(f->buf, cache->rbuf, n) < 0)
            return -1;
        int rc = flow_output(f, cache->rbuf, n, now, frames);
        if (rc < 0)
            return -1;
        if (rc == 0) {
            f->unsent = 1;
            return 1;
        }
        if (n < room)
            return 0;
    }
    return 0;
}

static PyObject *
Flow_readable(FlowObject *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "readable() takes at most one argument");
        return NULL;
    }
    if (!f->lent)
        return call_slow(f);
    double now;
    if (nargs == 1 && args[0] != Py_None) {
        now = PyFloat_AsDouble(args[0]);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
    } else {
        now = monotonic();
    }
    CacheObject *cache = f->cache;
    PyObject *out = cache->out;
    Py_INCREF(f);
    Py_INCREF(out);
    int direct = PyList_GET_SIZE(out) == 0;
    PyObject *frames = direct ? PyList_New(0) : out;
    if (direct && frames == NULL)
        goto fail;
    Py_ssize_t before = PyList_GET_SIZE(frames);
    int slow = flow_reads(f, now, frames);
    if (slow < 0)
        goto fail;
    if (PyList_GET_SIZE(frames) > before) {
        PyObject *r = direct ? PyObject_CallOneArg(cache->send, frames)
                             : PyObject_CallNoArgs(cache->pump);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
    PyObject *res;
    if (slow) {
        res = call_slow(f);
    } else {
        res = check_deadline(f) < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (direct)
        Py_DECREF(frames);
    Py_DECREF(out);
    Py_DECREF(f);
    return res;
fail:
    if (direct)
        Py_XDECREF(frames);
    Py_DECREF(out);
    Py_DECREF(f);
    return NULL;
}

static PyObject *
Flow_next_deadline(FlowObject *f, PyObject *Py_UNUSED(ignored))
{
    f->reported = flow_deadline(f);
    return PyFloat_FromDouble(f->reported);
}

static PyObject *
Flow_deadline(FlowObject *f, PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(flow_deadline(f));
}

static int
Flow_traverse(FlowObject *f, visitproc visit, void *arg)
{
    Py_VISIT(f->cache);
    Py_VISIT(f->key);
    Py_VISIT(f->sock);
    Py_VISIT(f->buf);
    Py_VISIT(f->on_slow);
    Py_VISIT(f->on_deadline);
    Py_VISIT(f->leftover);
    return 0;
}

static int
Flow_clear(FlowObject *f)
{
    Py_CLEAR(f->cache);
    Py_CLEAR(f->key);
    Py_CLEAR(f->sock);
    Py_CLEAR(f->buf);
    Py_CLEAR(f->on_slow);
    Py_CLEAR(f->on_deadline);
    Py_CLEAR(f->leftover);
    return 0;
}

static void
Flow_dealloc(FlowObject *f)
{
    PyObject_GC_UnTrack(f);
    Flow_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *
flow_new(CacheObject *cache, PyObject *key, PyObject *sock, PyObject *tpl, PyObject *buf,
         PyObject *on_slow, PyObject *on_deadline)
{
    if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != 12 || !PyBytes_Check(tpl)
        || PyBytes_GET_SIZE(tpl) != TPL_LEN) {
        PyErr_SetString(PyExc_ValueError, "a 12-byte key and a 66-byte IPv4 frame template");
        return NULL;
    }
    if (!PyByteArray_CheckExact(buf)) {
        PyErr_SetString(PyExc_TypeError, "the send buffer must be a bytearray");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0)
        return NULL;
    FlowObject *f = PyObject_GC_New(FlowObject, &FlowType);
    if (f == NULL)
        return NULL;
    f->cache = (CacheObject *)Py_NewRef(cache);
    f->key = Py_NewRef(key);
    f->sock = Py_NewRef(sock);
    f->buf = Py_NewRef(buf);
    f->on_slow = Py_NewRef(on_slow);
    f->on_deadline = Py_NewRef(on_deadline);
    f->leftover = PyBytes_FromStringAndSize(NULL, 0);
    f->fd = fd;
    memcpy(f->tpl, PyBytes_AS_STRING(tpl), TPL_LEN);
    const unsigned char *ip = f->tpl + IP_OFF;
    long long addrs = sum16(ip + 12, 8);
    f->ip_base = sum16(ip, 20) - be16(ip + 2) - be16(ip + 10);
    f->pseudo = addrs + 6;
    f->lent = f->touched = f->unsent = 0;
    f->now = f->last_activity = f->rtt_time = 0.0;
    f->delack_at = f->rtx_at = f->reported = INFINITY;
    f->rto = 1.0;
    f->srtt = -1.0;
    f->rttvar = 0.0;
    f->rto_min = 0.2;
    f->rto_max = 60.0;
    f->rcv_nxt = f->rcv_adv = f->rcv_acked = f->ack_pending = f->max_guest_flight = 0;
    f->rcv_ws = f->rcv_mss = f->ack_threshold = f->quick_ack = 0;
    f->snd_una = f->snd_nxt = f->snd_wnd = f->max_snd_wnd = f->snd_wl1 = f->snd_wl2 = 0;
    f->snd_ws = f->snd_mss = f->max_burst = f->cwnd = f->ssthresh = 0;
    f->rtt_seq = -1;
    f->held = f->err = f->window_updates = 0;
    if (f->leftover == NULL) {
        Py_DECREF(f);
        return NULL;
    }
    PyObject_GC_Track(f);
    return (PyObject *)f;
}

#define FM(name, type) {#name, type, offsetof(FlowObject, name), 0, NULL}
static PyMemberDef flow_members[] = {
    {"key", T_OBJECT, offsetof(FlowObject, key), READONLY, NULL},
    {"sock", T_OBJECT, offsetof(FlowObject, sock), READONLY, NULL},
    {"buf", T_OBJECT, offsetof(FlowObject, buf), READONLY, NULL},
    FM(leftover, T_OBJECT_EX),
    FM(lent, T_BOOL), FM(touched, T_BOOL), FM(unsent, T_BOOL),
    FM(now, T_DOUBLE), FM(last_activity, T_DOUBLE), FM(delack_at, T_DOUBLE),
    FM(rtx_at, T_DOUBLE), FM(rtt_time, T_DOUBLE), FM(rto, T_DOUBLE), FM(srtt, T_DOUBLE),
    FM(rttvar, T_DOUBLE), FM(rto_min, T_DOUBLE), FM(rto_max, T_DOUBLE),
    FM(reported, T_DOUBLE),
    FM(rcv_nxt, T_LONGLONG), FM(rcv_adv, T_LONGLONG), FM(rcv_acked, T_LONGLONG),
    FM(ack_pending, T_LONGLONG), FM(max_guest_flight, T_LONGLONG), FM(rcv_ws, T_LONGLONG),
    FM(rcv_mss, T_LONGLONG), FM(ack_threshold, T_LONGLONG), FM(quick_ack, T_LONGLONG),
    FM(snd_una, T_LONGLONG), FM(snd_nxt, T_LONGLONG), FM(snd_wnd, T_LONGLONG),
    FM(max_snd_wnd, T_LONGLONG), FM(snd_wl1, T_LONGLONG), FM(snd_wl2, T_LONGLONG),
    FM(snd_ws, T_LONGLONG), FM(snd_mss, T_LONGLONG), FM(max_burst, T_LONGLONG),
    FM(cwnd, T_LONGLONG), FM(ssthresh, T_LONGLONG), FM(rtt_seq, T_LONGLONG),
    FM(held, T_LONGLONG), FM(err, T_LONGLONG), FM(window_updates, T_LONGLONG),
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef flow_methods[] = {
    {"readable", (PyCFunction)(void (*)(void))Flow_readable, METH_FASTCALL,
     "The host socket is readable (the asyncio reader callback)."},
    {"next_deadline", (PyCFunction)Flow_next_deadline, METH_NOARGS,
     "The flow's next deadline, recorded as the one the netdev holds."},
    {"deadline", (PyCFunction)Flow_deadline, METH_NOARGS, "The flow's next deadline."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FlowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "drivers.user.tcp._tcpfast.FastFlow",
    .tp_basicsize = sizeof(FlowObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One lent connection (drivers/user/tcp/fastflow.py FastFlow).",
    .tp_traverse = (traverseproc)Flow_traverse,
    .tp_clear = (inquiry)Flow_clear,
    .tp_dealloc = (destructor)Flow_dealloc,
    .tp_members = flow_members,
    .tp_methods = flow_methods,
};

/* --------------------------------------------------------------- the cache */

/* One guest frame (behind a virtio-net header when `vnet`): 1 taken, 0 declined, -1
 * error. */
static int
cache_frame(CacheObject *c, const unsigned char *p, Py_ssize_t n, double now, int vnet)
{
    Py_ssize_t base = vnet ? VNET_LEN : 0;
    if (n < base + 54)
        return 0;
    int verify = 1;
    if (vnet) {
        if (p[1] != 0)
            return 0;  /* GSO: the general path */
        verify = !(p[0] & NEEDS_CSUM);
    }
    const unsigned char *eth = p + base;
    if (eth[12] != 0x08 || eth[13] != 0x00)
        return 0;
    const unsigned char *ip = eth + 14;
    if (ip[0] != 0x45 || ip[9] != 6)
        return 0;
    long long total = be16(ip + 2);
    if (total < 40 || base + 14 + total > n)
        return 0;
    if (be16(ip + 6) & 0x3FFF)
        return 0;
    if (fold(sum16(ip, 20)) != 0xFFFF)
        return 0;
    const unsigned char *tcp = ip + 20;
    if (tcp[12] != 0x50)
        return 0;
    unsigned char keyb[12];
    memcpy(keyb, ip + 12, 4);
    memcpy(keyb + 4, tcp, 2);
    memcpy(keyb + 6, ip + 16, 4);
    memcpy(keyb + 10, tcp + 2, 2);
    PyObject *key = PyBytes_FromStringAndSize((const char *)keyb, 12);
    if (key == NULL)
        return -1;
    PyObject *fo = PyDict_GetItemWithError(c->flows, key);
    Py_DECREF(key);
    if (fo == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (Py_TYPE(fo) != &FlowType)
        return 0;
    FlowObject *f = (FlowObject *)fo;
    if (!f->lent)
        return 0;
    if (memcmp(eth, f->tpl + VNET_LEN + 6, 6) != 0)
        return 0;  /* to the gateway's MAC */
    if (memcmp(eth + 6, f->tpl + VNET_LEN, 6) != 0)
        return 0;  /* from the guest's MAC */
    Py_ssize_t plen = (Py_ssize_t)total - 40;
    if (verify) {
        long long pseudo = sum16(ip + 12, 8) + 6 + (total - 20);
        if (fold(pseudo + sum16(tcp, (Py_ssize_t)total - 20)) != 0xFFFF)
            return 0;
    }
    int flags = tcp[13];
    if (flags != F_ACK && flags != (F_ACK | F_PSH))
        return 0;
    Py_INCREF(f);
    int rc = flow_segment(f, be32(tcp + 4), be32(tcp + 8), be16(tcp + 14), tcp + 20, plen,
                          now);
    Py_DECREF(f);
    return rc;
}

static PyObject *
Cache_guest_frames(CacheObject *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "guest_frames(frames, start, now, vnet)");
        return NULL;
    }
    int vnet = PyObject_IsTrue(args[3]);
    if (vnet < 0)
        return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    double now = PyFloat_AsDouble(args[2]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(args[0], "frames must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_INCREF(c);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_buffer view;
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            break;  /* not a buffer: the general path says why */
        }
        int rc = cache_frame(c, view.buf, view.len, now, vnet);
        PyBuffer_Release(&view);
        if (rc < 0) {
            Py_DECREF(seq);
            Py_DECREF(c);
            return NULL;
        }
        if (rc == 0)
            break;
    }
    Py_DECREF(seq);
    Py_DECREF(c);
    return PyLong_FromSsize_t(i > n ? n : i);
}

static PyObject *
Cache_flush(CacheObject *c, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (PyList_GET_SIZE(c->touched) == 0)
        Py_RETURN_NONE;
    PyObject *touched = c->touched;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    c->touched = fresh;
    Py_ssize_t i, n = PyList_GET_SIZE(touched);
    for (i = 0; i < n; i++) {
        FlowObject *f = (FlowObject *)PyList_GET_ITEM(touched, i);
        if (Py_TYPE(f) != &FlowType)
            continue;
        f->touched = 0;
        if (!f->lent) {
            f->held = 0;
            continue;
        }
        long long pending = f->ack_pending;
        if (pending && (pending >= f->quick_ack || f->delack_at == INFINITY)) {
            f->now = now;
            if (send_ack(f, c->out) < 0)
                goto fail;
        }
        if (f->held) {
            f->held = 0;
            long long rcvbuf = c->rcvbuf;
            long long quarter = rcvbuf / 4 < 65536 ? rcvbuf / 4 : 65536;
            if (f->rcv_adv - f->rcv_nxt < rcvbuf / 2
                && f->rcv_nxt + rcvbuf - f->rcv_adv >= quarter) {
                f->now = now;
                if (send_ack(f, c->out) < 0)
                    goto fail;
                f->window_updates++;
            }
        }
    }
    Py_DECREF(touched);
    Py_RETURN_NONE;
fail:
    Py_DECREF(touched);
    return NULL;
}

static PyObject *
Cache_flow(CacheObject *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "flow(key, sock, tpl, buf, on_slow, on_deadline)");
        return NULL;
    }
    return flow_new(c, args[0], args[1], args[2], args[3], args[4], args[5]);
}

static PyObject *
Cache_counters(CacheObject *c, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{sLsLsLsL}", "fast-frames-in", c->frames_in, "fast-reads", c->reads,
                         "fast-acks", c->acks, "fast-frames-out", c->frames_out);
}

static int
Cache_init(CacheObject *c, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"out", "send", "pump", "rcvbuf", "sndbuf", "delack",
                             "idle_timeout", NULL};
    PyObject *out, *send_, *pump;
    long long rcvbuf, sndbuf;
    double delack, idle;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO$LLdd", kwlist, &PyList_Type, &out,
                                     &send_, &pump, &rcvbuf, &sndbuf, &delack, &idle))
        return -1;
    if (rcvbuf <= 0 || sndbuf <= 0) {
        PyErr_SetString(PyExc_ValueError, "buffer sizes must be positive");
        return -1;
    }
    Py_XSETREF(c->out, Py_NewRef(out));
    Py_XSETREF(c->send, Py_NewRef(send_));
    Py_XSETREF(c->pump, Py_NewRef(pump));
    if (c->flows == NULL && (c->flows = PyDict_New()) == NULL)
        return -1;
    if (c->touched == NULL && (c->touched = PyList_New(0)) == NULL)
        return -1;
    if (c->rbuf == NULL && (c->rbuf = PyMem_Malloc(READ_MAX)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->rcvbuf = rcvbuf;
    c->sndbuf = sndbuf;
    c->delack = delack;
    c->idle_timeout = idle;
    return 0;
}

static int
Cache_traverse(CacheObject *c, visitproc visit, void *arg)
{
    Py_VISIT(c->out);
    Py_VISIT(c->send);
    Py_VISIT(c->pump);
    Py_VISIT(c->flows);
    Py_VISIT(c->touched);
    return 0;
}

static int
Cache_clear(CacheObject *c)
{
    Py_CLEAR(c->out);
    Py_CLEAR(c->send);
    Py_CLEAR(c->pump);
    Py_CLEAR(c->flows);
    Py_CLEAR(c->touched);
    return 0;
}

static void
Cache_dealloc(CacheObject *c)
{
    PyObject_GC_UnTrack(c);
    Cache_clear(c);
    PyMem_Free(c->rbuf);
    c->rbuf = NULL;
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMemberDef cache_members[] = {
    {"flows", T_OBJECT, offsetof(CacheObject, flows), READONLY, NULL},
    {"out", T_OBJECT, offsetof(CacheObject, out), READONLY, NULL},
    {"rcvbuf", T_LONGLONG, offsetof(CacheObject, rcvbuf), READONLY, NULL},
    {"sndbuf", T_LONGLONG, offsetof(CacheObject, sndbuf), READONLY, NULL},
    {"delack", T_DOUBLE, offsetof(CacheObject, delack), READONLY, NULL},
    {"idle_timeout", T_DOUBLE, offsetof(CacheObject, idle_timeout), READONLY, NULL},
    {"frames_in", T_LONGLONG, offsetof(CacheObject, frames_in), 0, NULL},
    {"reads", T_LONGLONG, offsetof(CacheObject, reads), 0, NULL},
    {"acks", T_LONGLONG, offsetof(CacheObject, acks), 0, NULL},
    {"frames_out", T_LONGLONG, offsetof(CacheObject, frames_out), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef cache_methods[] = {
    {"guest_frames", (PyCFunction)(void (*)(void))Cache_guest_frames, METH_FASTCALL,
     "Take frames[start:] in order while they are the fast path's; the index of the "
     "first that is not."},
    {"flush", (PyCFunction)Cache_flush, METH_O, "End of a batch: the ACKs owed."},
    {"flow", (PyCFunction)(void (*)(void))Cache_flow, METH_FASTCALL,
     "A new (not yet lent) flow of this cache."},
    {"counters", (PyCFunction)Cache_counters, METH_NOARGS, "The fast path's counters."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CacheType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "drivers.user.tcp._tcpfast.FlowCache",
    .tp_basicsize = sizeof(CacheObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The lent flows of one netdev (drivers/user/tcp/fastflow.py FlowCache).",
    .tp_traverse = (traverseproc)Cache_traverse,
    .tp_clear = (inquiry)Cache_clear,
    .tp_dealloc = (destructor)Cache_dealloc,
    .tp_init = (initproc)Cache_init,
    .tp_new = PyType_GenericNew,
    .tp_members = cache_members,
    .tp_methods = cache_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "drivers.user.tcp._tcpfast",
    .m_doc = "The established-flow fast path of guest TCP (twin: fastflow.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__tcpfast(void)
{
    if (PyType_Ready(&CacheType) < 0 || PyType_Ready(&FlowType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "FlowCache", (PyObject *)&CacheType) < 0
        || PyModule_AddObjectRef(m, "FastFlow", (PyObject *)&FlowType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
