/* Virtqueue burst loops of the vhost-user back end, split and packed rings, compiled.
 *
 * An accelerator of the pure-Python reference (drivers/vhost_user/virtqueue.py and
 * packed.py for the ring mechanics, drivers/vhost_user/rxpath.py and txpath.py for what
 * the device does with a burst): the same checks in the same order, the same results, the same error
 * texts.  The Python side picks it with netstack.fastpath.load and keeps the state (ring
 * indices, counters); these functions take that state as arguments and return the new
 * one.  Layouts: virtio 1.x section 2.7 and include/standard-headers/linux/virtio_ring.h
 * (little-endian descriptors {u64 addr, u32 len, u16 flags, u16 next}, avail ring
 * {u16 flags, u16 idx, u16 ring[num]}, used ring {u16 flags, u16 idx, {u32 id, u32 len}[num]});
 * packed rings: virtio 1.2 section 2.8 (vring_packed.h).
 *
 * Guest memory
 *   Every pointer into guest memory comes from a buffer acquired (PyObject_GetBuffer) at
 *   the start of the call and released at its end: the mmap objects of the regions and
 *   the ring views.  An mmap with an exported buffer cannot be closed, so no region can be
 *   unmapped while a pointer exists, and no pointer outlives the call.  Every mapping is
 *   registered with the SIGBUS guard (_memguard.c) for as long as it is mapped, so an
 *   access to a page the front end truncated reads zeros and completes here as it does in
 *   Python; the caller checks the fault count after the burst.
 *
 * Guest-controlled values
 *   Descriptors are copied to locals (behind a compiler barrier) before they are checked
 *   and used; the driver rewriting them meanwhile cannot get past a check.  A guest
 *   address is used only when [addr, addr + len) lies inside one region, computed without
 *   overflow; a head or next index only when below its table's size; a chain ends after
 *   as many descriptors as its table has (loops); indirect tables must be non-empty
 *   multiples of 16 bytes, not nested, not combined with NEXT.
 *
 * Layout of the source: vring_guest.h (guest memory, dirty log), vring_split.h (split
 * ring access, chain walking), vring_packed.h (packed ring access, event suppression of
 * both layouts, the layout dispatch), this file (transmit, used elements, the module),
 * vring_rx.h (receive).
 *
 * Errors
 *   A driver error is returned as its message (the caller raises RingError with it and
 *   breaks the queue) together with the state reached so far: what was published before
 *   the error stays published, as in Python.  Only a bad argument or a failed allocation
 *   raises.
 *
 * Dirty log
 *   With a log buffer, every range written into guest memory has its 4 KiB pages marked
 *   (bit p % 8 of byte p / 8) before the used index is stored, with an atomic OR on the
 *   byte: a bit is only ever ORed in, never stored as part of a stale value, so a
 *   concurrent collector (QEMU's atomic exchange) or another writer can cost a spurious
 *   dirty page, never a lost one.  Pages past the log are counted, not marked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <endian.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* One translation unit: the headers hold the parts, each named after what it owns. */
#include "vring_guest.h"
#include "vring_split.h"
#include "vring_packed.h"

/* -- transmit --------------------------------------------------------------------------- */

static PyObject *make_frame(const uint8_t *src, size_t len, int keep, uint32_t hl)
{
    if (keep && hl == 10) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len + 2);
        if (b == NULL)
            return NULL;
        char *p = PyBytes_AS_STRING(b);
        memcpy(p, src, 10);
        p[10] = p[11] = 0;
        memcpy(p + 12, src + 10, len - 10);
        return b;
    }
    if (keep)
        return PyBytes_FromStringAndSize((const char *)src, (Py_ssize_t)len);
    return PyBytes_FromStringAndSize((const char *)src + hl, (Py_ssize_t)(len - hl));
}

