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
 * The types and helpers are in tcpfast_types.h, the Flow (one lent connection) in
 * tcpfast_flow.h; this file is the FlowCache and the module.
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
 * after such a call is held by a reference of ours, and the list of frames is
 * re-read (its size, then the item, held while in use) for each frame. A cache
 * made by __new__ alone is refused (RuntimeError). Values the twin takes from
 * the machine but Python could hold out of range are clamped where C would
 * otherwise be undefined or truncate: window-scale shifts to 0..14 (RFC 7323),
 * a burst to 65495 bytes (one TSO super-frame). send() and recv() are retried
 * on EINTR, as Python's socket methods are (PEP 475).
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
#define DATA_VALID 2
#define GSO_TCPV4 1
#define F_ACK 0x10
#define F_PSH 0x08
#define READ_MAX (256 * 1024)
#define MAX_BURST 65495  /* a TSO super-frame's payload: 65535 less the IPv4 and TCP headers */
#define READS_PER_WAKEUP 4
#define GRANULARITY 0.001

#include "tcpfast_types.h"
#include "tcpfast_flow.h"

/* --------------------------------------------------------------- the cache */

/* One guest frame (behind a virtio-net header when `vnet`): 1 taken, 0 declined, -1
 * error. */
static int
cache_frame(CacheObject *c, const unsigned char *p, Py_ssize_t n, double now, int vnet)
{
    Py_ssize_t base = vnet ? VNET_LEN : 0;
    if (n < base + 54)
        return 0;
    int verify = 1, gso = 0;
    if (vnet) {
        /* a TSO super-frame is one segment (Gateway.offloaded_tcp); its checksum is not
         * verified when flagged partial or valid, a plain frame's only when partial */
        if (p[1] == GSO_TCPV4)
            gso = 1;
        else if (p[1] != 0)
            return 0;
        verify = !(p[0] & (gso ? NEEDS_CSUM | DATA_VALID : NEEDS_CSUM));
    }
    const unsigned char *eth = p + base;
    if (eth[12] != 0x08 || eth[13] != 0x00)
        return 0;
    const unsigned char *ip = eth + 14;
    if (ip[0] != 0x45 || ip[9] != 6)
        return 0;
    long long total = be16(ip + 2);
    if (gso && total == 0)
        total = n - base - 14;
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
    if (cache_ready(c) < 0)
        return NULL;
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
    /* on_slow and on_deadline may change a list of frames: its size is read anew for
     * each frame and the frame held while in use */
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        Py_buffer view;
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            Py_DECREF(item);
            break;  /* not a buffer: the general path says why */
        }
        int rc = cache_frame(c, view.buf, view.len, now, vnet);
        PyBuffer_Release(&view);
        Py_DECREF(item);
        if (rc < 0) {
            Py_DECREF(seq);
            Py_DECREF(c);
            return NULL;
        }
        if (rc == 0)
            break;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_DECREF(seq);
    Py_DECREF(c);
    return PyLong_FromSsize_t(i > n ? n : i);
}

static PyObject *
Cache_flush(CacheObject *c, PyObject *arg)
{
    if (cache_ready(c) < 0)
        return NULL;
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
    /* the flows not reached yet stay touched (the next flush owes their ACKs); if even
     * that fails, they are marked untouched, so that their next segments add them */
    for (i++; i < n; i++) {
        if (PyList_Append(c->touched, PyList_GET_ITEM(touched, i)) < 0)
            break;
    }
    for (; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(touched, i);
        if (Py_TYPE(o) == &FlowType)
            ((FlowObject *)o)->touched = 0;
    }
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
    if (cache_ready(c) < 0)
        return NULL;
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
    if (c->rbuf == NULL && (c->rbuf = PyMem_Malloc(READ_MAX)) == NULL) {  /* last: ready */
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
