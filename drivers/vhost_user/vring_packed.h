/* Packed-ring access for the loops of _vring.c (virtio 1.2 section 2.8,
 * include/standard-headers/linux/virtio_ring.h): the scan for available buffers (wrap
 * counters, chains), simple batches, chain walking with indirect tables, used
 * descriptors (dirty log marked before any flags are published), and the event
 * suppression decisions of both ring layouts (whether to call the driver, asking it not
 * to kick).  Every check, its order and its message are those of PackedQueue in
 * drivers/vhost_user/packed.py (and SplitQueue.needs_call / set_notification in
 * virtqueue.py for the split ring's half of the notification helpers).  Part of the
 * single translation unit _vring.c.
 *
 * Buffers are taken and completed in the order they were made available, one used
 * descriptor each (what VIRTIO_F_IN_ORDER asks for, without its batched form).
 *
 * Descriptor {u64 addr, u32 len, u16 id, u16 flags}: flags NEXT 1, WRITE 2, INDIRECT 4,
 * AVAIL 1 << 7, USED 1 << 15.  Event suppression structure {u16 off_wrap, u16 flags}:
 * flags ENABLE 0, DISABLE 1, DESC 2.
 */
#ifndef VRING_PACKED_H
#define VRING_PACKED_H

#define PDESC_F_AVAIL 0x80
#define PDESC_F_USED 0x8000
#define PDESC_WRAP_BITS (PDESC_F_AVAIL | PDESC_F_USED)
#define PDESC_F_KNOWN (DESC_F_KNOWN | PDESC_WRAP_BITS)
#define PDESC_NO_WRAP 0x7F7F /* every flag bit but AVAIL/USED */
#define EVENT_F_ENABLE 0
#define EVENT_F_DISABLE 1
#define EVENT_F_DESC 2
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY 1

/* -- ring access ------------------------------------------------------------------------ */

static inline uint16_t load16(const uint8_t *p)
{
    uint16_t v = __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
    return le16toh(v);
}

static inline void store16(uint8_t *p, uint16_t v)
{
    __atomic_store_n((uint16_t *)p, htole16(v), __ATOMIC_RELEASE);
}

/* A packed descriptor copied out: flags in d->flags, the buffer id in d->next. */
static inline void p_read_desc(const uint8_t *p, Desc *d)
{
    uint64_t a;
    uint32_t l;
    uint16_t i, f;
    memcpy(&a, p, 8);
    memcpy(&l, p + 8, 4);
    memcpy(&i, p + 12, 2);
    memcpy(&f, p + 14, 2);
    BARRIER();
    d->addr = le64toh(a);
    d->len = le32toh(l);
    d->next = le16toh(i);
    d->flags = le16toh(f);
}

/* PackedQueue.avail_count: the complete buffers made available from the avail slot on,
 * recorded in q->bufs (up to num); -1 with the error set for a chain over the whole ring. */
static int p_scan(Ring *q)
{
    uint32_t num = q->num, start = q->aslot, count = 0, first = 0, m = 0;
    uint16_t want = q->awrap ? PDESC_F_AVAIL : PDESC_F_USED;
    int64_t last_end = -1;
    for (uint32_t i = 0; i < num; i++) {
        uint32_t slot = start + i;
        uint16_t lap = want;
        if (slot >= num) {
            slot -= num;
            lap ^= PDESC_WRAP_BITS;
        }
        uint16_t f = load16(q->desc + 16 * (size_t)slot + 14);
        if ((f & PDESC_WRAP_BITS) != lap)
            break;
        m++;
        if (f & DESC_F_NEXT)
            continue;
        uint16_t id;
        memcpy(&id, q->desc + 16 * (size_t)slot + 12, 2);
        uint32_t at = start + first;
        PBuf *b = &q->bufs[count++];
        b->slot = (uint16_t)(at >= num ? at - num : at);
        b->n = (uint16_t)(i - first + 1);
        b->id = le16toh(id);
        first = i + 1;
        last_end = i;
    }
    if (m == num && last_end != (int64_t)num - 1) {
        snprintf(q->err, ERRLEN, "a descriptor chain runs over the whole ring of %u", num);
        q->failed = 1;
        return -1;
    }
    return (int)count;
}

/* PackedQueue.simple_batch: 1 when every one of the first n buffers is one descriptor
 * whose flags (wrap bits aside) are exactly `flags`, all inside the shared memory (ptrs
 * filled); 0 when not; -1 on a driver error. */
