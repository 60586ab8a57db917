/* Guest memory and dirty log for the ring loops (split and packed): types, the region table acquired
 * for one call, bounds-checked translation of guest-physical ranges, atomic dirty-log
 * marking.  Part of the single translation unit _vring.c (included once, after Python.h).
 */
#ifndef VRING_GUEST_H
#define VRING_GUEST_H

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

/* One buffer a packed-ring scan found: the slot it starts at, its descriptor count and
 * the id of its last descriptor (copied when found, given back as found). */
typedef struct {
    uint16_t slot, n, id, pad;
} PBuf;

typedef struct {
    uint8_t *desc, *avail, *used; /* packed: desc is the ring, avail/used the event areas */
    uint32_t num;
    uint16_t last_avail, used_idx;
    int indirect;
    Mem *mem;
    Log *log;
    char err[ERRLEN];
    int failed; /* 1: driver error in err; -1: Python exception set */
    /* packed rings only */
    int packed;
    uint32_t aslot, awrap, uslot, uwrap;
    uint64_t desc_gpa; /* the ring's guest-physical address (dirty log of used entries) */
    uint64_t evt_gpa;  /* the device event area's (dirty log of no_kicks) */
    PBuf *bufs;        /* what the last scan found */
    int moved;         /* receive: some buffer was used (the driver may want a call) */
    uint32_t walked;   /* ring entries the last walk_buf went over (split: table
                        * descriptors, an indirect one counting 1; packed: slots) */
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

/* Start loading the first two cache lines of each buffer (a minimum-size frame and its
 * header) before any is copied: the buffers were last written by the front end on another
 * CPU, and overlapping those misses is most of the cost of a burst of small frames. */
static inline void prefetch_all(uint8_t *const *ptrs, uint32_t n, int for_write)
{
    for (uint32_t k = 0; k < n; k++) {
        if (for_write) {
            __builtin_prefetch(ptrs[k], 1);
            __builtin_prefetch(ptrs[k] + 64, 1);
        } else {
            __builtin_prefetch(ptrs[k], 0);
            __builtin_prefetch(ptrs[k] + 64, 0);
        }
    }
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

#endif
