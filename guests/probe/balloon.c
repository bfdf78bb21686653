/*
 * virtio-balloon (ring 3): the balloon workload.
 *
 * The pages the balloon may take come from a pool: the RAM (type 1) of
 * the boot memory map from BALLOON_POOL_BASE (64 MiB) up to 4 GiB, less
 * the pages holding the boot information and the command line.  Nothing
 * else of the probe lives up there: its image, stacks and DMA arena are
 * all below 32 MiB.  Pool page i (in address order) is inflated before
 * page i + 1 and deflated after it, so the balloon always holds pool
 * pages 0 .. actual-1.
 *
 * The driver reads num_pages from the configuration every
 * BALLOON_POLL_US and moves pages until actual equals it (or the whole
 * pool is in the balloon): page frame numbers (le32, 4 KiB pages) in
 * requests of up to BALLOON_PFNS each, BALLOON_REQS requests a batch,
 * one notify per batch; actual is written after each batch the device
 * has completed.  A deflated page is written and read back once, to show
 * it is usable again.  With VIRTIO_BALLOON_F_STATS_VQ a statistics
 * buffer waits in queue 2; each time the device hands it back it is
 * refilled and queued again.
 */
#include "virtio.h"

/* virtio-balloon feature bits (5.5.3) */
#define BAL_F_MUST_TELL_HOST    (1ULL << 0)
#define BAL_F_STATS_VQ          (1ULL << 1)
#define BAL_F_DEFLATE_ON_OOM    (1ULL << 2)

/* Device configuration (5.5.4) */
#define BAL_CFG_NUM_PAGES       0
#define BAL_CFG_ACTUAL          4

/* Statistics tags (5.5.6.3) */
#define BAL_S_SWAP_IN           0
#define BAL_S_SWAP_OUT          1
#define BAL_S_MEMFREE           4
#define BAL_S_MEMTOT            5
#define BAL_S_AVAIL             6
#define BAL_STATS               5
#define BAL_STAT_SIZE           10      /* le16 tag, le64 value, packed */

#define INFLATEQ                0
#define DEFLATEQ                1
#define STATSQ                  2

#define BALLOON_POOL_BASE       0x4000000ULL    /* 64 MiB */
#define BALLOON_POOL_END        0x100000000ULL  /* the identity map's end */
#define PAGE_SHIFT              12
#define PAGE_SIZE               4096
#define BALLOON_PFNS            1024    /* per request: one 4 KiB buffer */
#define BALLOON_REQS            16      /* per batch: 64 MiB */
#define BALLOON_POLL_US         10000
#define BALLOON_MAX_RANGES      32

/* Boot memory maps */
#define ZP_E820_ENTRIES         0x1e8
#define ZP_E820_TABLE           0x2d0
#define E820_ENTRY_SIZE         20
#define E820_MAX                128
#define HVM_VERSION             4
#define HVM_MEMMAP_PADDR        40
#define HVM_MEMMAP_ENTRIES      48
#define HVM_MEMMAP_ENTRY_SIZE   24
#define MEM_TYPE_RAM            1

struct pfn_range {
    uint64_t start, pages;              /* page frame numbers */
};

struct balloon {
    struct virtio v;
    struct pfn_range pool[BALLOON_MAX_RANGES];
    unsigned npool;
    uint64_t pool_pages, ram_bytes;
    const char *map_source;
    uint32_t *pfns;                     /* BALLOON_REQS x BALLOON_PFNS */
    uint8_t *stats;
    int have_stats;
    uint64_t actual;                    /* pages in the balloon */
    uint64_t inflated, deflated, requests, stats_updates, touch_errors;
    int error;
};

static struct balloon balloon_dev;

/* ------------------------------------------------------------------ */
/* The pool.                                                            */

