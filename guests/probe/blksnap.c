/*
 * blksnap: virtio-blk across a save/restore or a migration.  Writes a
 * pattern over the first probe.n sectors (default 64) of the first virtio-blk
 * disk, FLUSHes, says so, then counts at COUNTER_ADDR up to 2^28 (most of a
 * second in ring 3: the host saves the machine meanwhile), reads the sectors
 * back through the same virtqueue and compares.  Run from a snapshot, the
 * read-back goes through the device state the snapshot carried, and must find
 * what the guest wrote before the save.
 */
#include "virtio.h"

#define BS_T_IN     0
#define BS_T_OUT    1
#define BS_T_FLUSH  4
#define BS_S_OK     0

static uint8_t bs_byte(uint64_t sector, uint32_t i)
{
    uint64_t v = (sector * 0x9E3779B97F4A7C15ULL) ^ (i * 0x100000001B3ULL) ^ 0x5a;

    return (uint8_t)(v ^ (v >> 29));
}

static int bs_request(struct virtio *v, uint8_t *rec, uint32_t type, uint64_t sector, uint8_t *buf, uint32_t len)
{
    struct vbuf vb[3];
    unsigned n = 0;
    uint32_t tok, ulen;

    *(volatile uint32_t *)(rec + 0) = type;
    *(volatile uint32_t *)(rec + 4) = 0;
    *(volatile uint64_t *)(rec + 8) = sector;
    rec[16] = 0xff;
    vb[n++] = (struct vbuf){ (uint64_t)rec, 16, 0 };
    if (len)
        vb[n++] = (struct vbuf){ (uint64_t)buf, len, type == BS_T_IN };
    vb[n++] = (struct vbuf){ (uint64_t)(rec + 16), 1, 1 };
    if (vq_add(&v->vq[0], vb, n, 0) < 0)
        return -1;
    vq_kick(&v->vq[0]);
    if (!vq_wait(&v->vq[0], us_tsc(VQ_TIMEOUT_US)) || vq_get(&v->vq[0], &tok, &ulen) <= 0)
        return -1;
    return *(volatile uint8_t *)(rec + 16);
}

NORETURN void test_blksnap(const struct options *o)
{
    static struct virtio v;
    uint64_t n = o->have_n ? o->n : 64, s, bad = 0;
    volatile uint64_t *counter = (volatile uint64_t *)COUNTER_ADDR;
    uint8_t *rec, *buf;
    const char *err;
    uint32_t i;
    int st = BS_S_OK;

    if ((err = virtio_init(o, 0)) != NULL || (err = virtio_find(&v, VIRTIO_ID_BLK)) != NULL)
        fail(err, "", 0);
    if ((err = virtio_start(&v, virtio_want(o), o->msix, 16)) != NULL)
        fail(err, "", 0);
    rec = dma_alloc(32, 32);
    buf = dma_alloc(512, 4096);
    for (s = 0; s < n && st == BS_S_OK; s++) {
        for (i = 0; i < 512; i++)
            buf[i] = bs_byte(s, i);
        st = bs_request(&v, rec, BS_T_OUT, s, buf, 512);
    }
    if (st == BS_S_OK)
        st = bs_request(&v, rec, BS_T_FLUSH, 0, buf, 0);
    line_begin("blksnap");
    kv_str("state", "written");
    kv_dec("sectors", n);
    kv_dec("status", (uint64_t)(st & 0xff));
    line_end();
    if (st != BS_S_OK)
        fail("blksnap: a write or the flush failed", "", 0);

    for (*counter = 0; *counter < (1ULL << 28);)
        (*counter)++;

    for (s = 0; s < n && st == BS_S_OK; s++) {
        memset(buf, 0, 512);
        st = bs_request(&v, rec, BS_T_IN, s, buf, 512);
        for (i = 0; i < 512 && st == BS_S_OK; i++)
            bad += buf[i] != bs_byte(s, i);
    }
    line_begin("blksnap");
    kv_str("state", "verified");
    kv_dec("sectors", n);
    kv_dec("status", (uint64_t)(st & 0xff));
    kv_dec("mismatched", bad);
    line_end();
    if (st != BS_S_OK || bad)
        fail("blksnap: read-back failed or differed", "", 0);
    pass();
}
