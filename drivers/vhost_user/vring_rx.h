/* The receive entry points of _vring.c (rx_split, rx_packed): drivers/vhost_user/rxpath.py
 * in C, the same loop over simple batches, merged buffers and walked chains, the same
 * counters and dirty-log marks, for either ring layout.  Part of the single translation
 * unit _vring.c.
 *
 * Every frame is checked (bytes-like, contiguous, a vnet header long) before the ring is
 * touched, so a bad one raises with nothing written.  What can still fail once buffers
 * were used (a driver error, or MemoryError while walking a chain) ends the call with the
 * indices reached returned, the error in the result, never lost with a NULL return.  A
 * frame the available buffers cannot hold together is dropped (too_big) when they hold
 * every entry of the ring - the driver cannot post more - and waits otherwise.
 */
#ifndef VRING_RX_H
#define VRING_RX_H

/* -- receive ---------------------------------------------------------------------------- */

/* One frame's bytes, found before the ring is touched. */
typedef struct {
    const uint8_t *data;
    size_t len;
} FrameRef;

typedef struct {
    FrameRef *refs;
    Py_ssize_t count;
    int vnet;
    uint32_t hl;
    int mergeable;
    uint64_t bad_buffers, too_big;
} Frames;

/* Frames found in the sequence and checked, before anything is written: any C-contiguous
 * bytes-like object (bytes read directly, others held through the buffer protocol in
 * views[], released by frames_close), each at least a header long when vnet.
 * -1 with TypeError / ValueError set (the ring untouched). */
