/* Split-ring access for the loops of _vring.c: descriptors copied before use, avail and
 * used ring indices, used elements (logged before the index), chain walking with every
 * check of SplitQueue.chain (drivers/vhost_user/virtqueue.py), and the argument plumbing
 * shared by the entry points.  Part of the single translation unit _vring.c.
 */
#ifndef VRING_SPLIT_H
#define VRING_SPLIT_H

/* -- ring access ------------------------------------------------------------------------ */

static inline void read_desc(const uint8_t *p, Desc *d)
{
    uint64_t a;
    uint32_t l;
    uint16_t f, x;
    memcpy(&a, p, 8);
    memcpy(&l, p + 8, 4);
    memcpy(&f, p + 12, 2);
    memcpy(&x, p + 14, 2);
    BARRIER();
    d->addr = le64toh(a);
    d->len = le32toh(l);
    d->flags = le16toh(f);
    d->next = le16toh(x);
}

static inline uint16_t avail_idx(Ring *q)
{
    uint16_t v = __atomic_load_n((uint16_t *)(q->avail + 2), __ATOMIC_ACQUIRE);
    return le16toh(v);
}

static inline uint16_t avail_head(Ring *q, uint32_t k)
{
    uint16_t v;
    memcpy(&v, q->avail + 4 + 2 * (((uint32_t)q->last_avail + k) & (q->num - 1)), 2);
    BARRIER();
    return le16toh(v);
}

/* Buffers made available and not taken, or -1 (error set) when the index is too far. */
static int avail_count(Ring *q)
{
    uint16_t idx = avail_idx(q);
    uint32_t n = (uint16_t)(idx - q->last_avail);
    if (n > q->num) {
        snprintf(q->err, ERRLEN, "avail index %u is %u entries past %u in a ring of %u",
                 idx, n, q->last_avail, q->num);
        q->failed = 1;
        return -1;
    }
    return (int)n;
}

static void put_used_entry(Ring *q, uint32_t slot, uint32_t id, uint32_t len)
{
    uint8_t *p = q->used + 4 + 8 * (size_t)slot;
    uint32_t a = htole32(id), b = htole32(len);
    memcpy(p, &a, 4);
    memcpy(p + 4, &b, 4);
}

static void store_used_idx(Ring *q)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n((uint16_t *)(q->used + 2), htole16(q->used_idx), __ATOMIC_RELEASE);
    log_used(q, 2, 2);
}

/* SplitQueue.push_used: ids with lens (NULL: 0), elements logged before the index. */
static void push_used(Ring *q, const uint16_t *ids, const uint32_t *lens, uint32_t n)
{
    if (!n)
        return;
    uint32_t start = q->used_idx & (q->num - 1);
    uint32_t first = n < q->num - start ? n : q->num - start;
    for (uint32_t k = 0; k < n; k++)
        put_used_entry(q, (start + k) & (q->num - 1), ids[k], lens ? lens[k] : 0);
    log_used(q, 4 + 8 * (uint64_t)start, 8 * (uint64_t)first);
    if (first < n)
        log_used(q, 4, 8 * (uint64_t)(n - first));
    q->used_idx = (uint16_t)(q->used_idx + n);
    store_used_idx(q);
}

static void push_one(Ring *q, uint16_t id, uint32_t len)
{
    uint32_t slot = q->used_idx & (q->num - 1);
    put_used_entry(q, slot, id, len);
    log_used(q, 4 + 8 * (uint64_t)slot, 8);
    q->used_idx = (uint16_t)(q->used_idx + 1);
    store_used_idx(q);
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

static int segs_add(Ring *q, Segs *s, uint8_t *ptr, uint64_t gpa, uint32_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        Seg *grown = PyMem_Realloc(s->seg, cap * sizeof(Seg));
        if (grown == NULL) {
            PyErr_NoMemory();
            q->failed = -1;
            return -1;
        }
        s->seg = grown;
        s->cap = cap;
    }
    s->seg[s->n].ptr = ptr;
    s->seg[s->n].gpa = gpa;
    s->seg[s->n].len = len;
    s->n++;
    return 0;
}