static int p_batch(Ring *q, uint32_t n, Desc *descs, uint8_t **ptrs, uint16_t flags)
{
    int simple = 1;
    for (uint32_t k = 0; k < n; k++)
        if (q->bufs[k].n != 1)
            return 0;
    for (uint32_t k = 0; k < n; k++) {
        p_read_desc(q->desc + 16 * (size_t)q->bufs[k].slot, &descs[k]);
        if ((descs[k].flags & PDESC_NO_WRAP) != flags)
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

/* PackedQueue._segment. */
static int p_segment(Ring *q, const Desc *d, int writable, uint32_t head, Segs *s,
                     uint64_t *total)
{
    if (!!(d->flags & DESC_F_WRITE) != writable) {
        snprintf(q->err, ERRLEN, "%s descriptor in a %s (slot %u)",
                 writable ? "read-only" : "writable",
                 writable ? "receive buffer" : "transmit chain", head);
        q->failed = 1;
        return -1;
    }
    uint8_t *ptr = gpa_ptr(q->mem, d->addr, d->len);
    if (ptr == NULL) {
        snprintf(q->err, ERRLEN, "descriptor at 0x%llx (+%u) is outside the shared memory",
                 (unsigned long long)d->addr, d->len);
        q->failed = 1;
        return -1;
    }
    if (d->len) {
        if (segs_add(q, s, ptr, d->addr, d->len) < 0)
            return -1;
        *total += d->len;
    }
    return 0;
}

/* PackedQueue._indirect. */
static int p_indirect(Ring *q, const Desc *d, int writable, uint32_t head, Segs *s,
                      uint64_t *total)
{
    if (!q->indirect) {
        snprintf(q->err, ERRLEN, "indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC is off");
        goto driver_error;
    }
    if (d->len == 0 || d->len % 16) {
        snprintf(q->err, ERRLEN, "indirect table of %u bytes", d->len);
        goto driver_error;
    }
    if (d->len / 16 > q->num) {
        snprintf(q->err, ERRLEN, "indirect table of %u entries in a ring of %u", d->len / 16,
                 q->num);
        goto driver_error;
    }
    const uint8_t *table = gpa_ptr(q->mem, d->addr, d->len);
    if (table == NULL) {
        snprintf(q->err, ERRLEN, "indirect table at 0x%llx is outside the shared memory",
                 (unsigned long long)d->addr);
        goto driver_error;
    }
    for (uint32_t k = 0; k < d->len / 16; k++) {
        Desc e;
        p_read_desc(table + 16 * (size_t)k, &e);
        if (e.flags & DESC_F_INDIRECT) {
            snprintf(q->err, ERRLEN, "indirect descriptor inside an indirect table");
            goto driver_error;
        }
        if (e.flags & ~(DESC_F_NEXT | DESC_F_WRITE)) {
            snprintf(q->err, ERRLEN, "indirect table entry %u has unknown flags 0x%x", k,
                     e.flags);
            goto driver_error;
        }
        if (p_segment(q, &e, writable, head, s, total) < 0)
            return -1;
    }
    return 0;
driver_error:
    q->failed = 1;
    return -1;
}

/* PackedQueue.chain: the segments of buffer k of the last scan; total in *total. */
static int p_walk(Ring *q, uint32_t k, int writable, Segs *s, uint64_t *total)
{
    const PBuf *b = &q->bufs[k];
    uint32_t num = q->num, count = b->n;
    *total = 0;
    q->walked = count;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t slot = b->slot + i;
        if (slot >= num)
            slot -= num;
        Desc d;
        p_read_desc(q->desc + 16 * (size_t)slot, &d);
        if (d.flags & ~PDESC_F_KNOWN) {
            snprintf(q->err, ERRLEN, "descriptor %u has unknown flags 0x%x", slot, d.flags);
            q->failed = 1;
            return -1;
        }
        if (d.flags & DESC_F_INDIRECT) {
            if (i != count - 1 || (d.flags & DESC_F_NEXT)) {
                snprintf(q->err, ERRLEN, "indirect descriptor with NEXT set");
                q->failed = 1;
                return -1;
            }
            if (p_indirect(q, &d, writable, b->slot, s, total) < 0)
                return -1;
            continue;
        }
        if (p_segment(q, &d, writable, b->slot, s, total) < 0)
            return -1;
    }
    return 0;
}

/* PackedQueue.consume: buffers [from, from + count) of the last scan were taken. */
static void p_consume(Ring *q, uint32_t from, uint32_t count)
{
    uint32_t slot = q->aslot;
    for (uint32_t k = from; k < from + count; k++)
        slot += q->bufs[k].n;
    while (slot >= q->num) {
        slot -= q->num;
        q->awrap ^= 1;
    }
    q->aslot = slot;
}

/* PackedQueue.push_used: one used descriptor per buffer [from, from + count) of `bufs`
 * (lens NULL: 0 bytes), at the used slot on.  Ids and lengths are stored, then the flags
 * of every entry but the first, the first's last (the driver sees the batch at once); the
 * ring's pages are marked in the dirty log after the stores, so a bitmap sync between a
 * mark and a store cannot lose the write (as the split ring and the Python path do). */
static void p_push(Ring *q, const PBuf *bufs, uint32_t count, const uint32_t *lens)
{
    if (!count)
        return;
    uint32_t num = q->num, pos = q->uslot, wrap = q->uwrap;
    uint32_t first_pos = pos;
    uint16_t first_flags = 0;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t len = lens ? lens[k] : 0;
        uint8_t *p = q->desc + 16 * (size_t)pos;
        uint32_t l = htole32(len);
        uint16_t id = htole16(bufs[k].id);
        memcpy(p + 8, &l, 4);
        memcpy(p + 12, &id, 2);
        uint16_t flags = (uint16_t)((wrap ? PDESC_WRAP_BITS : 0) | (len ? DESC_F_WRITE : 0));
        if (k == 0)
            first_flags = flags;
        else
            store16(p + 14, flags);
        pos += bufs[k].n;
        if (pos >= num) {
            pos -= num;
            wrap ^= 1;
        }
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    store16(q->desc + 16 * (size_t)first_pos + 14, first_flags);
    log_mark(q->log, q->desc_gpa, 16 * (uint64_t)num);
    q->uslot = pos;
    q->uwrap = wrap;
}

/* -- event suppression, both layouts ---------------------------------------------------- */

typedef struct {
    int event_idx;
    uint32_t signalled; /* the used index (split) or slot (packed) last checked */
    int valid;          /* signalled is meaningful (false after a start) */
} Notify;

/* SplitQueue.needs_call and PackedQueue.needs_call: 1 call, 0 not; the caller records the
 * new signalled index (split without EVENT_IDX records nothing, as in Python). */
static int needs_call(Ring *q, const Notify *nt)
{
    /* A full barrier between publishing the used index/flags and reading the driver's
     * event state: a release store followed by an acquire load may still be reordered,
     * and then a driver that just moved its event index would wait for a call we skip
     * (QEMU's virtio_should_notify and DPDK's vhost_vring_call_* fence here too). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!q->packed) {
        if (!nt->event_idx)
            return !(load16(q->avail) & AVAIL_F_NO_INTERRUPT);
        if (!nt->valid)
            return 1;
        uint16_t event = load16(q->avail + 4 + 2 * (size_t)q->num);
        uint16_t now = q->used_idx, old = (uint16_t)nt->signalled;
        return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
    }
    uint16_t flags = load16(q->avail + 2);
    if (flags != EVENT_F_DESC || !nt->event_idx)
        return flags != EVENT_F_DISABLE;
    if (!nt->valid)
        return 1;
    uint16_t off_wrap = load16(q->avail);
    int32_t now = (int32_t)q->uslot, old = (int32_t)nt->signalled;
    int32_t event = off_wrap & 0x7FFF;
    if (now <= old)
        old -= (int32_t)q->num;
    if ((uint32_t)(off_wrap >> 15) != q->uwrap)
        event -= (int32_t)q->num;
    return (uint16_t)(now - event - 1) < (uint16_t)(now - old);
}

/* set_notification(False) of either layout: the driver need not kick. */
static void no_kicks(Ring *q, const Notify *nt)
{
    if (q->packed) {
        store16(q->used + 2, EVENT_F_DISABLE);
        log_mark(q->log, q->evt_gpa, 4);
    } else if (!nt->event_idx) {
        store16(q->used, USED_F_NO_NOTIFY);
        log_used(q, 0, 2);
    }
}

/* -- either layout ---------------------------------------------------------------------- */

/* Buffers a driver made available and not taken, or -1 (error set). */
static int ring_avail(Ring *q)
{
    return q->packed ? p_scan(q) : avail_count(q);
}

/* The first n buffers as one simple batch (see batch / p_batch). */
static int ring_batch(Ring *q, uint32_t n, uint16_t *heads, Desc *descs, uint8_t **ptrs,
                      uint16_t flags)
{
    return q->packed ? p_batch(q, n, descs, ptrs, flags) : batch(q, n, heads, descs, ptrs, flags);
}

/* The chain of buffer k of the batch (split: heads[k]). */
static int walk_buf(Ring *q, const uint16_t *heads, uint32_t k, int writable, Segs *s,
                    uint64_t *total)
{
    return q->packed ? p_walk(q, k, writable, s, total) : walk(q, heads[k], writable, s, total);
}

/* Buffers [from, from + count) of the batch taken and given back with lens (NULL: 0). */
static void complete(Ring *q, const uint16_t *heads, uint32_t from, uint32_t count,
                     const uint32_t *lens)
{
    if (q->packed) {
        p_consume(q, from, count);
        p_push(q, q->bufs + from, count, lens);
        return;
    }
    q->last_avail = (uint16_t)(q->last_avail + count);
    push_used(q, heads + from, lens, count);
}

#endif