/* One burst of the simple case: every buffer one direct device-readable descriptor. */
static int tx_simple(Ring *q, uint32_t n, const Desc *descs, uint8_t **ptrs, uint32_t hl,
                     int offloads, int want, PyObject *frames, int *keep, uint64_t *malformed)
{
    uint32_t shortest = UINT32_MAX, longest = 0;
    for (uint32_t k = 0; k < n; k++) {
        if (descs[k].len < shortest)
            shortest = descs[k].len;
        if (descs[k].len > longest)
            longest = descs[k].len;
    }
    if (shortest < hl) {
        snprintf(q->err, ERRLEN, "transmit chain of %u bytes is shorter than the header",
                 shortest);
        q->failed = 1;
        return -1;
    }
    for (uint32_t k = 0; k < n; k++)
        if (descs[k].len < hl + ETH_HLEN || descs[k].len > hl + NET_BUFSIZE)
            (*malformed)++;
    if (!want)
        return 0;
    prefetch_all(ptrs, n, 0);
    if (offloads)
        for (uint32_t k = 0; k < n && !*keep; k++)
            if (ptrs[k][0] || ptrs[k][1])
                *keep = 1;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t len = descs[k].len;
        if (len < hl + ETH_HLEN || len > hl + NET_BUFSIZE)
            continue;
        PyObject *f = make_frame(ptrs[k], len, *keep, hl);
        if (f == NULL || PyList_Append(frames, f) < 0) {
            Py_XDECREF(f);
            q->failed = -1;
            return -1;
        }
        Py_DECREF(f);
    }
    return 0;
}

/* The general case: chains walked one by one (next, indirect), gathered. */
static int tx_chains(Ring *q, uint32_t n, const uint16_t *heads, uint32_t hl, int offloads,
                     int want, PyObject *frames, int *keep, uint64_t *malformed)
{
    Segs s = {NULL, 0, 0};
    int rc = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint64_t total;
        s.n = 0;
        if (walk_buf(q, heads, k, 0, &s, &total) < 0) {
            rc = -1;
            break;
        }
        if (total < hl) {
            snprintf(q->err, ERRLEN, "transmit chain of %llu bytes is shorter than the header",
                     (unsigned long long)total);
            q->failed = 1;
            rc = -1;
            break;
        }
        if (total < hl + ETH_HLEN || total > hl + NET_BUFSIZE) {
            (*malformed)++;
            continue;
        }
        if (!want)
            continue;
        PyObject *f = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
        if (f == NULL) {
            q->failed = -1;
            rc = -1;
            break;
        }
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(f);
        for (size_t i = 0; i < s.n; i++) {
            memcpy(p, s.seg[i].ptr, s.seg[i].len);
            p += s.seg[i].len;
        }
        const uint8_t *data = (uint8_t *)PyBytes_AS_STRING(f);
        if (offloads && (data[0] || data[1]))
            *keep = 1;
        int bad = PyList_Append(frames, f);
        Py_DECREF(f);
        if (bad < 0) {
            q->failed = -1;
            rc = -1;
            break;
        }
    }
    PyMem_Free(s.seg);
    if (rc < 0 || (*keep && hl == 12))
        return rc;
    /* Headers kept with a 10-byte header get two zero bytes; dropped headers go. */
    Py_ssize_t count = PyList_GET_SIZE(frames);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *old = PyList_GET_ITEM(frames, i);
        const uint8_t *src = (const uint8_t *)PyBytes_AS_STRING(old);
        PyObject *f = make_frame(src, (size_t)PyBytes_GET_SIZE(old), *keep, hl);
        if (f == NULL) {
            q->failed = -1;
            return -1;
        }
        PyList_SetItem(frames, i, f);
    }
    return 0;
}

