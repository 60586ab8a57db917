/* The receive entry points of _vring.c (rx_split, rx_packed): drivers/vhost_user/rxpath.py
 * in C, the same loop over simple batches, merged buffers and walked chains, the same
 * counters and dirty-log marks, for either ring layout.  Part of the single translation
 * unit _vring.c.
 */
#ifndef VRING_RX_H
#define VRING_RX_H

/* -- receive ---------------------------------------------------------------------------- */

typedef struct {
    PyObject **items;
    Py_ssize_t count;
    int vnet;
    uint32_t hl;
    int mergeable;
    uint64_t bad_buffers, too_big;
} Frames;

/* Header (10 or 12 bytes, num_buffers filled in) and payload of frame i; the payload
 * length in *plen.  -1 (exception set) for a frame that is not bytes-like or too short. */
static int frame_parts(Frames *fr, Py_ssize_t i, uint8_t hdr[12], const uint8_t **payload,
                       size_t *plen, uint32_t num_buffers)
{
    PyObject *o = fr->items[i];
    const uint8_t *data;
    size_t len;
    if (PyBytes_Check(o)) {
        data = (const uint8_t *)PyBytes_AS_STRING(o);
        len = (size_t)PyBytes_GET_SIZE(o);
    } else if (PyByteArray_Check(o)) {
        data = (const uint8_t *)PyByteArray_AS_STRING(o);
        len = (size_t)PyByteArray_GET_SIZE(o);
    } else {
        PyErr_SetString(PyExc_TypeError, "frames must be bytes or bytearray");
        return -1;
    }
    if (fr->vnet) {
        if (len < VNET_HDR_LEN) {
            PyErr_SetString(PyExc_ValueError, "vnet frame shorter than its header");
            return -1;
        }
        memcpy(hdr, data, 10);
        *payload = data + VNET_HDR_LEN;
        *plen = len - VNET_HDR_LEN;
    } else {
        memset(hdr, 0, 10);
        *payload = data;
        *plen = len;
    }
    uint16_t nb = htole16((uint16_t)num_buffers);
    memcpy(hdr + 10, &nb, 2);
    return 0;
}

static uint64_t frame_size(Frames *fr, Py_ssize_t i)
{
    PyObject *o = fr->items[i];
    size_t len = PyBytes_Check(o) ? (size_t)PyBytes_GET_SIZE(o)
               : PyByteArray_Check(o) ? (size_t)PyByteArray_GET_SIZE(o) : 0;
    if (fr->vnet)
        return len >= VNET_HDR_LEN ? len - VNET_HDR_LEN + fr->hl : fr->hl;
    return len + fr->hl;
}

/* _rx_rest: from frame i = buffer j on, merged or dropped; returns -1 on an exception. */
static int rx_rest(Ring *q, Frames *fr, Py_ssize_t first, Py_ssize_t rest, uint32_t cnt,
                   const uint64_t *caps, uint8_t **ptrs, uint32_t *used, uint32_t *jp,
                   Py_ssize_t *donep)
{
    uint32_t j = *jp;
    Py_ssize_t i = j, done = j;
    uint32_t hl = fr->hl;
    while (i < rest && j < cnt) {
        if (caps[j] < hl) {
            fr->bad_buffers++;
            used[j++] = 0;
            continue;
        }
        uint64_t size = frame_size(fr, first + i);
        uint32_t spans;
        if (size <= caps[j]) {
            spans = 1;
        } else {
            if (!fr->mergeable) {
                fr->too_big++;
                i++;
                done++;
                continue;
            }
            uint64_t left = size;
            spans = 0;
            for (uint32_t b = j; b < cnt && left; b++) {
                left -= caps[b] < left ? caps[b] : left;
                spans++;
            }
            if (left) {
                if (cnt == q->num) {
                    fr->too_big++;
                    i++;
                    done++;
                    continue;
                }
                break;
            }
        }
        uint8_t hdr[12];
        const uint8_t *payload;
        size_t plen;
        if (frame_parts(fr, first + i, hdr, &payload, &plen, spans) < 0)
            return -1;
        uint64_t pos = 0;
        for (uint32_t k = 0; k < spans; k++) {
            uint64_t cut = caps[j + k] < size - pos ? caps[j + k] : size - pos;
            copy_span(ptrs[j + k], pos, cut, hdr, hl, payload);
            used[j + k] = (uint32_t)cut;
            pos += cut;
        }
        j += spans;
        i++;
        done++;
    }
    *jp = j;
    *donep = done;
    return 0;
}

