/*
 * netstack.net._fastnet: the forwarding core's per-frame path in C.
 *
 * The accelerator of netstack/net/client.py (NetClient.send and deliver),
 * netstack/net/queue.py (NetQueue.send) and netstack/net/hub.py (the repeater's
 * Hub.forward, HubPort.receive/can_receive); those Python classes stay the
 * complete reference for behaviour and this file follows them statement by
 * statement (QEMU: net/net.c qemu_send_packet / qemu_deliver_packet_iov,
 * net/queue.c, net/hub.c).
 *
 * What it owns:
 *   - Counters and HubCounters: the per-client and per-hub counters with int64
 *     fields (member descriptors, so Python reads and writes them as ints);
 *   - FastMethod: a method descriptor (it binds like a function and takes the
 *     interpreter's unbound-method call path) wrapping the C send, installed as
 *     NetClient.send by netstack.net.fastcore;
 *   - install(): the reference classes and functions the C path compares with.
 *
 * The C path runs only where it provably does what the Python would: every
 * object on the way is checked (per type, cached by the type's version tag, so
 * a class changed at run time is re-checked) to have the reference layout
 * (NetClient's __slots__) and the reference hook (can_receive, deliver...).
 * Anything else (a driver's own can_receive, net filters, learning switches,
 * subclassed queues) is handed to the Python method, before any side effect,
 * so the outcome is the reference one. The Python helpers the reference calls
 * on the way are called from here as it calls them: vnet_hdr.to_plain for a
 * batch with vnet headers to a peer that takes none, the rx batch classifier
 * of a NIC-class receiver, the driver's receive.
 *
 * Per hop nothing is allocated (no int, tuple or bound method: the steps pass
 * counts, and Python sees an int only as send's result) and no dictionary is
 * read: a driver's receive is the function found on its class, kept in the
 * type's cache entry and called with the instance as first argument.
 *
 * Deviations from the Python reference, both in corners no driver uses:
 *   - hooks are looked up on the class (as CPython looks up special methods):
 *     a receive, can_receive... assigned on one instance is not seen here;
 *   - a loop of hubs joined port to port, which recurses for ever in Python
 *     too, raises RecursionError after HUB_DEPTH_MAX nested hub calls instead
 *     of at the interpreter's limit (each Python frame on the way still counts
 *     against that limit).
 *
 * Invariants: frames are never copied or mutated; every Python-visible effect
 * (counter updates, queue flags, calls) happens in the order of the reference;
 * every object read across a call that may run Python code is held (a
 * reference taken) or read again after it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

/* ---------------------------------------------------------------- counters */

typedef struct {
    PyObject_HEAD
    long long malformed, rx_bytes, rx_dropped, rx_filtered, rx_frames, tx_bytes,
        tx_dropped, tx_frames;
} CountersObject;

