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

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define DESC_F_KNOWN 7
#define MAX_REGIONS 64
#define MAX_QUEUE 32768
#define ETH_HLEN 14
#define NET_BUFSIZE 69632
#define VNET_HDR_LEN 12
#define ERRLEN 160

#define BARRIER() __asm__ __volatile__("" ::: "memory")

typedef struct {
    uint64_t gpa, size;
    uint8_t *base; /* the region's first byte */
    Py_buffer view;
} Region;

typedef struct {
    Region r[MAX_REGIONS];
    int n;
    int last;
} Mem;

typedef struct {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
} Desc;

typedef struct {
    uint8_t *ptr;
    uint64_t gpa;
    uint32_t len;
} Seg;

typedef struct {
    Seg *seg;
    size_t n, cap;
} Segs;

typedef struct {
    Py_buffer view; /* NULL buf: no log */
    uint64_t used_gpa;
    int log_used;
    uint64_t bits, out_of_range;
} Log;

typedef struct {
    uint8_t *desc, *avail, *used;
    uint32_t num;
    uint16_t last_avail, used_idx;
    int indirect;
    Mem *mem;
    Log *log;
    char err[ERRLEN];
    int failed; /* 1: driver error in err; -1: Python exception set */
} Ring;

/* -- guest memory ----------------------------------------------------------------------- */

static void mem_close(Mem *m)
{
    for (int i = 0; i < m->n; i++)
        PyBuffer_Release(&m->r[i].view);
    m->n = 0;
}

/* mem: sequence of (gpa, size, buffer, offset of the region's first byte in the buffer). */
static int mem_open(Mem *m, PyObject *seq)
{
    m->n = 0;
    m->last = 0;
    PyObject *fast = PySequence_Fast(seq, "memory table must be a sequence");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_REGIONS) {
        PyErr_SetString(PyExc_ValueError, "too many regions");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        unsigned long long gpa, size;
        Py_ssize_t off;
        PyObject *obj;
        if (!PyArg_ParseTuple(item, "KKOn", &gpa, &size, &obj, &off))
            goto fail;
        Region *r = &m->r[m->n];
        if (PyObject_GetBuffer(obj, &r->view, PyBUF_WRITABLE) < 0)
            goto fail;
        m->n++;
        if (off < 0 || (uint64_t)off > (uint64_t)r->view.len ||
            size > (uint64_t)r->view.len - (uint64_t)off || size == 0 ||
            gpa + (size - 1) < gpa) {
            PyErr_SetString(PyExc_ValueError, "region does not fit its mapping");
            goto fail;
        }
        r->gpa = gpa;
        r->size = size;
        r->base = (uint8_t *)r->view.buf + off;
    }
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    mem_close(m);
    return -1;
}

/* The bytes of guest-physical [addr, addr + len) if they lie inside one region, else NULL. */
static uint8_t *gpa_ptr(Mem *m, uint64_t addr, uint64_t len)
{
    int n = m->n;
    for (int k = 0; k < n; k++) {
        int i = (m->last + k) % n;
        Region *r = &m->r[i];
        if (addr >= r->gpa && addr - r->gpa < r->size && len <= r->size - (addr - r->gpa)) {
            m->last = i;
            return r->base + (addr - r->gpa);
        }
    }
    return NULL;
}

/* -- dirty log -------------------------------------------------------------------------- */

static void log_mark(Log *log, uint64_t gpa, uint64_t len)
{
    if (log->view.buf == NULL || len == 0)
        return;
    unsigned __int128 first = gpa >> 12;
    unsigned __int128 last = ((unsigned __int128)gpa + len - 1) >> 12;
    uint64_t pages = (uint64_t)log->view.len * 8;
    uint8_t *bytes = log->view.buf;
    for (unsigned __int128 p = first; p <= last; p++) {
        if (p >= pages) {
            log->out_of_range += (uint64_t)(last - p + 1);
            return;
        }
        __atomic_fetch_or(&bytes[(size_t)(p >> 3)], (uint8_t)(1u << (unsigned)(p & 7)),
                          __ATOMIC_SEQ_CST);
        log->bits++;
    }
}

static void log_used(Ring *q, uint64_t offset, uint64_t len)
{
    if (q->log->log_used)
        log_mark(q->log, q->log->used_gpa + offset, len);
}

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
    for (;;) {
        if (budget == 0) {
            snprintf(q->err, ERRLEN, "descriptor chain from head %u is longer than its table",
                     head);
            goto driver_error;
        }
        budget--;
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

static PyObject *error_or_none(Ring *q)
{
    if (q->failed == 1)
        return PyUnicode_FromString(q->err);
    Py_RETURN_NONE;
}

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
    if (check_num(num) < 0)
        return NULL;
    if (hl != 10 && hl != 12) {
        PyErr_SetString(PyExc_ValueError, "header length is 10 or 12");
        return NULL;
    }
    Views v = {0};
    Log log;
    memset(&log, 0, sizeof(log));
    Mem mem;
    mem.n = 0;
    Ring q;
    memset(&q, 0, sizeof(q));
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
    if (check_num(num) < 0)
        return NULL;
    if (hl != 10 && hl != 12) {
        PyErr_SetString(PyExc_ValueError, "header length is 10 or 12");
        return NULL;
    }
    Views v = {0};
    Log log;
    memset(&log, 0, sizeof(log));
    Mem mem;
    mem.n = 0;
    Ring q;
    memset(&q, 0, sizeof(q));
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
