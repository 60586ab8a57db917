/* The receive entry point of _vring.c (rx_split): drivers/vhost_user/rxpath.py in C, the
 * same loop over simple batches, merged buffers and walked chains, the same counters and
 * dirty-log marks.  Part of the single translation unit _vring.c.
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
        q->last_avail = (uint16_t)(q->last_avail + j);
        push_used(q, heads, used, j);
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
        if (walk(q, heads[k], 1, s, &chains[k].total) < 0) {                                \
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
            push_one(q, heads[pos], 0);
            q->last_avail++;
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
            push_one(q, heads[idx], (uint32_t)cut);
            off += cut;
        }
        q->last_avail = (uint16_t)(q->last_avail + (k - pos));
        pos = k;
        i++;
        done++;
    }
#undef WALK
    *took = pos;
    return done;
}

static PyObject *vring_rx_split(PyObject *self, PyObject *args)
{
    PyObject *desc_o, *avail_o, *used_o, *mem_o, *frames_o, *log_o, *used_log_o;
    unsigned int num, last_avail, used_idx, hl;
    int vnet, mergeable, indirect;
    if (!PyArg_ParseTuple(args, "OOOOIIIOpIppOO:rx_split", &desc_o, &avail_o, &used_o, &mem_o,
                          &num, &last_avail, &used_idx, &frames_o, &vnet, &hl, &mergeable,
                          &indirect, &log_o, &used_log_o))
        return NULL;
    if (check_burst(num, hl) < 0)
        return NULL;
    Views v = {0};
    Log log = {0};
    Mem mem; /* only the regions below mem.n are read: not zeroing ~6.6 KB per burst */
    mem.n = 0;
    Ring q = {0};
    PyObject *result = NULL, *fast = NULL;
    uint16_t *heads = NULL;
    Desc *descs = NULL;
    uint8_t **ptrs = NULL;
    uint64_t *caps = NULL;
    uint32_t *used = NULL;
    Chain *chains = NULL;
    Segs s = {NULL, 0, 0};
    Py_ssize_t done = 0;
    if (get_view(desc_o, &v.desc, &v.have_desc, 16 * (Py_ssize_t)num) < 0 ||
        get_view(avail_o, &v.avail, &v.have_avail, 4 + 2 * (Py_ssize_t)num) < 0 ||
        get_view(used_o, &v.used, &v.have_used, 4 + 8 * (Py_ssize_t)num) < 0 ||
        open_log(&log, &v, log_o, used_log_o) < 0 || mem_open(&mem, mem_o) < 0)
        goto out;
    fast = PySequence_Fast(frames_o, "frames must be a sequence");
    if (fast == NULL)
        goto out;
    heads = PyMem_Malloc(sizeof(*heads) * num);
    descs = PyMem_Malloc(sizeof(*descs) * num);
    ptrs = PyMem_Malloc(sizeof(*ptrs) * num);
    caps = PyMem_Malloc(sizeof(*caps) * num);
    used = PyMem_Malloc(sizeof(*used) * num);
    chains = PyMem_Malloc(sizeof(*chains) * num);
    if (!heads || !descs || !ptrs || !caps || !used || !chains) {
        PyErr_NoMemory();
        goto out;
    }
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
    uint64_t spare = 64;
    while (done < fr.count) {
        int avail = avail_count(&q);
        if (avail <= 0)
            break;
        uint64_t rest = (uint64_t)(fr.count - done);
        uint64_t want = mergeable ? rest + spare : rest;
        uint32_t cnt = want < (uint64_t)avail ? (uint32_t)want : (uint32_t)avail;
        int simple = batch(&q, cnt, heads, descs, ptrs, DESC_F_WRITE);
        if (simple < 0)
            break;
        uint32_t took = 0;
        Py_ssize_t got;
        if (simple)
            got = rx_simple(&q, &fr, done, cnt, heads, descs, ptrs, caps, used, &took);
        else
            got = rx_chains(&q, &fr, done, cnt, heads, chains, &s, &took);
        if (got < 0) {
            if (PyErr_Occurred())
                q.failed = -1;
            break;
        }
        done += got;
        if (!got && !took) {
            if (!mergeable || want >= (uint64_t)avail)
                break;
            spare = (uint64_t)avail;
        }
    }
    if (q.failed == -1)
        goto out;
    PyObject *err = error_or_none(&q);
    if (err == NULL)
        goto out;
    result = Py_BuildValue("(NnIIKKKK)", err, done, (unsigned int)q.last_avail,
                           (unsigned int)q.used_idx, (unsigned long long)fr.bad_buffers,
                           (unsigned long long)fr.too_big, (unsigned long long)log.bits,
                           (unsigned long long)log.out_of_range);
out:
    Py_XDECREF(fast);
    PyMem_Free(heads);
    PyMem_Free(descs);
    PyMem_Free(ptrs);
    PyMem_Free(caps);
    PyMem_Free(used);
    PyMem_Free(chains);
    PyMem_Free(s.seg);
    mem_close(&mem);
    views_close(&v, &log);
    return result;
}

#endif