static PyMemberDef counters_members[] = {
    {"malformed", T_LONGLONG, offsetof(CountersObject, malformed), 0, NULL},
    {"rx_bytes", T_LONGLONG, offsetof(CountersObject, rx_bytes), 0, NULL},
    {"rx_dropped", T_LONGLONG, offsetof(CountersObject, rx_dropped), 0, NULL},
    {"rx_filtered", T_LONGLONG, offsetof(CountersObject, rx_filtered), 0, NULL},
    {"rx_frames", T_LONGLONG, offsetof(CountersObject, rx_frames), 0, NULL},
    {"tx_bytes", T_LONGLONG, offsetof(CountersObject, tx_bytes), 0, NULL},
    {"tx_dropped", T_LONGLONG, offsetof(CountersObject, tx_dropped), 0, NULL},
    {"tx_frames", T_LONGLONG, offsetof(CountersObject, tx_frames), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

typedef struct {
    PyObject_HEAD
    long long deliveries, filtered, flooded, frames_in, horizon, malformed, unicast;
} HubCountersObject;

static PyMemberDef hubcounters_members[] = {
    {"deliveries", T_LONGLONG, offsetof(HubCountersObject, deliveries), 0, NULL},
    {"filtered", T_LONGLONG, offsetof(HubCountersObject, filtered), 0, NULL},
    {"flooded", T_LONGLONG, offsetof(HubCountersObject, flooded), 0, NULL},
    {"frames_in", T_LONGLONG, offsetof(HubCountersObject, frames_in), 0, NULL},
    {"horizon", T_LONGLONG, offsetof(HubCountersObject, horizon), 0, NULL},
    {"malformed", T_LONGLONG, offsetof(HubCountersObject, malformed), 0, NULL},
    {"unicast", T_LONGLONG, offsetof(HubCountersObject, unicast), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* as_dict in __slots__ order, "_" written "-" (the reference's as_dict). */
static PyObject *
members_as_dict(PyObject *self, PyMemberDef *members)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (PyMemberDef *m = members; m->name != NULL; m++) {
        char key[32];
        size_t n = strlen(m->name);
        if (n >= sizeof key)
            n = sizeof key - 1;
        for (size_t i = 0; i < n; i++)
            key[i] = m->name[i] == '_' ? '-' : m->name[i];
        key[n] = '\0';
        PyObject *v = PyLong_FromLongLong(*(long long *)((char *)self + m->offset));
        if (v == NULL || PyDict_SetItemString(d, key, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *
counters_as_dict(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return members_as_dict(self, counters_members);
}

static PyObject *
hubcounters_as_dict(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return members_as_dict(self, hubcounters_members);
}

static PyMethodDef counters_methods[] = {
    {"as_dict", counters_as_dict, METH_NOARGS, "The counters by name, '_' written '-'."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef hubcounters_methods[] = {
    {"as_dict", hubcounters_as_dict, METH_NOARGS, "The counters by name, '_' written '-'."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CountersType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netstack.net._fastnet.Counters",
    .tp_basicsize = sizeof(CountersObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-client frame and byte counters (all monotonic), int64 fields.",
    .tp_members = counters_members,
    .tp_methods = counters_methods,
    .tp_new = PyType_GenericNew,
};

static PyTypeObject HubCountersType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netstack.net._fastnet.HubCounters",
    .tp_basicsize = sizeof(HubCountersObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-hub frame counters (monotonic), int64 fields.",
    .tp_members = hubcounters_members,
    .tp_methods = hubcounters_methods,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------- the reference, as installed */

/* Slot offsets of the reference classes (from their member descriptors). */
enum {
    C_PEER, C_LINK_DOWN, C_RECEIVE_DISABLED, C_DELETED, C_FILTERS, C_RX_BATCH,
    C_STATS, C_INCOMING, C_HOST_HDR_LEN, C_NSLOTS
};
static const char *client_slot_names[C_NSLOTS] = {
    "peer", "link_down", "receive_disabled", "deleted", "filters", "_rx_batch",
    "stats", "incoming", "host_hdr_len",
};
enum { Q_ENTRIES, Q_OWNER, Q_DELIVERING, Q_NSLOTS };
static const char *queue_slot_names[Q_NSLOTS] = {"_entries", "_owner", "delivering"};
enum { H_COUNTERS, H_FDB, H_PORTS, H_NSLOTS };
static const char *hub_slot_names[H_NSLOTS] = {"counters", "fdb", "ports"};

typedef struct {
    int ready;
    PyTypeObject *client_type, *port_type, *hub_type, *queue_type;
    PyObject *client_descr[C_NSLOTS]; /* member descriptors, compared per type */
    Py_ssize_t client_off[C_NSLOTS];
    PyObject *queue_descr[Q_NSLOTS];
    Py_ssize_t queue_off[Q_NSLOTS];
    PyObject *hub_descr[H_NSLOTS];
    Py_ssize_t hub_off[H_NSLOTS];
    PyObject *port_hub_descr;
    Py_ssize_t port_hub_off;
    /* reference functions */
    PyObject *send_method;     /* the FastMethod installed as NetClient.send */
    PyObject *py_send;         /* NetClient.send in Python */
    PyObject *py_deliver;      /* NetClient.deliver */
    PyObject *py_can_recv_from;/* NetClient.can_receive_from */
    PyObject *py_can_receive;  /* NetClient.can_receive */
    PyObject *py_can_send;     /* NetClient.can_send */
    PyObject *port_receive;    /* HubPort.receive */
    PyObject *port_can_receive;/* HubPort.can_receive */
    PyObject *queue_send;      /* NetQueue.send */
    PyObject *hub_forward;     /* Hub.forward */
    PyObject *hub_can_forward; /* Hub.can_forward */
    PyObject *vnet_module;     /* netstack.proto.vnet: to_plain and HDR_LEN, read per use */
} Reference;

static Reference ref;

static PyObject *s_send, *s_deliver, *s_can_receive_from, *s_can_receive, *s_can_send,
    *s_receive, *s_count_bytes, *s_accepts_vnet, *s_append, *s_flush, *s_forward,
    *s_can_forward, *s_hub, *s_to_plain, *s_hdr_len, *s_accepted;

/* ------------------------------------------------------ per-type hook cache */

enum {
    T_CLIENT = 1 << 0,     /* NetClient layout: the hot slots are NetClient's */
    T_SEND_C = 1 << 1,     /* send is the installed FastMethod */
    T_DELIVER = 1 << 2,    /* deliver is the reference */
    T_CRF = 1 << 3,        /* can_receive_from is the reference */
    T_CR_TRUE = 1 << 4,    /* can_receive is NetClient's (always True) */
    T_CR_PORT = 1 << 5,    /* can_receive is HubPort's */
    T_RECV_PORT = 1 << 6,  /* receive is HubPort's */
    T_CAN_SEND = 1 << 7,   /* can_send is the reference */
    T_COUNT_BYTES = 1 << 8,/* count_bytes is true */
    T_ACCEPTS_VNET = 1 << 9,
    T_PORT = 1 << 10,      /* HubPort layout: its hub slot is HubPort's */
    T_QUEUE = 1 << 11,     /* NetQueue layout and send */
    T_HUB = 1 << 12,       /* Hub layout, forward and can_forward */
    T_RECV_FUNC = 1 << 13, /* receive is a plain function, cached in the type's entry */
};

typedef struct {
    PyTypeObject *type;
    unsigned int tag;
    unsigned int flags;
    /* The class's receive when T_RECV_FUNC (borrowed: the class holds it, and a new value
     * modifies the type, so a changed tag makes the entry stale before it is freed). */
    PyObject *receive;
    void *pad; /* 32 bytes: one entry never straddles two cache lines */
} TypeEntry;

#define TYPE_CACHE 256
static TypeEntry type_cache[TYPE_CACHE];

static int
is_ref(PyTypeObject *tp, PyObject *name, PyObject *want)
{
    return want != NULL && _PyType_Lookup(tp, name) == want;
}

static int
slots_match(PyTypeObject *tp, const char **names, PyObject **descrs, int n)
{
    for (int i = 0; i < n; i++) {
        PyObject *key = PyUnicode_InternFromString(names[i]);
        if (key == NULL) {
            PyErr_Clear();
            return 0;
        }
        PyObject *found = _PyType_Lookup(tp, key);
        Py_DECREF(key);
        if (found == NULL || found != descrs[i])
            return 0;
    }
    return 1;
}

static unsigned int
compute_flags(PyTypeObject *tp)
{
    unsigned int f = 0;
    if (PyType_IsSubtype(tp, ref.client_type) &&
        slots_match(tp, client_slot_names, ref.client_descr, C_NSLOTS)) {
        f |= T_CLIENT;
        if (is_ref(tp, s_send, ref.send_method))
            f |= T_SEND_C;
        if (is_ref(tp, s_deliver, ref.py_deliver))
            f |= T_DELIVER;
        if (is_ref(tp, s_can_receive_from, ref.py_can_recv_from))
            f |= T_CRF;
        if (is_ref(tp, s_can_receive, ref.py_can_receive))
            f |= T_CR_TRUE;
        if (is_ref(tp, s_can_receive, ref.port_can_receive))
            f |= T_CR_PORT;
        if (is_ref(tp, s_receive, ref.port_receive))
            f |= T_RECV_PORT;
        if (is_ref(tp, s_can_send, ref.py_can_send))
            f |= T_CAN_SEND;
        PyObject *cb = _PyType_Lookup(tp, s_count_bytes);
        if (cb == Py_True)
            f |= T_COUNT_BYTES;
        else if (cb != Py_False)
            f &= ~(unsigned)T_CLIENT; /* not a plain bool: let Python decide */
        PyObject *av = _PyType_Lookup(tp, s_accepts_vnet);
        if (av == Py_True)
            f |= T_ACCEPTS_VNET;
        else if (av != Py_False)
            f &= ~(unsigned)T_CLIENT;
        if (PyType_IsSubtype(tp, ref.port_type) &&
            _PyType_Lookup(tp, s_hub) == ref.port_hub_descr)
            f |= T_PORT;
        PyObject *recv = _PyType_Lookup(tp, s_receive);
        /* the class's function stands for self.receive only under the generic lookup */
        if (recv != NULL && PyFunction_Check(recv) && tp->tp_getattro == PyObject_GenericGetAttr)
            f |= T_RECV_FUNC;
    }
    if (PyType_IsSubtype(tp, ref.queue_type) &&
        slots_match(tp, queue_slot_names, ref.queue_descr, Q_NSLOTS) &&
        is_ref(tp, s_send, ref.queue_send))
        f |= T_QUEUE;
    if (PyType_IsSubtype(tp, ref.hub_type) &&
        slots_match(tp, hub_slot_names, ref.hub_descr, H_NSLOTS) &&
        is_ref(tp, s_forward, ref.hub_forward) && is_ref(tp, s_can_forward, ref.hub_can_forward))
        f |= T_HUB;
    return f;
}

static TypeEntry uncached; /* for a type without a valid version tag: no function kept */

static TypeEntry *
type_entry_slow(PyTypeObject *tp, TypeEntry *e)
{
    unsigned int f = compute_flags(tp);
    if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) || tp->tp_version_tag == 0) {
        uncached.type = NULL;
        uncached.tag = 0;
        uncached.flags = f & ~(unsigned)T_RECV_FUNC;
        uncached.receive = NULL;
        return &uncached;
    }
    e->type = tp;
    e->tag = tp->tp_version_tag;
    e->flags = f;
    e->receive = f & T_RECV_FUNC ? _PyType_Lookup(tp, s_receive) : NULL;
    return e;
}

/* The type's entry: read its fields at once (a later lookup may reuse the entry). */
static inline TypeEntry *
type_entry(PyTypeObject *tp)
{
    /* A modified type (PyType_Modified, also run for its subclasses) gets tag 0 and a
     * new tag at its next lookup; tags are never reused, so (type, tag) names one state. */
    TypeEntry *e = &type_cache[((uintptr_t)tp >> 5) & (TYPE_CACHE - 1)];
    if (e->type == tp && e->tag == tp->tp_version_tag) /* a stored tag is never 0 */
        return e;
    return type_entry_slow(tp, e);
}

static inline unsigned int
type_flags(PyTypeObject *tp)
{
    return type_entry(tp)->flags;
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))
#define CSLOT(obj, i) SLOT(obj, ref.client_off[i])

/* 1 for True, 0 for False, -1 for anything else (the caller goes to Python before any
 * effect: no user __bool__ runs while borrowed references are held). */
static inline int
strict_bool(PyObject *o)
{
    return o == Py_True ? 1 : o == Py_False ? 0 : -1;
}

/* sum(map(len, frames[start:stop])) of a list or tuple; a __len__ may run Python code
 * (even change the list), so the size is re-read and the frame held for each step.
 * 0 when every frame was bytes, 1 when a __len__ was called (Python may have run), -1 on
 * error. */
static int
sum_len_slow(PyObject *frames, Py_ssize_t start, Py_ssize_t stop, long long *out)
{
    long long total = 0;
    int ran = 0;
    for (Py_ssize_t i = start; i < stop && i < PySequence_Fast_GET_SIZE(frames); i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(frames, i);
        Py_ssize_t n;
        if (PyBytes_CheckExact(f)) {
            n = PyBytes_GET_SIZE(f);
        } else {
            Py_INCREF(f);
            n = PyObject_Length(f);
            Py_DECREF(f);
            if (n < 0)
                return -1;
            ran = 1;
        }
        total += n;
    }
    *out += total;
    return ran;
}

static inline int
sum_len(PyObject *frames, Py_ssize_t start, Py_ssize_t stop, long long *out)
{
    if (stop - start == 1 && start >= 0 && start < PySequence_Fast_GET_SIZE(frames)) {
        PyObject *f = PySequence_Fast_GET_ITEM(frames, start);
        if (PyBytes_CheckExact(f)) { /* one frame, the one-by-one case */
            *out += PyBytes_GET_SIZE(f);
            return 0;
        }
    }
    return sum_len_slow(frames, start, stop, out);
}

/* -------------------------------------------------------------- the path */

/* The internal steps return the number of frames disposed of (>= 0), ERR with an
 * exception set, or PYOBJ when a Python method answered for them: its result (a new
 * reference) is in *res and goes back to the caller as it is. No int object is made
 * unless Python sees it. */
#define ERR (-1)
#define PYOBJ (-2)

static PyTypeObject *deque_type; /* collections.deque: NetQueue's entries */

/* Hubs joined port to port call each other in C (can_forward asking through a loop of hubs
 * recurses for ever in Python too, which raises RecursionError): the depth of hub calls in
 * progress is bounded here. One counter under the GIL, for every thread (threads nesting
 * hub calls at once share the bound); a counter instead of Py_EnterRecursiveCall, which
 * costs as much as a hop. */
#define HUB_DEPTH_MAX 1000
static int hub_depth;

static inline int
hub_enter(void)
{
    if (hub_depth >= HUB_DEPTH_MAX) {
        PyErr_SetString(PyExc_RecursionError,
                        "maximum recursion depth exceeded through hubs joined port to port");
        return -1;
    }
    hub_depth++;
    return 0;
}

static Py_ssize_t c_send_n(PyObject *self, unsigned int f, PyObject *frames, PyObject *vnet,
                           PyObject *sent_cb, PyObject **res);

static int
truth_of(PyObject *r) /* consumes r */
{
    if (r == NULL)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

static Py_ssize_t
python_answer(PyObject *r, PyObject **res)
{
    *res = r;
    return r == NULL ? ERR : PYOBJ;
}

/* client.send(frames, vnet) for the hub's fan-out (the result is not used): C when the
 * type's send is ours, else its method. 0, or -1 with an exception set. */
static int
send_any(PyObject *client, PyObject *frames, PyObject *vnet)
{
    PyObject *r;
    unsigned int f = type_flags(Py_TYPE(client));
    if (f & T_SEND_C) {
        PyObject *res = NULL;
        Py_ssize_t n = c_send_n(client, f, frames, vnet, Py_None, &res);
        if (n != PYOBJ)
            return n == ERR ? -1 : 0;
        r = res;
    } else {
        PyObject *args[3] = {client, frames, vnet};
        r = PyObject_VectorcallMethod(s_send, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int can_receive_from(PyObject *owner, unsigned int f, PyObject *sender);

/* NetClient.can_send */
static int
can_send(PyObject *port)
{
    unsigned int f = type_flags(Py_TYPE(port));
    if ((f & (T_CLIENT | T_CAN_SEND)) == (T_CLIENT | T_CAN_SEND)) {
        PyObject *peer = CSLOT(port, C_PEER);
        if (peer == NULL)
            goto python;
        if (peer == Py_None)
            return 1;
        unsigned int pf = type_flags(Py_TYPE(peer));
        if (!(pf & T_CLIENT))
            goto python;
        PyObject *disabled = CSLOT(peer, C_RECEIVE_DISABLED);
        int d = disabled == NULL ? -1 : strict_bool(disabled);
        if (d < 0)
            goto python;
        if (d)
            return 0;
        if ((pf & (T_CRF | T_CR_TRUE)) == (T_CRF | T_CR_TRUE))
            return 1; /* NetClient.can_receive: True, nothing runs */
        Py_INCREF(peer);
        int ok = can_receive_from(peer, pf, port);
        Py_DECREF(peer);
        return ok;
    }
python:;
    PyObject *args[1] = {port};
    return truth_of(
        PyObject_VectorcallMethod(s_can_send, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
}

/* NetClient.can_send answered from slots alone (1 or 0, nothing runs), or -2 when it
 * takes a call (can_send below) */
static inline int
can_send_now(PyObject *port)
{
    unsigned int f = type_flags(Py_TYPE(port));
    if ((f & (T_CLIENT | T_CAN_SEND)) != (T_CLIENT | T_CAN_SEND))
        return -2;
    PyObject *peer = CSLOT(port, C_PEER);
    if (peer == Py_None)
        return 1;
    if (peer == NULL)
        return -2;
    unsigned int pf = type_flags(Py_TYPE(peer));
    if (!(pf & T_CLIENT))
        return -2;
    PyObject *disabled = CSLOT(peer, C_RECEIVE_DISABLED);
    if (disabled == Py_True)
        return 0;
    if (disabled == Py_False && (pf & (T_CRF | T_CR_TRUE)) == (T_CRF | T_CR_TRUE))
        return 1;
    return -2;
}

/* Hub.can_forward */
static int
hub_can_forward(PyObject *hub, PyObject *source)
{
    PyObject *ports = NULL;
    if (type_flags(Py_TYPE(hub)) & T_HUB)
        ports = SLOT(hub, ref.hub_off[H_PORTS]);
    if (ports == NULL || !PyList_CheckExact(ports)) {
        PyObject *args[2] = {hub, source};
        return truth_of(PyObject_VectorcallMethod(s_can_forward, args,
                                                  2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
    }
    if (hub_enter() < 0)
        return -1;
    Py_INCREF(ports);
    int result = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ports); i++) {
        PyObject *port = PyList_GET_ITEM(ports, i);
        if (port == source)
            continue;
        int ok = can_send_now(port);
        if (ok == -2) {
            Py_INCREF(port);
            ok = can_send(port);
            Py_DECREF(port);
        }
        if (ok != 0) {
            result = ok;
            break;
        }
    }
    Py_DECREF(ports);
    hub_depth--;
    return result;
}

/* NetClient.can_receive_from -> can_receive; f: the owner's type flags */
static int
can_receive_from(PyObject *owner, unsigned int f, PyObject *sender)
{
    if (f & T_CLIENT && f & T_CRF) {
        if (f & T_CR_TRUE)
            return 1;
        if (f & T_CR_PORT && f & T_PORT) {
            PyObject *hub = SLOT(owner, ref.port_hub_off);
            if (hub != NULL)
                return hub_can_forward(hub, owner);
        }
        PyObject *args[1] = {owner};
        return truth_of(PyObject_VectorcallMethod(s_can_receive, args,
                                                  1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
    }
    PyObject *args[2] = {owner, sender};
    return truth_of(PyObject_VectorcallMethod(s_can_receive_from, args,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL));
}

/* Hub.forward (repeater): 0 when run here (*taken set), 1 when Python's forward answered
 * (*res, a new reference), -1 with an exception set. */
static int
hub_forward(PyObject *hub, PyObject *source, PyObject *frames, PyObject *vnet, PyObject **res,
            Py_ssize_t *taken)
{
    PyObject *counters = NULL, *fdb = NULL, *ports = NULL;
    if (type_flags(Py_TYPE(hub)) & T_HUB) {
        counters = SLOT(hub, ref.hub_off[H_COUNTERS]);
        fdb = SLOT(hub, ref.hub_off[H_FDB]);
        ports = SLOT(hub, ref.hub_off[H_PORTS]);
    }
    if (counters == NULL || Py_TYPE(counters) != &HubCountersType || fdb != Py_None ||
        ports == NULL || !PyList_CheckExact(ports)) {
        PyObject *args[4] = {hub, source, frames, vnet};
        *res = PyObject_VectorcallMethod(s_forward, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        return *res == NULL ? -1 : 1;
    }
    if (hub_enter() < 0) /* the only C-to-C recursion of the path */
        return -1;
    HubCountersObject *c = (HubCountersObject *)counters;
    Py_INCREF(counters);
    Py_INCREF(ports);
    int result = -1;
    c->frames_in += PySequence_Fast_GET_SIZE(frames);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(ports); i++) {
        PyObject *port = PyList_GET_ITEM(ports, i);
        if (port == source)
            continue;
        Py_INCREF(port);
        int rc = send_any(port, frames, vnet);
        Py_DECREF(port);
        if (rc < 0)
            goto done;
        c->deliveries += PySequence_Fast_GET_SIZE(frames);
    }
    *taken = PySequence_Fast_GET_SIZE(frames);
    result = 0;
done:
    Py_DECREF(ports);
    Py_DECREF(counters);
    hub_depth--;
    return result;
}

/* NetClient.deliver: 1 when nothing is left to queue (every frame taken, or dropped), 0
 * with *left the frames not taken (Python's return value: a new reference whose truth the
 * caller tests), -1 with an exception set. */
static int
deliver_n(PyObject *owner, PyObject *sender, PyObject *frames, PyObject *vnet, PyObject **left)
{
    TypeEntry *e = type_entry(Py_TYPE(owner));
    unsigned int f = e->flags;
    PyObject *recv = e->receive;
    PyObject *stats = NULL, *link_down = NULL, *deleted = NULL, *disabled = NULL,
             *rx_batch = NULL;
    if ((f & (T_CLIENT | T_DELIVER)) == (T_CLIENT | T_DELIVER)) {
        stats = CSLOT(owner, C_STATS);
        link_down = CSLOT(owner, C_LINK_DOWN);
        deleted = CSLOT(owner, C_DELETED);
        disabled = CSLOT(owner, C_RECEIVE_DISABLED);
        rx_batch = CSLOT(owner, C_RX_BATCH);
    }
    if (stats == NULL || Py_TYPE(stats) != &CountersType || link_down == NULL ||
        strict_bool(link_down) < 0 || deleted == NULL || strict_bool(deleted) < 0 ||
        disabled == NULL || strict_bool(disabled) < 0 || rx_batch == NULL ||
        strict_bool(vnet) < 0) {
        PyObject *args[4] = {owner, sender, frames, vnet};
        *left = PyObject_VectorcallMethod(s_deliver, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        return *left == NULL ? -1 : 0;
    }
    CountersObject *st = (CountersObject *)stats;
    if (link_down == Py_True || deleted == Py_True) {
        st->rx_dropped += PySequence_Fast_GET_SIZE(frames);
        return 1;
    }
    if (disabled == Py_True) {
        *left = Py_NewRef(frames);
        return 0;
    }
    Py_INCREF(stats);
    int rc = -1;
    PyObject *r = NULL, *passed = NULL;
    Py_ssize_t taken;
    if (rx_batch != Py_None) {
        /* hdr_len = vnet_hdr.HDR_LEN if vnet else self.host_hdr_len */
        PyObject *hdr = vnet == Py_True ? PyObject_GetAttr(ref.vnet_module, s_hdr_len)
                                        : Py_XNewRef(CSLOT(owner, C_HOST_HDR_LEN));
        if (hdr == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AttributeError, "host_hdr_len");
            goto done;
        }
        PyObject *args[3] = {rx_batch, frames, hdr};
        Py_INCREF(rx_batch);
        passed = PyObject_VectorcallMethod(s_accepted, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                           NULL);
        Py_DECREF(rx_batch);
        Py_DECREF(hdr);
        if (passed == NULL)
            goto done;
        Py_ssize_t np = PyObject_Length(passed);
        if (np < 0)
            goto done;
        Py_ssize_t nf = PySequence_Fast_GET_SIZE(frames);
        if (np == nf) {
            Py_CLEAR(passed);
        } else {
            st->rx_filtered += nf - np;
            if (!PyList_CheckExact(passed) && !PyTuple_CheckExact(passed))
                Py_SETREF(passed, PySequence_List(passed)); /* same frames, indexable here */
            if (passed == NULL)
                goto done;
            frames = passed;
            if (np == 0) { /* nothing passed: () */
                rc = 1;
                goto done;
            }
        }
        /* Python ran: the class may have changed its hooks */
        e = type_entry(Py_TYPE(owner));
        f = e->flags;
        recv = e->receive;
    }
    if (f & T_RECV_PORT && f & T_PORT && SLOT(owner, ref.port_hub_off) != NULL) {
        PyObject *hub = Py_NewRef(SLOT(owner, ref.port_hub_off));
        int fw = hub_forward(hub, owner, frames, vnet, &r, &taken);
        Py_DECREF(hub);
        if (fw < 0)
            goto done;
        if (fw == 0)
            goto counted;
    } else if (f & T_RECV_FUNC) {
        /* the class's function, called unbound (the instance is its first argument) */
        PyObject *args[4] = {NULL, owner, frames, vnet};
        Py_INCREF(recv);
        r = ((PyFunctionObject *)recv)->vectorcall(recv, args + 1,
                                                   3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(recv);
    } else {
        PyObject *args[3] = {owner, frames, vnet};
        r = PyObject_VectorcallMethod(s_receive, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (r == NULL)
        goto done;
    taken = PyLong_CheckExact(r) ? PyLong_AsSsize_t(r) : PyNumber_AsSsize_t(r, PyExc_OverflowError);
    Py_DECREF(r);
    if (taken == -1 && PyErr_Occurred())
        goto done;
counted:;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(frames);
    int count_bytes = (type_flags(Py_TYPE(owner)) & T_COUNT_BYTES) != 0;
    if (taken >= n) {
        st->rx_frames += n;
        if (count_bytes && sum_len(frames, 0, n, &st->rx_bytes) < 0)
            goto done;
        rc = 1;
        goto done;
    }
    if (taken > 0) {
        st->rx_frames += taken;
        if (count_bytes && sum_len(frames, 0, taken, &st->rx_bytes) < 0)
            goto done;
    }
    /* self.receive_disabled = True, through the slot's descriptor */
    if (PyObject_SetAttrString(owner, "receive_disabled", Py_True) < 0)
        goto done;
    PyObject *rest;
    if (taken >= 0) {
        rest = PySequence_GetSlice(frames, taken, n);
    } else { /* Python's frames[taken:] with a negative start */
        PyObject *start = PyLong_FromSsize_t(taken);
        PyObject *sl = start ? PySlice_New(start, Py_None, Py_None) : NULL;
        Py_XDECREF(start);
        rest = sl ? PyObject_GetItem(frames, sl) : NULL;
        Py_XDECREF(sl);
    }
    if (rest != NULL) {
        *left = rest;
        rc = 0;
    }
done:
    Py_XDECREF(passed);
    Py_DECREF(stats);
    return rc;
}

static int
set_slot(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject **p = (PyObject **)((char *)obj + off);
    PyObject *old = *p;
    *p = Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

/* bool(queue._entries): a deque's length is its ob_size */
static inline int
entries_truth(PyObject *entries)
{
    if (Py_IS_TYPE(entries, deque_type))
        return Py_SIZE(entries) != 0;
    Py_INCREF(entries);
    int t = PyObject_IsTrue(entries);
    Py_DECREF(entries);
    return t;
}

static int
queue_call(PyObject *name, PyObject *q, PyObject *sender, PyObject *frames, PyObject *sent_cb,
           PyObject *vnet, size_t nargs)
{
    PyObject *args[5] = {q, sender, frames, sent_cb, vnet};
    PyObject *r = PyObject_VectorcallMethod(name, args, nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* NetQueue.send; peer (flags pf, NULL when they may be stale) is the client whose queue
 * this is, as a rule its owner */
static Py_ssize_t
queue_send_n(PyObject *q, PyObject *sender, PyObject *frames, PyObject *sent_cb, PyObject *vnet,
             PyObject **res, PyObject *peer, unsigned int pf)
{
    PyObject *owner = NULL, *entries = NULL, *delivering = NULL;
    if (type_flags(Py_TYPE(q)) & T_QUEUE) {
        owner = SLOT(q, ref.queue_off[Q_OWNER]);
        entries = SLOT(q, ref.queue_off[Q_ENTRIES]);
        delivering = SLOT(q, ref.queue_off[Q_DELIVERING]);
    }
    int busy = delivering == NULL ? -1 : strict_bool(delivering);
    if (owner == NULL || entries == NULL || busy < 0) {
        PyObject *args[5] = {q, sender, frames, sent_cb, vnet};
        return python_answer(
            PyObject_VectorcallMethod(s_send, args, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL), res);
    }
    if (!busy) {
        unsigned int of = owner == peer ? pf : type_flags(Py_TYPE(owner));
        if ((of & (T_CLIENT | T_CRF | T_CR_TRUE)) != (T_CLIENT | T_CRF | T_CR_TRUE)) {
            Py_INCREF(owner);
            int ok = can_receive_from(owner, of, sender);
            Py_DECREF(owner);
            if (ok < 0)
                return ERR;
            busy = !ok;
        } /* else NetClient.can_receive: True, nothing runs */
    }
    if (busy)
        return queue_call(s_append, q, sender, frames, sent_cb, vnet, 5) < 0 ? ERR : 0;
    entries = SLOT(q, ref.queue_off[Q_ENTRIES]); /* re-read: can_receive may have run Python */
    int queued = entries == NULL ? -1 : entries_truth(entries);
    if (queued < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "_entries");
        return ERR;
    }
    if (queued) {
        if (queue_call(s_append, q, sender, frames, sent_cb, vnet, 5) < 0 ||
            queue_call(s_flush, q, sender, frames, sent_cb, vnet, 1) < 0)
            return ERR;
        return 0;
    }
    owner = SLOT(q, ref.queue_off[Q_OWNER]);
    if (owner == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_owner");
        return ERR;
    }
    Py_INCREF(owner);
    Py_INCREF(q);
    set_slot(q, ref.queue_off[Q_DELIVERING], Py_True);
    PyObject *left = NULL;
    int dr = deliver_n(owner, sender, frames, vnet, &left);
    /* finally: delivering = False, keeping a pending exception */
    set_slot(q, ref.queue_off[Q_DELIVERING], Py_False);
    Py_DECREF(owner);
    Py_ssize_t result = ERR;
    if (dr < 0)
        goto done;
    if (dr == 0) {
        int any = PyObject_IsTrue(left);
        if (any < 0)
            goto done;
        if (any) {
            if (queue_call(s_append, q, sender, left, sent_cb, vnet, 5) < 0)
                goto done;
            Py_ssize_t nleft = PyObject_Length(left);
            if (nleft < 0)
                goto done;
            result = PySequence_Fast_GET_SIZE(frames) - nleft;
            goto done;
        }
    }
    result = PySequence_Fast_GET_SIZE(frames);
done:
    Py_XDECREF(left);
    Py_DECREF(q);
    return result;
}

/* The rest of NetClient.send for a batch with vnet headers to a peer that takes none:
 * frames = vnet_hdr.to_plain(frames), then on without headers. Neither link nor filters
 * changed anything yet (no effect before the conversion, as in Python). */
static Py_ssize_t
send_plain(PyObject *self, PyObject *peer, PyObject *stats, PyObject *frames, PyObject *sent_cb,
           PyObject **res)
{
    Py_ssize_t r = ERR;
    PyObject *to_plain = PyObject_GetAttr(ref.vnet_module, s_to_plain);
    if (to_plain == NULL)
        return ERR;
    Py_INCREF(peer);
    Py_INCREF(stats);
    PyObject *plain = PyObject_Vectorcall(to_plain, &frames, 1, NULL);
    Py_DECREF(to_plain);
    if (plain == NULL)
        goto out;
    if (!PyList_CheckExact(plain) && !PyTuple_CheckExact(plain))
        Py_SETREF(plain, PySequence_List(plain));
    if (plain == NULL)
        goto out;
    /* Python ran: what comes after the conversion is read again */
    unsigned int f = type_flags(Py_TYPE(self));
    unsigned int pf = type_flags(Py_TYPE(peer));
    PyObject *filters = (f & T_CLIENT) ? CSLOT(self, C_FILTERS) : NULL;
    PyObject *pfilters = (pf & T_CLIENT) ? CSLOT(peer, C_FILTERS) : NULL;
    PyObject *incoming = (pf & T_CLIENT) ? CSLOT(peer, C_INCOMING) : NULL;
    if (filters == NULL || !PyList_CheckExact(filters) || PyList_GET_SIZE(filters) != 0 ||
        pfilters == NULL || !PyList_CheckExact(pfilters) || PyList_GET_SIZE(pfilters) != 0 ||
        incoming == NULL) {
        /* not on this path in practice: Python from the start (converts again) */
        Py_DECREF(plain);
        PyObject *args[4] = {self, frames, Py_True, sent_cb};
        r = python_answer(PyObject_Vectorcall(ref.py_send, args, 4, NULL), res);
        goto out;
    }
    CountersObject *st = (CountersObject *)stats;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(plain);
    Py_INCREF(incoming);
    st->tx_frames += count;
    int ran = (f & T_COUNT_BYTES) ? sum_len(plain, 0, count, &st->tx_bytes) : 0;
    if (ran >= 0) /* the peer's flags hold unless a frame's __len__ ran Python */
        r = queue_send_n(incoming, self, plain, sent_cb, Py_False, res, ran ? NULL : peer, pf);
    Py_DECREF(incoming);
    Py_DECREF(plain);
out:
    Py_DECREF(stats);
    Py_DECREF(peer);
    return r;
}

/* NetClient.send; self (whose type flags are f) and frames are held by the caller */
static Py_ssize_t
c_send_n(PyObject *self, unsigned int f, PyObject *frames, PyObject *vnet, PyObject *sent_cb,
         PyObject **res)
{
    PyObject *stats = NULL, *peer = NULL, *link_down = NULL, *filters = NULL;
    if (f & T_CLIENT && (PyList_CheckExact(frames) || PyTuple_CheckExact(frames))) {
        stats = CSLOT(self, C_STATS);
        peer = CSLOT(self, C_PEER);
        link_down = CSLOT(self, C_LINK_DOWN);
        filters = CSLOT(self, C_FILTERS);
    }
    int down = link_down == NULL ? -1 : strict_bool(link_down);
    int vn = strict_bool(vnet);
    if (stats == NULL || Py_TYPE(stats) != &CountersType || peer == NULL || down < 0 || vn < 0)
        goto python;
    CountersObject *st = (CountersObject *)stats;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(frames);
    if (down || peer == Py_None) {
        st->tx_dropped += count;
        return count;
    }
    unsigned int pf = type_flags(Py_TYPE(peer));
    if (!(pf & T_CLIENT) || filters == NULL || !PyList_CheckExact(filters) ||
        PyList_GET_SIZE(filters) != 0)
        goto python;
    PyObject *pfilters = CSLOT(peer, C_FILTERS);
    PyObject *incoming = CSLOT(peer, C_INCOMING);
    if (pfilters == NULL || !PyList_CheckExact(pfilters) || PyList_GET_SIZE(pfilters) != 0 ||
        incoming == NULL)
        goto python;
    if (vn && !(pf & T_ACCEPTS_VNET))
        return send_plain(self, peer, stats, frames, sent_cb, res);
    /* held: a frame's __len__ below may run Python code */
    Py_INCREF(stats);
    Py_INCREF(incoming);
    Py_ssize_t r = ERR;
    st->tx_frames += count;
    int ran = (f & T_COUNT_BYTES) ? sum_len(frames, 0, count, &st->tx_bytes) : 0;
    if (ran >= 0) /* the peer's flags hold unless a frame's __len__ ran Python */
        r = queue_send_n(incoming, self, frames, sent_cb, vnet, res, ran ? NULL : peer, pf);
    Py_DECREF(incoming);
    Py_DECREF(stats);
    return r;
python:;
    PyObject *args[4] = {self, frames, vnet, sent_cb};
    return python_answer(PyObject_Vectorcall(ref.py_send, args, 4, NULL), res);
}

/* NetClient.send, as Python calls it: the number of frames disposed of now */
static PyObject *
c_send(PyObject *self, unsigned int f, PyObject *frames, PyObject *vnet, PyObject *sent_cb)
{
    PyObject *res = NULL; /* self and frames: the caller's arguments, held by the caller */
    Py_ssize_t n = c_send_n(self, f, frames, vnet, sent_cb, &res);
    if (n >= 0)
        return PyLong_FromSsize_t(n);
    return n == PYOBJ ? res : NULL;
}

/* ---------------------------------------------------------- FastMethod */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *name;
    PyObject *doc;
} FastMethodObject;

static PyObject *
fastmethod_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *a[4] = {NULL, NULL, Py_False, Py_None}; /* self, frames, vnet, sent_cb */
    static const char *names[4] = {"self", "frames", "vnet", "sent_cb"};
    (void)callable;
    if (kwnames == NULL && nargs >= 2 && nargs <= 4) {
        /* positional only (every driver): no parsing loop */
        a[0] = args[0];
        a[1] = args[1];
        if (nargs > 2)
            a[2] = args[2];
        if (nargs > 3)
            a[3] = args[3];
    } else {
        if (nargs > 4) {
            PyErr_SetString(PyExc_TypeError, "send() takes at most 4 positional arguments");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nargs; i++)
            a[i] = args[i];
        Py_ssize_t nk = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t k = 0; k < nk; k++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, k);
            int j;
            for (j = 1; j < 4; j++)
                if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0)
                    break;
            if (j == 4 || j < nargs) {
                PyErr_Format(PyExc_TypeError, "send() got an unexpected or repeated argument %R",
                             key);
                return NULL;
            }
            a[j] = args[nargs + k];
        }
        if (a[0] == NULL || a[1] == NULL) {
            PyErr_SetString(PyExc_TypeError, "send() missing required argument 'frames'");
            return NULL;
        }
    }
    /* a type with NetClient's layout is a NetClient subclass (the cached flag says so) */
    unsigned int f = ref.ready ? type_flags(Py_TYPE(a[0])) : 0;
    if (!ref.ready || (!(f & T_CLIENT) && !PyObject_TypeCheck(a[0], ref.client_type))) {
        PyErr_SetString(PyExc_TypeError, "send() needs a NetClient and an installed core");
        return NULL;
    }
    return c_send(a[0], f, a[1], a[2], a[3]);
}

static PyObject *
fastmethod_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static PyObject *
fastmethod_repr(FastMethodObject *self)
{
    return PyUnicode_FromFormat("<compiled method %U>", self->name);
}

static PyMemberDef fastmethod_members[] = {
    {"__name__", T_OBJECT, offsetof(FastMethodObject, name), READONLY, NULL},
    {"__doc__", T_OBJECT, offsetof(FastMethodObject, doc), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static void
fastmethod_dealloc(FastMethodObject *self)
{
    Py_XDECREF(self->name);
    Py_XDECREF(self->doc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject FastMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netstack.net._fastnet.FastMethod",
    .tp_basicsize = sizeof(FastMethodObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A compiled method of the forwarding core (binds like a function).",
    .tp_vectorcall_offset = offsetof(FastMethodObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = fastmethod_get,
    .tp_repr = (reprfunc)fastmethod_repr,
    .tp_members = fastmethod_members,
    .tp_dealloc = (destructor)fastmethod_dealloc,
};

/* ------------------------------------------------------------- install */

static int
get_offsets(PyTypeObject *tp, const char **names, PyObject **descrs, Py_ssize_t *offs, int n)
{
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemString(tp->tp_dict, names[i]);
        if (d == NULL || !PyObject_TypeCheck(d, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", tp->tp_name, names[i]);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", tp->tp_name, names[i]);
            return -1;
        }
        Py_XSETREF(descrs[i], Py_NewRef(d));
        offs[i] = m->offset;
    }
    return 0;
}

static int
get_attr(PyTypeObject *tp, const char *name, PyObject **out)
{
    PyObject *v = PyDict_GetItemString(tp->tp_dict, name);
    if (v == NULL) {
        PyErr_Format(PyExc_TypeError, "%s has no own %s", tp->tp_name, name);
        return -1;
    }
    Py_XSETREF(*out, Py_NewRef(v));
    return 0;
}

static PyObject *
fastnet_install(PyObject *module, PyObject *args)
{
    PyTypeObject *client, *port, *hub, *queue;
    PyObject *py_send;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O:install", &PyType_Type, &client, &PyType_Type,
                          &port, &PyType_Type, &hub, &PyType_Type, &queue, &py_send))
        return NULL;
    ref.ready = 0;
    if (get_offsets(client, client_slot_names, ref.client_descr, ref.client_off, C_NSLOTS) < 0 ||
        get_offsets(queue, queue_slot_names, ref.queue_descr, ref.queue_off, Q_NSLOTS) < 0 ||
        get_offsets(hub, hub_slot_names, ref.hub_descr, ref.hub_off, H_NSLOTS) < 0)
        return NULL;
    const char *hub_name[1] = {"hub"};
    PyObject *hub_descr[1] = {NULL};
    Py_ssize_t hub_off[1];
    if (get_offsets(port, hub_name, hub_descr, hub_off, 1) < 0)
        return NULL;
    Py_XSETREF(ref.port_hub_descr, hub_descr[0]);
    ref.port_hub_off = hub_off[0];
    if (get_attr(client, "deliver", &ref.py_deliver) < 0 ||
        get_attr(client, "can_receive_from", &ref.py_can_recv_from) < 0 ||
        get_attr(client, "can_receive", &ref.py_can_receive) < 0 ||
        get_attr(client, "can_send", &ref.py_can_send) < 0 ||
        get_attr(port, "receive", &ref.port_receive) < 0 ||
        get_attr(port, "can_receive", &ref.port_can_receive) < 0 ||
        get_attr(queue, "send", &ref.queue_send) < 0 ||
        get_attr(hub, "forward", &ref.hub_forward) < 0 ||
        get_attr(hub, "can_forward", &ref.hub_can_forward) < 0)
        return NULL;
    Py_XSETREF(ref.py_send, Py_NewRef(py_send));
    Py_XSETREF(ref.client_type, (PyTypeObject *)Py_NewRef(client));
    Py_XSETREF(ref.port_type, (PyTypeObject *)Py_NewRef(port));
    Py_XSETREF(ref.hub_type, (PyTypeObject *)Py_NewRef(hub));
    Py_XSETREF(ref.queue_type, (PyTypeObject *)Py_NewRef(queue));
    if (ref.send_method == NULL) {
        FastMethodObject *m = PyObject_New(FastMethodObject, &FastMethodType);
        if (m == NULL)
            return NULL;
        m->vectorcall = fastmethod_vectorcall;
        m->name = PyUnicode_FromString("send");
        m->doc = PyObject_GetAttrString(py_send, "__doc__");
        if (m->name == NULL || m->doc == NULL) {
            Py_DECREF(m);
            return NULL;
        }
        ref.send_method = (PyObject *)m;
    }
    if (ref.vnet_module == NULL &&
        (ref.vnet_module = PyImport_ImportModule("netstack.proto.vnet")) == NULL)
        return NULL;
    if (deque_type == NULL) {
        PyObject *collections = PyImport_ImportModule("collections");
        PyObject *dq = collections ? PyObject_GetAttrString(collections, "deque") : NULL;
        Py_XDECREF(collections);
        if (dq == NULL)
            return NULL;
        if (!PyType_Check(dq)) {
            Py_DECREF(dq);
            PyErr_SetString(PyExc_TypeError, "collections.deque is not a type");
            return NULL;
        }
        deque_type = (PyTypeObject *)dq;
    }
    memset(type_cache, 0, sizeof type_cache);
    ref.ready = 1;
    return Py_NewRef(ref.send_method);
}

static PyObject *
fastnet_type_flags(PyObject *module, PyObject *tp)
{
    if (!PyType_Check(tp)) {
        PyErr_SetString(PyExc_TypeError, "a type");
        return NULL;
    }
    if (!ref.ready)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLong(type_flags((PyTypeObject *)tp));
}

static PyMethodDef fastnet_methods[] = {
    {"install", fastnet_install, METH_VARARGS,
     "install(NetClient, HubPort, Hub, NetQueue, py_send) -> the compiled send method."},
    {"type_flags", fastnet_type_flags, METH_O,
     "Which reference hooks and layout the C path found for a type (a bit set)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastnet_module = {
    PyModuleDef_HEAD_INIT, "_fastnet",
    "The forwarding core's per-frame path in C (see netstack.net.fastcore).", -1,
    fastnet_methods, NULL, NULL, NULL, NULL,
};

#define INTERN(var, text)                                                                   \
    do {                                                                                    \
        if ((var = PyUnicode_InternFromString(text)) == NULL)                               \
            return NULL;                                                                    \
    } while (0)

PyMODINIT_FUNC
PyInit__fastnet(void)
{
    if (PyType_Ready(&CountersType) < 0 || PyType_Ready(&HubCountersType) < 0 ||
        PyType_Ready(&FastMethodType) < 0)
        return NULL;
    INTERN(s_send, "send");
    INTERN(s_deliver, "deliver");
    INTERN(s_can_receive_from, "can_receive_from");
    INTERN(s_can_receive, "can_receive");
    INTERN(s_can_send, "can_send");
    INTERN(s_receive, "receive");
    INTERN(s_count_bytes, "count_bytes");
    INTERN(s_accepts_vnet, "accepts_vnet");
    INTERN(s_append, "_append");
    INTERN(s_flush, "flush");
    INTERN(s_forward, "forward");
    INTERN(s_can_forward, "can_forward");
    INTERN(s_hub, "hub");
    INTERN(s_to_plain, "to_plain");
    INTERN(s_hdr_len, "HDR_LEN");
    INTERN(s_accepted, "accepted");
    PyObject *m = PyModule_Create(&fastnet_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Counters", (PyObject *)&CountersType) < 0 ||
        PyModule_AddObjectRef(m, "HubCounters", (PyObject *)&HubCountersType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