/* _rx_simple: returns frames disposed of, *took buffers used; -1 on an exception. */
static Py_ssize_t rx_simple(Ring *q, Frames *fr, Py_ssize_t first, uint32_t cnt,
                            const uint16_t *heads, const Desc *descs, uint8_t **ptrs,
                            uint64_t *caps, uint32_t *used, uint32_t *took)
{
    Py_ssize_t rest = fr->count - first;
    uint32_t hl = fr->hl;
    uint32_t j = 0;
    for (uint32_t k = 0; k < cnt; k++)
        caps[k] = descs[k].len;
    prefetch_all(ptrs, (Py_ssize_t)cnt < rest ? cnt : (uint32_t)rest, 1);
    while ((Py_ssize_t)j < rest && j < cnt) {
        uint64_t size = frame_size(fr, first + j);
        if (size > caps[j])
            break;
        uint8_t hdr[12];
        const uint8_t *payload;
        size_t plen;
        if (frame_parts(fr, first + j, hdr, &payload, &plen, 1) < 0)
            return -1;
        memcpy(ptrs[j], hdr, hl);
        memcpy(ptrs[j] + hl, payload, plen);
        used[j] = (uint32_t)size;
        j++;
    }
    Py_ssize_t done = j;
    if ((Py_ssize_t)j < rest && j < cnt) {
        if (rx_rest(q, fr, first, rest, cnt, caps, ptrs, used, &j, &done) < 0)
            return -1;
    }
    if (j) {
        for (uint32_t k = 0; k < j; k++)
            log_mark(q->log, descs[k].addr, used[k]);
        complete(q, heads, 0, j, used);
    }
    *took = j;
    return done;
}

typedef struct {
    size_t start, n; /* segments in the shared Segs */
    uint64_t total;
} Chain;

/* _rx_chains: returns frames disposed of, *took buffers used; -1 on an error. */
static Py_ssize_t rx_chains(Ring *q, Frames *fr, Py_ssize_t first, uint32_t cnt,
                            const uint16_t *heads, Chain *chains, Segs *s, uint32_t *took)
{
    Py_ssize_t rest = fr->count - first;
    uint32_t hl = fr->hl;
    uint32_t pos = 0, walked = 0;
    Py_ssize_t i = 0, done = 0;
    s->n = 0;
#define WALK(k)                                                                             \
    do {                                                                                    \
        chains[k].start = s->n;                                                             \
        if (walk_buf(q, heads, k, 1, s, &chains[k].total) < 0) {                            \
            *took = pos;                                                                    \
            return -1;                                                                      \
        }                                                                                   \
        chains[k].n = s->n - chains[k].start;                                               \
        walked++;                                                                           \
    } while (0)
    while (i < rest && pos < cnt) {
        if (pos == walked)
            WALK(pos);
        if (chains[pos].total < hl) {
            fr->bad_buffers++;
            complete(q, heads, pos, 1, NULL);
            pos++;
            continue;
        }
        uint64_t size = frame_size(fr, first + i);
        uint64_t got = 0;
        uint32_t k = pos;
        while (got < size && k < cnt) {
            if (k == walked)
                WALK(k);
            got += chains[k].total;
            k++;
            if (!fr->mergeable)
                break;
        }
        if (got < size) {
            if (!fr->mergeable || (cnt == q->num && k == cnt)) {
                fr->too_big++;
                i++;
                done++;
                continue;
            }
            break;
        }
        uint8_t hdr[12];
        const uint8_t *payload;
        size_t plen;
        if (frame_parts(fr, first + i, hdr, &payload, &plen, k - pos) < 0) {
            q->failed = -1;
            *took = pos;
            return -1;
        }
        uint64_t off = 0;
        for (uint32_t idx = pos; idx < k; idx++) {
            Chain *c = &chains[idx];
            uint64_t cut = c->total < size - off ? c->total : size - off;
            uint64_t at = off, end = off + cut;
            for (size_t g = 0; g < c->n && at < end; g++) {
                Seg *sg = &s->seg[c->start + g];
                uint64_t piece = sg->len < end - at ? sg->len : end - at;
                copy_span(sg->ptr, at, piece, hdr, hl, payload);
                at += piece;
            }
            for (size_t g = 0; g < c->n; g++)
                log_mark(q->log, s->seg[c->start + g].gpa, s->seg[c->start + g].len);
            uint32_t len = (uint32_t)cut;
            complete(q, heads, idx, 1, &len);
            off += cut;
        }
        pos = k;
        i++;
        done++;
    }
#undef WALK
    *took = pos;
    return done;
}