static PyObject *vring_tx_split(PyObject *self, PyObject *args)
{
    PyObject *desc_o, *avail_o, *mem_o;
    unsigned int num, last_avail, budget, hl;
    int offloads, want, indirect;
    if (!PyArg_ParseTuple(args, "OOOIIIIppp:tx_split", &desc_o, &avail_o, &mem_o, &num,
                          &last_avail, &budget, &hl, &offloads, &want, &indirect))
        return NULL;
    if (check_burst(num, hl) < 0)
        return NULL;
    Views v = {0};
    Log log = {0};
    Mem mem; /* only the regions below mem.n are read: not zeroing ~6.6 KB per burst */
    mem.n = 0;
    Ring q = {0};
    PyObject *frames = NULL, *result = NULL, *heads_b = NULL;
    Desc *descs = NULL;
    uint8_t **ptrs = NULL;
    if (get_view(desc_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        get_view(avail_o, &v.avail, &v.have_avail, 4 + 2 * (Py_ssize_t)num) < 0 ||
        mem_open(&mem, mem_o) < 0)
        goto out;
    q.desc = v.desc.buf;
    q.avail = v.avail.buf;
    q.num = num;
    q.last_avail = (uint16_t)last_avail;
    q.indirect = indirect;
    q.mem = &mem;
    q.log = &log;
    frames = PyList_New(0);
    if (frames == NULL)
        goto out;
    int keep = 0;
    uint64_t malformed = 0;
    int n = avail_count(&q);
    if (n > (int)budget)
        n = (int)budget;
    if (n <= 0) {
        heads_b = PyBytes_FromStringAndSize(NULL, 0);
        n = 0;
    } else {
        heads_b = PyBytes_FromStringAndSize(NULL, 2 * (Py_ssize_t)n);
        descs = PyMem_Malloc(sizeof(Desc) * (size_t)n);
        ptrs = PyMem_Malloc(sizeof(uint8_t *) * (size_t)n);
        if (heads_b == NULL || descs == NULL || ptrs == NULL) {
            PyErr_NoMemory();
            goto out;
        }
        uint16_t *heads = (uint16_t *)PyBytes_AS_STRING(heads_b);
        int simple = batch(&q, (uint32_t)n, heads, descs, ptrs, 0);
        if (simple == 1)
            tx_simple(&q, (uint32_t)n, descs, ptrs, hl, offloads, want, frames, &keep,
                      &malformed);
        else if (simple == 0)
            tx_chains(&q, (uint32_t)n, heads, hl, offloads, want, frames, &keep, &malformed);
        if (q.failed == -1)
            goto out;
    }
    if (heads_b == NULL)
        goto out;
    PyObject *err = error_or_none(&q);
    if (err == NULL)
        goto out;
    result = Py_BuildValue("(NNOiKO)", err, frames, keep ? Py_True : Py_False,
                           q.failed ? 0 : n, (unsigned long long)malformed, heads_b);
    frames = NULL;
out:
    Py_XDECREF(frames);
    Py_XDECREF(heads_b);
    PyMem_Free(descs);
    PyMem_Free(ptrs);
    mem_close(&mem);
    views_close(&v, &log);
    return result;
}

/* Interrupt the driver: one write to the call eventfd (errors ignored, as in Python). */
static void signal_call(int fd)
{
    uint64_t one = 1;
    if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
        /* a full or closed eventfd: the driver is being signalled or gone */
    }
}

/* After used entries of a transmit burst were published: the call decision (made and
 * signalled here), then, with quiet, no more kicks wanted for now. */
static int after_push(Ring *q, const Notify *nt, int call_fd, int quiet)
{
    int call = needs_call(q, nt);
    if (call)
        signal_call(call_fd);
    if (quiet)
        no_kicks(q, nt);
    return call;
}