/* Add [start, end) (bytes) of RAM to the pool, clipped to the pool's window. */
static void pool_add(struct balloon *b, uint64_t start, uint64_t end)
{
    if (start < BALLOON_POOL_BASE)
        start = BALLOON_POOL_BASE;
    if (end > BALLOON_POOL_END)
        end = BALLOON_POOL_END;
    start = (start + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
    end &= ~(uint64_t)(PAGE_SIZE - 1);
    if (end <= start || b->npool >= BALLOON_MAX_RANGES)
        return;
    b->pool[b->npool].start = start >> PAGE_SHIFT;
    b->pool[b->npool].pages = (end - start) >> PAGE_SHIFT;
    b->npool++;
}

/* Take [start, end) (bytes, widened to pages) out of the pool. */
static void pool_exclude(struct balloon *b, uint64_t start, uint64_t end)
{
    uint64_t s = start >> PAGE_SHIFT, e = (end + PAGE_SIZE - 1) >> PAGE_SHIFT;
    unsigned i;

    for (i = 0; i < b->npool; i++) {
        struct pfn_range *r = &b->pool[i];
        uint64_t rs = r->start, re = r->start + r->pages;

        if (e <= rs || s >= re)
            continue;
        if (s > rs && e < re && b->npool < BALLOON_MAX_RANGES) {
            /* Split: the tail becomes a new range at the end. */
            b->pool[b->npool].start = e;
            b->pool[b->npool].pages = re - e;
            b->npool++;
            r->pages = s - rs;
        } else if (s <= rs) {
            r->start = e < re ? e : re;
            r->pages = re - r->start;
        } else {
            r->pages = s - rs;
        }
    }
}

static void pool_sort_and_count(struct balloon *b)
{
    unsigned i, j;

    for (i = 1; i < b->npool; i++) {
        struct pfn_range x = b->pool[i];

        for (j = i; j > 0 && b->pool[j - 1].start > x.start; j--)
            b->pool[j] = b->pool[j - 1];
        b->pool[j] = x;
    }
    b->pool_pages = 0;
    for (i = 0; i < b->npool; i++)
        b->pool_pages += b->pool[i].pages;
}

static uint32_t pool_pfn(const struct balloon *b, uint64_t index)
{
    unsigned i;

    for (i = 0; i < b->npool; i++) {
        if (index < b->pool[i].pages)
            return (uint32_t)(b->pool[i].start + index);
        index -= b->pool[i].pages;
    }
    return 0;                           /* not reached: index < pool_pages */
}

/* RAM ranges from the zero page's e820 table or hvm_start_info's memmap. */
static const char *read_memory_map(struct balloon *b, const struct options *o)
{
    uint64_t info = o->boot_info, table;
    unsigned n, i, size;

    if (!info)
        return "no boot information: no memory map";
    if (o->boot_kind == BOOT_PVH) {
        if (*(volatile uint32_t *)(info + HVM_VERSION) < 1)
            return "hvm_start_info version 0 has no memory map";
        table = *(volatile uint64_t *)(info + HVM_MEMMAP_PADDR);
        n = *(volatile uint32_t *)(info + HVM_MEMMAP_ENTRIES);
        size = HVM_MEMMAP_ENTRY_SIZE;
        b->map_source = "pvh";
    } else {
        table = info + ZP_E820_TABLE;
        n = *(volatile uint8_t *)(info + ZP_E820_ENTRIES);
        size = E820_ENTRY_SIZE;
        b->map_source = "e820";
    }
    if (!table || !n || n > E820_MAX || table >= BALLOON_POOL_END - (uint64_t)n * size)
        return "no usable memory map";
    for (i = 0; i < n; i++) {
        uint64_t e = table + (uint64_t)i * size;
        uint64_t addr = *(volatile uint64_t *)e, len = *(volatile uint64_t *)(e + 8);
        uint32_t type = *(volatile uint32_t *)(e + 16);

        if (type != MEM_TYPE_RAM || addr + len < addr)
            continue;
        b->ram_bytes += len;
        pool_add(b, addr, addr + len);
    }
    /* Whatever the boot loader left up there stays out. */
    pool_exclude(b, info, info + PAGE_SIZE);
    pool_exclude(b, table, table + (uint64_t)n * size);
    if (o->cmdline)
        pool_exclude(b, o->cmdline, o->cmdline + o->cmdline_len + 1);
    pool_sort_and_count(b);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Moving pages.                                                        */

/* Hand n pages to the device (inflate) or take them back (deflate),
 * in batches, updating actual after each.  0 on a device error. */
static int balloon_move(struct balloon *b, int inflate, uint64_t n)
{
    struct virtq *q = &b->v.vq[inflate ? INFLATEQ : DEFLATEQ];

    while (n) {
        uint64_t moved = 0, k;
        unsigned reqs = 0, r;

        for (r = 0; r < BALLOON_REQS && n; r++) {
            uint32_t *p = b->pfns + (uint64_t)r * BALLOON_PFNS;
            struct vbuf vb;
            unsigned cnt = 0;

            while (cnt < BALLOON_PFNS && n) {
                uint64_t index = inflate ? b->actual + moved : b->actual - 1 - moved;

                p[cnt++] = pool_pfn(b, index);
                moved++;
                n--;
            }
            vb.addr = (uint64_t)p;
            vb.len = cnt * 4;
            vb.write = 0;
            if (vq_add(q, &vb, 1, r) < 0)
                return 0;
            reqs++;
        }
        vq_kick(q);
        b->requests += reqs;
        while (reqs) {
            uint32_t tok, len;
            int got;

            if (!vq_wait(q, us_tsc(VQ_TIMEOUT_US)))
                return 0;
            while (reqs && (got = vq_get(q, &tok, &len)) != 0) {
                if (got < 0 || tok >= BALLOON_REQS)
                    return 0;
                reqs--;
            }
        }
        if (inflate) {
            b->actual += moved;
            b->inflated += moved;
        } else {
            /* Usable again: write each page once and read it back. */
            for (k = 0; k < moved; k++) {
                volatile uint64_t *page =
                    (volatile uint64_t *)((uint64_t)pool_pfn(b, b->actual - 1 - k) << PAGE_SHIFT);

                *page = 0x70726f6265000000ULL | k;
                if (*page != (0x70726f6265000000ULL | k))
                    b->touch_errors++;
            }
            b->actual -= moved;
            b->deflated += moved;
        }
        vcfg_w32(&b->v, BAL_CFG_ACTUAL, (uint32_t)b->actual);
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Statistics.                                                          */

static void put_stat(uint8_t *p, uint16_t tag, uint64_t val)
{
    unsigned i;

    p[0] = (uint8_t)tag;
    p[1] = (uint8_t)(tag >> 8);
    for (i = 0; i < 8; i++)
        p[2 + i] = (uint8_t)(val >> (8 * i));
}

static void stats_post(struct balloon *b)
{
    uint64_t free_bytes = (b->pool_pages - b->actual) * PAGE_SIZE;
    struct vbuf vb = { (uint64_t)b->stats, BAL_STATS * BAL_STAT_SIZE, 0 };

    put_stat(b->stats + 0 * BAL_STAT_SIZE, BAL_S_SWAP_IN, 0);
    put_stat(b->stats + 1 * BAL_STAT_SIZE, BAL_S_SWAP_OUT, 0);
    put_stat(b->stats + 2 * BAL_STAT_SIZE, BAL_S_MEMFREE, free_bytes);
    put_stat(b->stats + 3 * BAL_STAT_SIZE, BAL_S_MEMTOT, b->ram_bytes);
    put_stat(b->stats + 4 * BAL_STAT_SIZE, BAL_S_AVAIL, free_bytes);
    (void)vq_add(&b->v.vq[STATSQ], &vb, 1, 0);
    vq_kick(&b->v.vq[STATSQ]);
}

static void stats_poll(struct balloon *b)
{
    uint32_t tok, len;
    int r;

    if (!b->have_stats || !vq_pending(&b->v.vq[STATSQ]))
        return;
    while ((r = vq_get(&b->v.vq[STATSQ], &tok, &len)) != 0) {
        if (r < 0) {
            b->error = 1;
            return;
        }
        b->stats_updates++;
        stats_post(b);
    }
}

/* ------------------------------------------------------------------ */
/* balloon workload.                                                    */

static void balloon_line(struct balloon *b, uint32_t target)
{
    line_begin("balloon");
    kv_dec("target", target);
    kv_dec("actual", b->actual);
    if (target > b->pool_pages)
        kv_dec("capped", b->pool_pages);
    line_end();
}

NORETURN void test_balloon(const struct options *o)
{
    struct balloon *b = &balloon_dev;
    uint64_t secs = o->have_secs ? o->secs : 20, changes = 0, t0, limit;
    uint32_t target, last_target = 0, served = 0;
    const char *err = virtio_init(o, 0);

    if (err)
        fail(err, "", 0);
    if ((err = read_memory_map(b, o)) != NULL)
        fail(err, "", 0);
    if ((err = virtio_find(&b->v, VIRTIO_ID_BALLOON)) != NULL)
        fail(err, "", 0);
    tsc_calibrate(NULL);
    err = virtio_negotiate(&b->v, virtio_want(o) | BAL_F_MUST_TELL_HOST | BAL_F_STATS_VQ |
                           BAL_F_DEFLATE_ON_OOM, o->msix);
    if (!err) {
        b->have_stats = !!(b->v.features & BAL_F_STATS_VQ);
        err = virtio_setup(&b->v, b->have_stats ? 3 : 2, 256);
    }
    if (err)
        fail(err, "", 0);
    virtio_print(&b->v, "balloon");
    b->pfns = dma_alloc(4ULL * BALLOON_PFNS * BALLOON_REQS, 4096);
    if (b->have_stats) {
        b->stats = dma_alloc(BAL_STATS * BAL_STAT_SIZE, 16);
        stats_post(b);
    }
    vcfg_w32(&b->v, BAL_CFG_ACTUAL, 0);

    line_begin("balloon");
    put_str(" ready");
    kv_dec("pool_pages", b->pool_pages);
    kv_hex("pool_base", b->npool ? b->pool[0].start << PAGE_SHIFT : 0);
    kv_dec("pool_ranges", b->npool);
    kv_dec("ram_bytes", b->ram_bytes);
    kv_str("map", b->map_source);
    kv_dec("stats", (uint64_t)b->have_stats);
    kv_dec("must_tell_host", !!(b->v.features & BAL_F_MUST_TELL_HOST));
    kv_dec("deflate_on_oom", !!(b->v.features & BAL_F_DEFLATE_ON_OOM));
    line_end();

    t0 = rdtsc();
    limit = us_tsc(secs * 1000000);
    while (rdtsc() - t0 < limit && !b->error) {
        uint64_t want;

        if (o->have_n && changes >= o->n)
            break;
        target = vcfg32(&b->v, BAL_CFG_NUM_PAGES);
        if (target != last_target) {
            balloon_line(b, target);
            last_target = target;
        }
        want = target < b->pool_pages ? target : b->pool_pages;
        if (want != b->actual) {
            int ok = want > b->actual ? balloon_move(b, 1, want - b->actual)
                                      : balloon_move(b, 0, b->actual - want);

            if (!ok) {
                b->error = 1;
                break;
            }
            balloon_line(b, target);
        }
        if (target != served && b->actual == want) {
            served = target;
            changes++;
        }
        stats_poll(b);
        tsc_delay_us(BALLOON_POLL_US);
    }
    line_begin("balloon");
    kv_dec("changes", changes);
    kv_dec("target", last_target);
    kv_dec("actual", b->actual);
    kv_dec("inflated", b->inflated);
    kv_dec("deflated", b->deflated);
    kv_dec("requests", b->requests);
    kv_dec("stats_updates", b->stats_updates);
    kv_dec("touch_errors", b->touch_errors);
    if (b->v.msix)
        kv_dec("irqs", virtio_irqs(&b->v));
    line_end();
    if (b->error)
        fail("virtio-balloon request failed or timed out", "", 0);
    if (b->touch_errors)
        fail("a deflated page did not keep what was written to it", "", 0);
    if (o->have_n && changes != o->n)
        fail("fewer than probe.n target changes served", "", 0);
    pass();
}