/* SplitQueue.chain: append the segments of the chain at head to s; total in *total. */
static int walk(Ring *q, uint32_t head, int writable, Segs *s, uint64_t *total)
{
    if (head >= q->num) {
        snprintf(q->err, ERRLEN, "avail ring entry %u is past the table of %u", head, q->num);
        q->failed = 1;
        return -1;
    }
    const uint8_t *table = q->desc;
    uint64_t size = q->num, budget = q->num, index = head;
    int nested = 0;
    *total = 0;
    q->walked = 0;
    for (;;) {
        if (budget == 0) {
            snprintf(q->err, ERRLEN, "descriptor chain from head %u is longer than its table",
                     head);
            goto driver_error;
        }
        budget--;
        q->walked += !nested;
        Desc d;
        read_desc(table + 16 * index, &d);
        if (d.flags & ~DESC_F_KNOWN) {
            snprintf(q->err, ERRLEN, "descriptor %llu has unknown flags 0x%x",
                     (unsigned long long)index, d.flags);
            goto driver_error;
        }
        if (d.flags & DESC_F_INDIRECT) {
            if (!q->indirect) {
                snprintf(q->err, ERRLEN,
                         "indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC is off");
                goto driver_error;
            }
            if (nested) {
                snprintf(q->err, ERRLEN, "indirect descriptor inside an indirect table");
                goto driver_error;
            }
            if (d.flags & DESC_F_NEXT) {
                snprintf(q->err, ERRLEN, "indirect descriptor with NEXT set");
                goto driver_error;
            }
            if (d.len == 0 || d.len % 16) {
                snprintf(q->err, ERRLEN, "indirect table of %u bytes", d.len);
                goto driver_error;
            }
            const uint8_t *found = gpa_ptr(q->mem, d.addr, d.len);
            if (found == NULL) {
                snprintf(q->err, ERRLEN, "indirect table at 0x%llx is outside the shared memory",
                         (unsigned long long)d.addr);
                goto driver_error;
            }
            table = found;
            size = budget = d.len / 16;
            index = 0;
            nested = 1;
            continue;
        }
        if (!!(d.flags & DESC_F_WRITE) != writable) {
            snprintf(q->err, ERRLEN, "%s descriptor in a %s (head %u)",
                     writable ? "read-only" : "writable",
                     writable ? "receive buffer" : "transmit chain", head);
            goto driver_error;
        }
        uint8_t *ptr = gpa_ptr(q->mem, d.addr, d.len);
        if (ptr == NULL) {
            snprintf(q->err, ERRLEN, "descriptor at 0x%llx (+%u) is outside the shared memory",
                     (unsigned long long)d.addr, d.len);
            goto driver_error;
        }
        if (d.len) {
            if (segs_add(q, s, ptr, d.addr, d.len) < 0)
                return -1;
            *total += d.len;
        }
        if (!(d.flags & DESC_F_NEXT))
            return 0;
        index = d.next;
        if (index >= size) {
            snprintf(q->err, ERRLEN, "descriptor next index %llu is past its table of %llu",
                     (unsigned long long)index, (unsigned long long)size);
            goto driver_error;
        }
    }
driver_error:
    q->failed = 1;
    return -1;
}

/* Copy bytes [off, off + n) of hdr || payload to dst. */
static void copy_span(uint8_t *dst, size_t off, size_t n, const uint8_t *hdr, size_t hl,
                      const uint8_t *payload)
{
    if (off < hl) {
        size_t cut = hl - off < n ? hl - off : n;
        memcpy(dst, hdr + off, cut);
        dst += cut;
        n -= cut;
        off = hl;
    }
    if (n)
        memcpy(dst, payload + (off - hl), n);
}

/* -- argument plumbing ------------------------------------------------------------------ */

typedef struct {
    Py_buffer desc, avail, used;
    int have_desc, have_avail, have_used, have_log;
} Views;

static void views_close(Views *v, Log *log)
{
    if (v->have_desc)
        PyBuffer_Release(&v->desc);
    if (v->have_avail)
        PyBuffer_Release(&v->avail);
    if (v->have_used)
        PyBuffer_Release(&v->used);
    if (v->have_log)
        PyBuffer_Release(&log->view);
}

static int get_view(PyObject *obj, Py_buffer *view, int *have, Py_ssize_t need)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0)
        return -1;
    *have = 1;
    if (view->len < need || !PyBuffer_IsContiguous(view, 'C')) {
        PyErr_SetString(PyExc_ValueError, "ring view smaller than the ring");
        return -1;
    }
    return 0;
}

static int open_log(Log *log, Views *v, PyObject *log_obj, PyObject *used_obj)
{
    memset(log, 0, sizeof(*log));
    if (log_obj == Py_None)
        return 0;
    if (PyObject_GetBuffer(log_obj, &log->view, PyBUF_WRITABLE) < 0)
        return -1;
    v->have_log = 1;
    if (used_obj != Py_None) {
        log->used_gpa = PyLong_AsUnsignedLongLong(used_obj);
        if (PyErr_Occurred())
            return -1;
        log->log_used = 1;
    }
    return 0;
}

static int check_num(uint32_t num)
{
    if (num == 0 || num > MAX_QUEUE || (num & (num - 1))) {
        PyErr_SetString(PyExc_ValueError, "queue size is not a power of two up to 32768");
        return -1;
    }
    return 0;
}

/* The virtio-net header length: 10 bytes, or 12 with VIRTIO_NET_F_MRG_RXBUF /
 * VIRTIO_F_VERSION_1. */
static int check_hl(uint32_t hl)
{
    if (hl != 10 && hl != 12) {
        PyErr_SetString(PyExc_ValueError, "header length is 10 or 12");
        return -1;
    }
    return 0;
}

/* A split burst's ring size and header length, checked once for both directions. */
static int check_burst(uint32_t num, uint32_t hl)
{
    return check_num(num) < 0 ? -1 : check_hl(hl);
}

/* A packed ring's size (any up to 32768) and its slots and wrap counters. */
static int check_packed(uint32_t num, uint32_t aslot, uint32_t awrap, uint32_t uslot,
                        uint32_t uwrap)
{
    if (num == 0 || num > MAX_QUEUE || aslot >= num || uslot >= num || awrap > 1 || uwrap > 1) {
        PyErr_SetString(PyExc_ValueError, "packed ring state out of range");
        return -1;
    }
    return 0;
}

static PyObject *error_or_none(Ring *q)
{
    if (q->failed == 1)
        return PyUnicode_FromString(q->err);
    Py_RETURN_NONE;
}

#endif