static PyObject *vring_push_split(PyObject *self, PyObject *args)
{
    PyObject *used_o, *avail_o, *heads_o, *lens_o, *log_o, *used_log_o;
    unsigned int num, used_idx, signalled;
    int event_idx, valid, call_fd, quiet;
    if (!PyArg_ParseTuple(args, "OOIIOOOOpIpip:push_split", &used_o, &avail_o, &num,
                          &used_idx, &heads_o, &lens_o, &log_o, &used_log_o, &event_idx,
                          &signalled, &valid, &call_fd, &quiet))
        return NULL;
    if (check_num(num) < 0)
        return NULL;
    Views v = {0};
    Log log;
    Ring q;
    memset(&q, 0, sizeof(q));
    PyObject *result = NULL;
    Py_buffer heads = {0}, lens = {0};
    int have_heads = 0, have_lens = 0;
    Notify nt = {event_idx, signalled, valid};
    if (get_view(used_o, &v.used, &v.have_used, 4 + 8 * (Py_ssize_t)num) < 0 ||
        get_view(avail_o, &v.avail, &v.have_avail, 4 + 2 * (Py_ssize_t)num + 2 * !!event_idx) < 0 ||
        open_log(&log, &v, log_o, used_log_o) < 0)
        goto out;
    if (PyObject_GetBuffer(heads_o, &heads, PyBUF_SIMPLE) < 0)
        goto out;
    have_heads = 1;
    Py_ssize_t n = heads.len / 2;
    if (n > (Py_ssize_t)num) {
        PyErr_SetString(PyExc_ValueError, "more used elements than the ring holds");
        goto out;
    }
    if (lens_o != Py_None) {
        if (PyObject_GetBuffer(lens_o, &lens, PyBUF_SIMPLE) < 0)
            goto out;
        have_lens = 1;
        if (lens.len < 4 * n) {
            PyErr_SetString(PyExc_ValueError, "fewer lengths than ids");
            goto out;
        }
    }
    q.used = v.used.buf;
    q.avail = v.avail.buf;
    q.num = num;
    q.used_idx = (uint16_t)used_idx;
    q.log = &log;
    {
        uint16_t ids[256];
        uint32_t lv[256];
        const uint8_t *hp = heads.buf, *lp = have_lens ? lens.buf : NULL;
        for (Py_ssize_t done = 0; done < n;) {
            Py_ssize_t chunk = n - done < 256 ? n - done : 256;
            memcpy(ids, hp + 2 * done, 2 * (size_t)chunk);
            if (lp)
                memcpy(lv, lp + 4 * done, 4 * (size_t)chunk);
            push_used(&q, ids, lp ? lv : NULL, (uint32_t)chunk);
            done += chunk;
        }
    }
    int call = after_push(&q, &nt, call_fd, quiet);
    result = Py_BuildValue("(IKKi)", (unsigned int)q.used_idx, (unsigned long long)log.bits,
                           (unsigned long long)log.out_of_range, call);
out:
    if (have_heads)
        PyBuffer_Release(&heads);
    if (have_lens)
        PyBuffer_Release(&lens);
    views_close(&v, &log);
    return result;
}

/* -- packed rings ----------------------------------------------------------------------- */