static int frames_open(Frames *fr, PyObject *fast, Py_buffer **views, Py_ssize_t *nviews)
{
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    fr->refs = PyMem_Malloc(sizeof(FrameRef) * (size_t)(count ? count : 1));
    if (fr->refs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *o = items[i];
        FrameRef *r = &fr->refs[i];
        if (PyBytes_Check(o)) {
            r->data = (const uint8_t *)PyBytes_AS_STRING(o);
            r->len = (size_t)PyBytes_GET_SIZE(o);
        } else { /* held through the buffer protocol: a bytearray cannot be resized */
            if (*views == NULL) {
                *views = PyMem_Malloc(sizeof(Py_buffer) * (size_t)count);
                if (*views == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
            }
            Py_buffer *view = &(*views)[*nviews];
            if (!PyObject_CheckBuffer(o) ||
                PyObject_GetBuffer(o, view, PyBUF_C_CONTIGUOUS) < 0) {
                PyErr_Clear();
                PyErr_SetString(PyExc_TypeError, "frames must be contiguous bytes-like objects");
                return -1;
            }
            (*nviews)++;
            r->data = view->buf;
            r->len = (size_t)view->len;
        }
        if (fr->vnet && r->len < VNET_HDR_LEN) {
            PyErr_SetString(PyExc_ValueError, "vnet frame shorter than its header");
            return -1;
        }
    }
    return 0;
}

static void frames_close(Frames *fr, Py_buffer *views, Py_ssize_t nviews)
{
    for (Py_ssize_t i = 0; i < nviews; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(fr->refs);
}

/* Header (10 or 12 bytes, num_buffers filled in) and payload of frame i (checked by
 * frames_open); the payload length in *plen. */
static void frame_parts(Frames *fr, Py_ssize_t i, uint8_t hdr[12], const uint8_t **payload,
                        size_t *plen, uint32_t num_buffers)
{
    const uint8_t *data = fr->refs[i].data;
    size_t len = fr->refs[i].len;
    if (fr->vnet) {
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
}

static uint64_t frame_size(Frames *fr, Py_ssize_t i)
{
    size_t len = fr->refs[i].len;
    return fr->vnet ? len - VNET_HDR_LEN + fr->hl : len + fr->hl;
}

/* _rx_rest: from frame i = buffer j on, merged or dropped. */
static void rx_rest(Ring *q, Frames *fr, Py_ssize_t first, Py_ssize_t rest, uint32_t cnt,
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
        frame_parts(fr, first + i, hdr, &payload, &plen, spans);
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
}

/* _rx_simple: returns frames disposed of, *took buffers used. */
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
        frame_parts(fr, first + j, hdr, &payload, &plen, 1);
        memcpy(ptrs[j], hdr, hl);
        memcpy(ptrs[j] + hl, payload, plen);
        used[j] = (uint32_t)size;
        j++;
    }
    Py_ssize_t done = j;
    if ((Py_ssize_t)j < rest && j < cnt)
        rx_rest(q, fr, first, rest, cnt, caps, ptrs, used, &j, &done);
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

/* _rx_chains: returns frames disposed of, *took buffers used; -1 when a walk failed (a
 * driver error, or MemoryError: q->failed says which), the buffers before it completed. */
static Py_ssize_t rx_chains(Ring *q, Frames *fr, Py_ssize_t first, uint32_t cnt,
                            const uint16_t *heads, Chain *chains, Segs *s, uint32_t *took)
{
    Py_ssize_t rest = fr->count - first;
    uint32_t hl = fr->hl;
    uint32_t pos = 0, walked = 0;
    /* Ring entries the walked chains hold: all num of them means the driver cannot post
     * another buffer, so a frame they cannot hold together never fits (dropped). */
    uint64_t entries = 0;
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
        entries += q->walked;                                                               \
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
            if (!fr->mergeable || (k == cnt && entries >= q->num)) {
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
        frame_parts(fr, first + i, hdr, &payload, &plen, k - pos);
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

/* What ended a receive call, for its result: None, a driver error's text, or the exception
 * raised after the ring was touched (returned with the state reached, so that the caller
 * records that state before raising it). NULL only when that fails. */
static PyObject *rx_error(Ring *q)
{
    if (q->failed != -1)
        return error_or_none(q);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL)
        PyErr_SetString(PyExc_SystemError, "receive failed without an exception");
    return value;
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
    Frames fr = {0};
    Py_buffer *views = NULL;
    Py_ssize_t nviews = 0;
    Notify nt = {event_idx, signalled, valid};
    if (get_view(desc_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        get_view(avail_o, &v.avail, &v.have_avail, 4 + 2 * (Py_ssize_t)num + 2 * !!event_idx) < 0 ||
        get_view(used_o, &v.used, &v.have_used, 4 + 8 * (Py_ssize_t)num) < 0 ||
        open_log(&log, &v, log_o, used_log_o) < 0 || mem_open(&mem, mem_o) < 0)
        goto out;
    fast = PySequence_Fast(frames_o, "frames must be a sequence");
    fr.count = fast ? PySequence_Fast_GET_SIZE(fast) : 0;
    fr.vnet = vnet;
    fr.hl = hl;
    fr.mergeable = mergeable;
    if (fast == NULL || scratch_alloc(&x, num) < 0 ||
        frames_open(&fr, fast, &views, &nviews) < 0)
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
    Py_ssize_t done = rx_run(&q, &fr, &x);
    int call = rx_call(&q, &nt);
    PyObject *err = rx_error(&q);
    if (err == NULL)
        goto out;
    result = Py_BuildValue("(NnIIKKKKi)", err, done, (unsigned int)q.last_avail,
                           (unsigned int)q.used_idx, (unsigned long long)fr.bad_buffers,
                           (unsigned long long)fr.too_big, (unsigned long long)log.bits,
                           (unsigned long long)log.out_of_range, call);
out:
    frames_close(&fr, views, nviews);
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
    Frames fr = {0};
    Py_buffer *views = NULL;
    Py_ssize_t nviews = 0;
    Notify nt = {event_idx, signalled, valid};
    if (get_view(ring_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        get_view(drv_o, &v.avail, &v.have_avail, 4) < 0 ||
        open_log(&log, &v, log_o, Py_None) < 0 || mem_open(&mem, mem_o) < 0)
        goto out;
    fast = PySequence_Fast(frames_o, "frames must be a sequence");
    fr.count = fast ? PySequence_Fast_GET_SIZE(fast) : 0;
    fr.vnet = vnet;
    fr.hl = hl;
    fr.mergeable = mergeable;
    if (fast == NULL || scratch_alloc(&x, num) < 0 ||
        frames_open(&fr, fast, &views, &nviews) < 0)
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
    Py_ssize_t done = rx_run(&q, &fr, &x);
    int call = rx_call(&q, &nt);
    PyObject *err = rx_error(&q);
    if (err == NULL)
        goto out;
    result = Py_BuildValue("(NnIIIIKKKKi)", err, done, q.aslot, q.awrap, q.uslot, q.uwrap,
                           (unsigned long long)fr.bad_buffers, (unsigned long long)fr.too_big,
                           (unsigned long long)log.bits, (unsigned long long)log.out_of_range,
                           call);
out:
    frames_close(&fr, views, nviews);
    Py_XDECREF(fast);
    scratch_free(&x);
    mem_close(&mem);
    views_close(&v, &log);
    return result;
}

#endif
