/*
 * One lent connection of drivers.user.tcp._tcpfast (the twin of fastflow.py FastFlow):
 * its guest segment (ACK, window, payload to the host, ACK debt), its host reads (data
 * frames with FrameBuilder's bytes), its deadline, the Flow type. Included once, by
 * _tcpfast.c, after tcpfast_types.h.
 */
#ifndef TCPFAST_FLOW_H
#define TCPFAST_FLOW_H

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
    long long ws = wscale(f->rcv_ws);
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
    if (n > 0 && PySequence_DelSlice(f->buf, 0, (Py_ssize_t)n) < 0)
        return -1;  /* (a buffer exported elsewhere) before snd_una moves */
    f->snd_una = ack;
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
    ssize_t n;
    do  /* retried on EINTR, as Python's socket.send does (PEP 475) */
        n = send(f->fd, data, (size_t)plen, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
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
    if (f->err || PyBytes_GET_SIZE(f->leftover))
        return 0;  /* a hand-back not done yet: the machine takes this segment after it */
    long long rcv_nxt = f->rcv_nxt;
    if (seq32 != (rcv_nxt & M32))
        return 0;
    long long snd_una = f->snd_una;
    long long ack = snd_una + seq_diff(ack32, snd_una & M32);
    long long snd_max = f->snd_nxt;
    if (ack < snd_una || ack > snd_max)
        return 0;
    long long new_wnd = wnd << wscale(f->snd_ws);
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
    if (f->err || PyBytes_GET_SIZE(f->leftover)) {
        PyObject *r = PyObject_CallNoArgs(f->on_slow);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (f->lent && check_deadline(f) < 0)
        return -1;
    return 1;
}

/* Sender.output for new data when all of it can go at once; 0: nothing sent. */
static int
flow_output(FlowObject *f, const unsigned char *data, Py_ssize_t n, double now,
            PyObject *frames)
{
    long long start = f->snd_nxt;
    long long in_flight = start - f->snd_una;
    long long burst = f->max_burst < MAX_BURST ? f->max_burst : MAX_BURST;
    if (n > f->snd_una + f->snd_wnd - start || n > f->cwnd - in_flight || n > burst)
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
        ssize_t n;
        do  /* as socket.recv (PEP 475) */
            n = recv(f->fd, cache->rbuf, (size_t)room, MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
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
    if (cache_ready(f->cache) < 0)
        return NULL;
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
        PyObject *r = direct ? PyObject_CallFunctionObjArgs(cache->send, frames, Py_True, NULL)
                             : PyObject_CallNoArgs(cache->pump);
        if (r == NULL)
            goto fail;
        Py_DECREF(r);
    }
    PyObject *res;
    if (slow) {
        res = call_slow(f);
    } else if (f->lent) {  /* send or pump may have reclaimed it */
        res = check_deadline(f) < 0 ? NULL : Py_NewRef(Py_None);
    } else {
        res = Py_NewRef(Py_None);
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

static PyObject *
Flow_get_leftover(FlowObject *f, void *Py_UNUSED(closure))
{
    return Py_NewRef(f->leftover);
}

/* Only bytes: the segment path reads its size without calling back into Python. */
static int
Flow_set_leftover(FlowObject *f, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete leftover");
        return -1;
    }
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "leftover must be bytes");
        return -1;
    }
    Py_SETREF(f->leftover, Py_NewRef(value));
    return 0;
}

static PyGetSetDef flow_getset[] = {
    {"leftover", (getter)Flow_get_leftover, (setter)Flow_set_leftover,
     "Guest bytes the host socket did not take (handed back).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
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
    .tp_getset = flow_getset,
    .tp_methods = flow_methods,
};

#endif
