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

/* Virtio-blk device nth started, a request record and a one-sector buffer. */
static void bs_start(const struct options *o, struct virtio *v, unsigned nth, uint8_t **rec, uint8_t **buf)
{
    const char *err;

    if ((err = virtio_init(o, 0)) != NULL || (err = virtio_find_nth(v, VIRTIO_ID_BLK, nth)) != NULL)
        fail(err, "", 0);
    if ((err = virtio_start(v, virtio_want(o), o->msix, 16)) != NULL)
        fail(err, "", 0);
    *rec = dma_alloc(32, 32);
    *buf = dma_alloc(512, 4096);
}

NORETURN void test_blksnap(const struct options *o)
{
    static struct virtio v;
    uint64_t n = o->have_n ? o->n : 64, s, bad = 0;
    volatile uint64_t *counter = (volatile uint64_t *)COUNTER_ADDR;
    uint8_t *rec, *buf;
    uint32_t i;
    int st = BS_S_OK;

    bs_start(o, &v, 0, &rec, &buf);
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

/*
 * blkswap: the host swaps a virtio-blk disk's backing file (the first, or
 * the probe.dev-th, counting from 0) under the running guest.  Prints the capacity, the configuration generation and the
 * first 8 bytes of sector 0 (state=before; none on an empty disk, as Kata's
 * placeholder drives are), says state=waiting, then waits
 * (up to probe.n seconds, default 60) for the configuration to change: with
 * interrupts (probe.irq=msix on PCI, where it comes on MSI-X entry 0, or
 * probe.irq=ioapic on MMIO) for the configuration-change interrupt, else for
 * the generation to move.  Then it reads the configuration again
 * and prints the new capacity, the generation, the configuration interrupts
 * counted, and the first 8 bytes of sector 0 and of the last sector, read
 * through the same virtqueue (state=after).
 */
static uint64_t bs_word(struct virtio *v, uint8_t *rec, uint8_t *buf, uint64_t sector, int *st)
{
    memset(buf, 0, 512);
    *st = bs_request(v, rec, BS_T_IN, sector, buf, 512);
    return *(volatile uint64_t *)buf;
}

static void bs_line(const char *state, uint64_t capacity, uint8_t gen)
{
    line_begin("blkswap");
    kv_str("state", state);
    kv_dec("capacity", capacity);
    kv_dec("generation", gen);
}

NORETURN void test_blkswap(const struct options *o)
{
    static struct virtio v;
    uint64_t capacity, first, last, irqs, t0, wait = us_tsc((o->have_n ? o->n : 60) * 1000000ULL);
    uint8_t gen, *rec, *buf;
    int st, st2 = 0, changed = 0;

    bs_start(o, &v, o->dev, &rec, &buf);
    gen = vcfg_generation(&v);
    capacity = vcfg64(&v, 0);
    st = BS_S_OK;
    first = capacity ? bs_word(&v, rec, buf, 0, &st) : 0;
    bs_line("before", capacity, gen);
    if (capacity)
        kv_hex("sector0", first);
    else
        kv_str("sector0", "none");      /* an empty placeholder disk */
    kv_dec("status", (uint64_t)(st & 0xff));
    line_end();
    if (st != BS_S_OK)
        fail("blkswap: reading sector 0 failed", "", 0);
    irqs = virtio_irqs(&v);
    line_begin("blkswap");
    kv_str("state", "waiting");
    line_end();
    for (t0 = rdtsc(); rdtsc() - t0 < wait; tsc_delay_us(1000)) {
        changed = o->msix ? virtio_irqs(&v) != irqs : vcfg_generation(&v) != gen;
        if (changed)
            break;
    }
    if (!changed)
        fail("blkswap: the configuration did not change", "", 0);
    irqs = virtio_irqs(&v) - irqs;
    gen = vcfg_generation(&v);
    capacity = vcfg64(&v, 0);
    first = bs_word(&v, rec, buf, 0, &st);
    last = capacity ? bs_word(&v, rec, buf, capacity - 1, &st2) : 0;
    bs_line("after", capacity, gen);
    kv_dec("config_irqs", irqs);
    kv_hex("sector0", first);
    kv_hex("last", last);
    kv_dec("status", (uint64_t)(st & 0xff));
    line_end();
    if (st != BS_S_OK || !capacity || st2 != BS_S_OK)
        fail("blkswap: reading the new disk failed", "", 0);
    pass();
}