/* Scratch arrays of one receive call, num entries each. */
typedef struct {
    uint16_t *heads;
    Desc *descs;
    uint8_t **ptrs;
    uint64_t *caps;
    uint32_t *used;
    Chain *chains;
    PBuf *bufs;
    Segs s;
} RxScratch;

static int scratch_alloc(RxScratch *x, uint32_t num)
{
    x->heads = PyMem_Malloc(sizeof(*x->heads) * num);
    x->descs = PyMem_Malloc(sizeof(*x->descs) * num);
    x->ptrs = PyMem_Malloc(sizeof(*x->ptrs) * num);
    x->caps = PyMem_Malloc(sizeof(*x->caps) * num);
    x->used = PyMem_Malloc(sizeof(*x->used) * num);
    x->chains = PyMem_Malloc(sizeof(*x->chains) * num);
    x->bufs = PyMem_Malloc(sizeof(*x->bufs) * num);
    if (!x->heads || !x->descs || !x->ptrs || !x->caps || !x->used || !x->chains || !x->bufs) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void scratch_free(RxScratch *x)
{
    PyMem_Free(x->heads);
    PyMem_Free(x->descs);
    PyMem_Free(x->ptrs);
    PyMem_Free(x->caps);
    PyMem_Free(x->used);
    PyMem_Free(x->chains);
    PyMem_Free(x->bufs);
    PyMem_Free(x->s.seg);
}

/* rxpath.receive's loop: frames disposed of; q->failed says how it ended. */
static Py_ssize_t rx_run(Ring *q, Frames *fr, RxScratch *x)
{
    Py_ssize_t done = 0;
    uint64_t spare = 64;
    while (done < fr->count) {
        int avail = ring_avail(q);
        if (avail <= 0)
            break;
        uint64_t rest = (uint64_t)(fr->count - done);
        uint64_t want = fr->mergeable ? rest + spare : rest;
        uint32_t cnt = want < (uint64_t)avail ? (uint32_t)want : (uint32_t)avail;
        int simple = ring_batch(q, cnt, x->heads, x->descs, x->ptrs, DESC_F_WRITE);
        if (simple < 0)
            break;
        uint32_t took = 0;
        Py_ssize_t got;
        if (simple)
            got = rx_simple(q, fr, done, cnt, x->heads, x->descs, x->ptrs, x->caps, x->used,
                            &took);
        else
            got = rx_chains(q, fr, done, cnt, x->heads, x->chains, &x->s, &took);
        if (got < 0) {
            if (PyErr_Occurred())
                q->failed = -1;
            break;
        }
        done += got;
        q->moved |= took > 0;
        if (!got && !took) {
            if (!fr->mergeable || want >= (uint64_t)avail)
                break;
            spare = (uint64_t)avail;
        }
    }
    return done;
}

/* The call decision after a receive call (-1: none taken, as when nothing was used or a
 * driver error ended it). */
static int rx_call(Ring *q, const Notify *nt)
{
    if (q->failed || !q->moved)
        return -1;
    return needs_call(q, nt);
}

static PyObject *vring_rx_split(PyObject *self, PyObject *args)
{
    PyObject *desc_o, *avail_o, *used_o, *mem_o, *frames_o, *log_o, *used_log_o;
    unsigned int num, last_avail, used_idx, hl, signalled;
    int vnet, mergeable, indirect, event_idx, valid;
    if (!PyArg_ParseTuple(args, "OOOOIIIOpIppOOpIp:rx_split", &desc_o, &avail_o, &used_o,
                          &mem_o, &num, &last_avail, &used_idx, &frames_o, &vnet, &hl,
                          &mergeable, &indirect, &log_o, &used_log_o, &event_idx, &signalled,
                          &valid))
        return NULL;
    if (check_burst(num, hl) < 0)
        return NULL;
    Views v = {0};
    Log log = {0};
    Mem mem; /* only the regions below mem.n are read: not zeroing ~6.6 KB per burst */
    mem.n = 0;
    Ring q = {0};
    PyObject *result = NULL, *fast = NULL;
    RxScratch x = {0};
    Notify nt = {event_idx, signalled, valid};
    if (get_view(desc_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        get_view(avail_o, &v.avail, &v.have_avail, 4 + 2 * (Py_ssize_t)num + 2 * !!event_idx) < 0 ||
        get_view(used_o, &v.used, &v.have_used, 4 + 8 * (Py_ssize_t)num) < 0 ||
        open_log(&log, &v, log_o, used_log_o) < 0 || mem_open(&mem, mem_o) < 0)
        goto out;
    fast = PySequence_Fast(frames_o, "frames must be a sequence");
    if (fast == NULL || scratch_alloc(&x, num) < 0)
        goto out;
    q.desc = v.desc.buf;
    q.avail = v.avail.buf;
    q.used = v.used.buf;
    q.num = num;
    q.last_avail = (uint16_t)last_avail;
    q.used_idx = (uint16_t)used_idx;
    q.indirect = indirect;
    q.mem = &mem;
    q.log = &log;
    Frames fr = {PySequence_Fast_ITEMS(fast), PySequence_Fast_GET_SIZE(fast), vnet, hl,
                 mergeable, 0, 0};
    Py_ssize_t done = rx_run(&q, &fr, &x);
    if (q.failed == -1)
        goto out;
    int call = rx_call(&q, &nt);
    PyObject *err = error_or_none(&q);
    if (err == NULL)
        goto out;
    result = Py_BuildValue("(NnIIKKKKi)", err, done, (unsigned int)q.last_avail,
                           (unsigned int)q.used_idx, (unsigned long long)fr.bad_buffers,
                           (unsigned long long)fr.too_big, (unsigned long long)log.bits,
                           (unsigned long long)log.out_of_range, call);
out:
    Py_XDECREF(fast);
    scratch_free(&x);
    mem_close(&mem);
    views_close(&v, &log);
    return result;
}

static PyObject *vring_rx_packed(PyObject *self, PyObject *args)
{
    PyObject *ring_o, *drv_o, *mem_o, *frames_o, *log_o;
    unsigned int num, aslot, awrap, uslot, uwrap, hl, signalled;
    unsigned long long desc_gpa;
    int vnet, mergeable, indirect, event_idx, valid;
    if (!PyArg_ParseTuple(args, "OOOIIIIIOpIppOKpIp:rx_packed", &ring_o, &drv_o, &mem_o, &num,
                          &aslot, &awrap, &uslot, &uwrap, &frames_o, &vnet, &hl, &mergeable,
                          &indirect, &log_o, &desc_gpa, &event_idx, &signalled, &valid))
        return NULL;
    if (check_packed(num, aslot, awrap, uslot, uwrap) < 0 || check_hl(hl) < 0)
        return NULL;
    Views v = {0};
    Log log = {0};
    Mem mem;
    mem.n = 0;
    Ring q = {0};
    PyObject *result = NULL, *fast = NULL;
    RxScratch x = {0};
    Notify nt = {event_idx, signalled, valid};
    if (get_view(ring_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        get_view(drv_o, &v.avail, &v.have_avail, 4) < 0 ||
        open_log(&log, &v, log_o, Py_None) < 0 || mem_open(&mem, mem_o) < 0)
        goto out;
    fast = PySequence_Fast(frames_o, "frames must be a sequence");
    if (fast == NULL || scratch_alloc(&x, num) < 0)
        goto out;
    q.packed = 1;
    q.desc = v.desc.buf;
    q.avail = v.avail.buf;
    q.num = num;
    q.aslot = aslot;
    q.awrap = awrap;
    q.uslot = uslot;
    q.uwrap = uwrap;
    q.desc_gpa = desc_gpa;
    q.bufs = x.bufs;
    q.indirect = indirect;
    q.mem = &mem;
    q.log = &log;
    Frames fr = {PySequence_Fast_ITEMS(fast), PySequence_Fast_GET_SIZE(fast), vnet, hl,
                 mergeable, 0, 0};
    Py_ssize_t done = rx_run(&q, &fr, &x);
    if (q.failed == -1)
        goto out;
    int call = rx_call(&q, &nt);
    PyObject *err = error_or_none(&q);
    if (err == NULL)
        goto out;
    result = Py_BuildValue("(NnIIIIKKKKi)", err, done, q.aslot, q.awrap, q.uslot, q.uwrap,
                           (unsigned long long)fr.bad_buffers, (unsigned long long)fr.too_big,
                           (unsigned long long)log.bits, (unsigned long long)log.out_of_range,
                           call);
out:
    Py_XDECREF(fast);
    scratch_free(&x);
    mem_close(&mem);
    views_close(&v, &log);
    return result;
}

#endif