static PyObject *vring_tx_packed(PyObject *self, PyObject *args)
{
    PyObject *ring_o, *mem_o;
    unsigned int num, aslot, awrap, budget, hl;
    int offloads, want, indirect;
    if (!PyArg_ParseTuple(args, "OOIIIIIppp:tx_packed", &ring_o, &mem_o, &num, &aslot, &awrap,
                          &budget, &hl, &offloads, &want, &indirect))
        return NULL;
    if (check_packed(num, aslot, awrap, 0, 0) < 0 || check_hl(hl) < 0)
        return NULL;
    Views v = {0};
    Log log = {0};
    Mem mem;
    mem.n = 0;
    Ring q = {0};
    PyObject *frames = NULL, *result = NULL, *bufs_b = NULL;
    Desc *descs = NULL;
    uint8_t **ptrs = NULL;
    PBuf *bufs = NULL;
    if (get_view(ring_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        mem_open(&mem, mem_o) < 0)
        goto out;
    bufs = PyMem_Malloc(sizeof(PBuf) * num);
    frames = PyList_New(0);
    if (bufs == NULL || frames == NULL) {
        if (bufs == NULL)
            PyErr_NoMemory();
        goto out;
    }
    q.packed = 1;
    q.desc = v.desc.buf;
    q.num = num;
    q.aslot = aslot;
    q.awrap = awrap;
    q.bufs = bufs;
    q.indirect = indirect;
    q.mem = &mem;
    q.log = &log;
    int keep = 0;
    uint64_t malformed = 0;
    int n = p_scan(&q);
    if (n > (int)budget)
        n = (int)budget;
    if (n > 0) {
        descs = PyMem_Malloc(sizeof(Desc) * (size_t)n);
        ptrs = PyMem_Malloc(sizeof(uint8_t *) * (size_t)n);
        if (descs == NULL || ptrs == NULL) {
            PyErr_NoMemory();
            goto out;
        }
        int simple = p_batch(&q, (uint32_t)n, descs, ptrs, 0);
        if (simple == 1)
            tx_simple(&q, (uint32_t)n, descs, ptrs, hl, offloads, want, frames, &keep,
                      &malformed);
        else if (simple == 0)
            tx_chains(&q, (uint32_t)n, NULL, hl, offloads, want, frames, &keep, &malformed);
        if (q.failed == -1)
            goto out;
    }
    if (n < 0 || q.failed)
        n = 0;
    p_consume(&q, 0, (uint32_t)n);
    bufs_b = PyBytes_FromStringAndSize((const char *)bufs, (Py_ssize_t)sizeof(PBuf) * n);
    if (bufs_b == NULL)
        goto out;
    PyObject *err = error_or_none(&q);
    if (err == NULL)
        goto out;
    result = Py_BuildValue("(NNOiKNII)", err, frames, keep ? Py_True : Py_False, n,
                           (unsigned long long)malformed, bufs_b, q.aslot, q.awrap);
    frames = NULL;
    bufs_b = NULL;
out:
    Py_XDECREF(frames);
    Py_XDECREF(bufs_b);
    PyMem_Free(descs);
    PyMem_Free(ptrs);
    PyMem_Free(bufs);
    mem_close(&mem);
    views_close(&v, &log);
    return result;
}

static PyObject *vring_push_packed(PyObject *self, PyObject *args)
{
    PyObject *ring_o, *drv_o, *dev_o, *bufs_o, *lens_o, *log_o;
    unsigned int num, uslot, uwrap, signalled;
    unsigned long long desc_gpa, evt_gpa;
    int event_idx, valid, call_fd, quiet;
    if (!PyArg_ParseTuple(args, "OOOIIIOOOKKpIpip:push_packed", &ring_o, &drv_o, &dev_o, &num,
                          &uslot, &uwrap, &bufs_o, &lens_o, &log_o, &desc_gpa, &evt_gpa,
                          &event_idx, &signalled, &valid, &call_fd, &quiet))
        return NULL;
    if (check_packed(num, 0, 0, uslot, uwrap) < 0)
        return NULL;
    Views v = {0};
    Log log;
    Ring q;
    memset(&q, 0, sizeof(q));
    PyObject *result = NULL;
    Py_buffer bufs = {0}, lens = {0};
    int have_bufs = 0, have_lens = 0;
    Notify nt = {event_idx, signalled, valid};
    if (get_view(ring_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        get_view(drv_o, &v.avail, &v.have_avail, 4) < 0 ||
        get_view(dev_o, &v.used, &v.have_used, 4) < 0 || open_log(&log, &v, log_o, Py_None) < 0)
        goto out;
    if (PyObject_GetBuffer(bufs_o, &bufs, PyBUF_SIMPLE) < 0)
        goto out;
    have_bufs = 1;
    Py_ssize_t n = bufs.len / (Py_ssize_t)sizeof(PBuf);
    PBuf *b = PyMem_Malloc(sizeof(PBuf) * (size_t)(n ? n : 1));
    if (b == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    memcpy(b, bufs.buf, sizeof(PBuf) * (size_t)n);
    uint64_t total = 0;
    for (Py_ssize_t k = 0; k < n; k++)
        total += b[k].n ? b[k].n : num + 1;
    if (total > num) {
        PyMem_Free(b);
        PyErr_SetString(PyExc_ValueError, "more used descriptors than the ring holds");
        goto out;
    }
    if (lens_o != Py_None) {
        if (PyObject_GetBuffer(lens_o, &lens, PyBUF_SIMPLE) < 0) {
            PyMem_Free(b);
            goto out;
        }
        have_lens = 1;
        if (lens.len < 4 * n) {
            PyMem_Free(b);
            PyErr_SetString(PyExc_ValueError, "fewer lengths than buffers");
            goto out;
        }
    }
    q.packed = 1;
    q.desc = v.desc.buf;
    q.avail = v.avail.buf;
    q.used = v.used.buf;
    q.num = num;
    q.uslot = uslot;
    q.uwrap = uwrap;
    q.desc_gpa = desc_gpa;
    q.evt_gpa = evt_gpa;
    q.log = &log;
    p_push(&q, b, (uint32_t)n, have_lens ? (const uint32_t *)lens.buf : NULL);
    PyMem_Free(b);
    int call = after_push(&q, &nt, call_fd, quiet);
    result = Py_BuildValue("(IIiKK)", q.uslot, q.uwrap, call, (unsigned long long)log.bits,
                           (unsigned long long)log.out_of_range);
out:
    if (have_bufs)
        PyBuffer_Release(&bufs);
    if (have_lens)
        PyBuffer_Release(&lens);
    views_close(&v, &log);
    return result;
}

#include "vring_rx.h"

/* A full fence (a store before it is visible before a load after it is made), for the
 * Python side's enable-notifications-then-recheck (drivers/vhost_user/fence.py). */
static PyObject *vring_fence(PyObject *self, PyObject *unused)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fence", vring_fence, METH_NOARGS, "fence() -> None: a full (store-load) memory fence"},
    {"tx_split", vring_tx_split, METH_VARARGS,
     "tx_split(desc, avail, mem, num, last_avail, budget, hl, offloads, want, indirect)"
     " -> (error, frames, keep, chains, malformed, heads)"},
    {"push_split", vring_push_split, METH_VARARGS,
     "push_split(used, avail, num, used_idx, heads, lens, log, used_log, event_idx,"
     " signalled, signalled_valid, call_fd, quiet) -> (used_idx, log_bits,"
     " log_out_of_range, called)"},
    {"rx_split", vring_rx_split, METH_VARARGS,
     "rx_split(desc, avail, used, mem, num, last_avail, used_idx, frames, vnet, hl,"
     " mergeable, indirect, log, used_log, event_idx, signalled, signalled_valid)"
     " -> (error, done, last_avail, used_idx, bad_buffers, too_big, log_bits,"
     " log_out_of_range, call)"},
    {"tx_packed", vring_tx_packed, METH_VARARGS,
     "tx_packed(ring, mem, num, avail_slot, avail_wrap, budget, hl, offloads, want,"
     " indirect) -> (error, frames, keep, buffers, malformed, bufs, avail_slot, avail_wrap)"},
    {"push_packed", vring_push_packed, METH_VARARGS,
     "push_packed(ring, driver_event, device_event, num, used_slot, used_wrap, bufs, lens,"
     " log, ring_gpa, device_event_gpa, event_idx, signalled, signalled_valid, call_fd,"
     " quiet) -> (used_slot, used_wrap, called, log_bits, log_out_of_range)"},
    {"rx_packed", vring_rx_packed, METH_VARARGS,
     "rx_packed(ring, driver_event, mem, num, avail_slot, avail_wrap, used_slot, used_wrap,"
     " frames, vnet, hl, mergeable, indirect, log, ring_gpa, event_idx, signalled,"
     " signalled_valid) -> (error, done, avail_slot, avail_wrap, used_slot, used_wrap,"
     " bad_buffers, too_big, log_bits, log_out_of_range, call)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_vring", "Virtqueue burst loops (split and packed), compiled.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__vring(void)
{
    return PyModule_Create(&module);
}
