/* Split-virtqueue burst loops of the vhost-user back end, compiled.
 *
 * An accelerator of the pure-Python reference (drivers/vhost_user/virtqueue.py for the
 * ring mechanics, drivers/vhost_user/rxpath.py and txpath.py for what the device does
 * with a burst): the same checks in the same order, the same results, the same error
 * texts.  The Python side picks it with netstack.fastpath.load and keeps the state (ring
 * indices, counters); these functions take that state as arguments and return the new
 * one.  Layouts: virtio 1.x section 2.7 and include/standard-headers/linux/virtio_ring.h
 * (little-endian descriptors {u64 addr, u32 len, u16 flags, u16 next}, avail ring
 * {u16 flags, u16 idx, u16 ring[num]}, used ring {u16 flags, u16 idx, {u32 id, u32 len}[num]}).
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
 * Layout of the source: vring_guest.h (guest memory, dirty log), vring_split.h (ring
 * access, chain walking), this file (transmit, used elements, the module), vring_rx.h
 * (receive).
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

/* One translation unit: the headers hold the parts, each named after what it owns. */
#include "vring_guest.h"
#include "vring_split.h"

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
        if (walk(q, heads[k], 0, &s, &total) < 0) {
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

/* Reads heads[0..n) and their descriptors; 1 when every one has exactly `flags` and lies in
 * the shared memory (ptrs filled), 0 when some have other flags, -1 on a driver error. */
static int batch(Ring *q, uint32_t n, uint16_t *heads, Desc *descs, uint8_t **ptrs,
                 uint16_t flags)
{
    int simple = 1;
    for (uint32_t k = 0; k < n; k++) {
        heads[k] = avail_head(q, k);
        if (heads[k] >= q->num) {
            snprintf(q->err, ERRLEN, "an avail ring entry is past the table of %u", q->num);
            q->failed = 1;
            return -1;
        }
    }
    for (uint32_t k = 0; k < n; k++) {
        read_desc(q->desc + 16 * (size_t)heads[k], &descs[k]);
        if (descs[k].flags != flags)
            simple = 0;
    }
    if (!simple)
        return 0;
    for (uint32_t k = 0; k < n; k++) {
        ptrs[k] = gpa_ptr(q->mem, descs[k].addr, descs[k].len);
        if (ptrs[k] == NULL) {
            snprintf(q->err, ERRLEN, "a descriptor points outside the shared memory");
            q->failed = 1;
            return -1;
        }
    }
    return 1;
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

static PyObject *vring_push_split(PyObject *self, PyObject *args)
{
    PyObject *used_o, *heads_o, *lens_o, *log_o, *used_log_o;
    unsigned int num, used_idx;
    if (!PyArg_ParseTuple(args, "OIIOOOO:push_split", &used_o, &num, &used_idx, &heads_o,
                          &lens_o, &log_o, &used_log_o))
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
    if (get_view(used_o, &v.used, &v.have_used, 4 + 8 * (Py_ssize_t)num) < 0 ||
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
    result = Py_BuildValue("(IKK)", (unsigned int)q.used_idx, (unsigned long long)log.bits,
                           (unsigned long long)log.out_of_range);
out:
    if (have_heads)
        PyBuffer_Release(&heads);
    if (have_lens)
        PyBuffer_Release(&lens);
    views_close(&v, &log);
    return result;
}

#include "vring_rx.h"

static PyMethodDef methods[] = {
    {"tx_split", vring_tx_split, METH_VARARGS,
     "tx_split(desc, avail, mem, num, last_avail, budget, hl, offloads, want, indirect)"
     " -> (error, frames, keep, chains, malformed, heads)"},
    {"push_split", vring_push_split, METH_VARARGS,
     "push_split(used, num, used_idx, heads, lens, log, used_log)"
     " -> (used_idx, log_bits, log_out_of_range)"},
    {"rx_split", vring_rx_split, METH_VARARGS,
     "rx_split(desc, avail, used, mem, num, last_avail, used_idx, frames, vnet, hl,"
     " mergeable, indirect, log, used_log) -> (error, done, last_avail, used_idx,"
     " bad_buffers, too_big, log_bits, log_out_of_range)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_vring", "Split-virtqueue burst loops, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__vring(void)
{
    return PyModule_Create(&module);
}
