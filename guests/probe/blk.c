/*
 * virtio-blk (ring 3): the blk, blkbench and hostile workloads.
 *
 * Requests are kept in "slots": a 16-byte request header and the status
 * byte in one small record, plus a data buffer, all in the DMA arena.
 * blk_pipeline() keeps up to a given number of requests in flight: it
 * fills every free slot, notifies once, waits for completions, hands each
 * to a callback and refills.
 */
#include "virtio.h"

/* virtio-blk feature bits (5.2.3) */
#define BLK_F_SIZE_MAX      (1ULL << 1)
#define BLK_F_SEG_MAX       (1ULL << 2)
#define BLK_F_GEOMETRY      (1ULL << 4)
#define BLK_F_RO            (1ULL << 5)
#define BLK_F_BLK_SIZE      (1ULL << 6)
#define BLK_F_FLUSH         (1ULL << 9)
#define BLK_F_TOPOLOGY      (1ULL << 10)
#define BLK_F_DISCARD       (1ULL << 13)
#define BLK_F_WRITE_ZEROES  (1ULL << 14)
#define BLK_FEATURES        (BLK_F_SIZE_MAX | BLK_F_SEG_MAX | BLK_F_GEOMETRY | BLK_F_RO | \
                             BLK_F_BLK_SIZE | BLK_F_FLUSH | BLK_F_TOPOLOGY | BLK_F_DISCARD | \
                             BLK_F_WRITE_ZEROES)

/* Device configuration (5.2.4) */
#define BLK_CFG_CAPACITY            0
#define BLK_CFG_SIZE_MAX            8
#define BLK_CFG_SEG_MAX             12
#define BLK_CFG_BLK_SIZE            20
#define BLK_CFG_MAX_DISCARD_SECTORS 36
#define BLK_CFG_MAX_DISCARD_SEG     40
#define BLK_CFG_DISCARD_ALIGN       44
#define BLK_CFG_MAX_WZ_SECTORS      48
#define BLK_CFG_MAX_WZ_SEG          52

/* Request types and status values (5.2.6) */
#define BLK_T_IN            0
#define BLK_T_OUT           1
#define BLK_T_FLUSH         4
#define BLK_T_GET_ID        8
#define BLK_T_DISCARD       11
#define BLK_T_WRITE_ZEROES  13
#define BLK_S_OK            0
#define BLK_S_IOERR         1
#define BLK_S_UNSUPP        2
#define BLK_S_UNWRITTEN     0xff        /* what we put there before submitting */
#define BLK_R_TIMEOUT       (-1)
#define BLK_R_PROTOCOL      (-2)
#define BLK_R_NO_ROOM       (-3)

#define BLK_ID_BYTES        20
#define SECTOR              512
#define MAX_SLOTS           256
#define MAX_DATA_SEGS       (VQ_INDIRECT_MAX - 2)

struct blk_slot {
    uint8_t *rec;                       /* header (16 bytes), status at 16 */
    uint8_t *buf;
    uint32_t cap;
    uint32_t type, len;
    uint64_t sector;
    uint64_t tag;                       /* request number in a pipeline */
    uint32_t used_len;
    int busy;
};

struct blk {
    struct virtio v;
    uint64_t capacity;                  /* 512-byte sectors */
    uint32_t blk_size, align;           /* logical block: bytes, sectors */
    int ro;
    uint32_t size_max, seg_max, seg_bytes, max_segs;
    uint32_t max_discard_sectors, max_discard_seg, discard_align;
    uint32_t max_wz_sectors, max_wz_seg;
    struct blk_slot slots[MAX_SLOTS];
    unsigned nslots;
    uint64_t requests;
    uint64_t tmo;
};

typedef void (*blk_gen_fn)(struct blk *b, struct blk_slot *s, uint64_t i, void *ctx);
typedef void (*blk_done_fn)(struct blk *b, struct blk_slot *s, void *ctx);

/* ------------------------------------------------------------------ */
/* Data pattern and request placement.                                  */

/*
 * 512 bytes for (sector, salt): 64 little-endian 64-bit words of xorshift
 * (13, 7, 17) starting from (2 * sector + 1 + (salt << 56)) *
 * 0x9e3779b97f4a7c15, each word taken after one step.  The start is odd,
 * so never 0.
 */
static void pattern_sector(uint64_t *p, uint64_t sector, uint64_t salt)
{
    uint64_t x = (2 * sector + 1 + (salt << 56)) * 0x9E3779B97F4A7C15ULL;
    unsigned i;

    for (i = 0; i < SECTOR / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = x;
    }
}

static void pattern_fill(uint8_t *buf, uint64_t sector, uint32_t nsec, uint64_t salt)
{
    uint32_t i;

    for (i = 0; i < nsec; i++)
        pattern_sector((uint64_t *)(buf + (uint64_t)i * SECTOR), sector + i, salt);
}

static uint64_t verified_sectors, mismatched_sectors;
static int mismatch_reported;

/* Compare nsec sectors with the pattern (salt) or with zeros (salt ~0). */
static void verify(const uint8_t *buf, uint64_t sector, uint32_t nsec, uint64_t salt)
{
    uint64_t want[SECTOR / 8];
    uint32_t i, w;

    for (i = 0; i < nsec; i++) {
        const uint64_t *got = (const uint64_t *)(buf + (uint64_t)i * SECTOR);

        if (salt == ~0ULL)
            memset(want, 0, sizeof(want));
        else
            pattern_sector(want, sector + i, salt);
        for (w = 0; w < SECTOR / 8; w++)
            if (got[w] != want[w])
                break;
        verified_sectors++;
        if (w == SECTOR / 8)
            continue;
        mismatched_sectors++;
        if (!mismatch_reported) {
            mismatch_reported = 1;
            line_begin("blk");
            kv_dec("mismatch_sector", sector + i);
            kv_dec("word", w);
            put_str(" expected=");
            put_hex16(want[w]);
            put_str(" got=");
            put_hex16(got[w]);
            line_end();
        }
    }
}

/* splitmix64 of (seed, i): reproducible per-request randomness. */
static uint64_t mix(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ULL;

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------ */
/* Output.                                                              */

static void kv_status(const char *key, int st)
{
    switch (st) {
    case BLK_S_OK:          kv_str(key, "OK"); break;
    case BLK_S_IOERR:       kv_str(key, "IOERR"); break;
    case BLK_S_UNSUPP:      kv_str(key, "UNSUPP"); break;
    case BLK_S_UNWRITTEN:   kv_str(key, "unwritten"); break;
    case BLK_R_TIMEOUT:     kv_str(key, "timeout"); break;
    case BLK_R_PROTOCOL:    kv_str(key, "bad_used"); break;
    case BLK_R_NO_ROOM:     kv_str(key, "no_room"); break;
    default:                kv_hex(key, (uint64_t)st); break;
    }
}

/* ------------------------------------------------------------------ */
/* Device.                                                              */

static const char *blk_start(struct blk *b, uint64_t want, int msix)
{
    struct virtio *v = &b->v;
    const char *err = virtio_start(v, want | BLK_FEATURES, msix, 256);
    uint64_t f = v->features;

    if (err)
        return err;
    if (!v->devcfg || v->devcfg_len < 8)
        return "no usable virtio-blk device configuration";
    b->capacity = vcfg64(v, BLK_CFG_CAPACITY);
    b->ro = !!(f & BLK_F_RO);
    b->blk_size = SECTOR;
    if ((f & BLK_F_BLK_SIZE) && v->devcfg_len >= 24) {
        uint32_t bs = vcfg32(v, BLK_CFG_BLK_SIZE);

        if (bs >= SECTOR && bs <= 65536 && !(bs & (bs - 1)))
            b->blk_size = bs;
    }
    b->align = b->blk_size / SECTOR;
    b->size_max = (f & BLK_F_SIZE_MAX) ? vcfg32(v, BLK_CFG_SIZE_MAX) : 0;
    b->seg_max = (f & BLK_F_SEG_MAX) ? vcfg32(v, BLK_CFG_SEG_MAX) : 0;
    b->seg_bytes = b->size_max >= SECTOR ? b->size_max & ~(SECTOR - 1) : 1u << 20;
    b->max_segs = b->seg_max ? b->seg_max : MAX_DATA_SEGS;
    if (b->max_segs > MAX_DATA_SEGS)
        b->max_segs = MAX_DATA_SEGS;
    if (!v->vq[0].indirect && b->max_segs + 2 > v->vq[0].size)
        b->max_segs = v->vq[0].size > 2 ? v->vq[0].size - 2u : 1;
    b->max_discard_sectors = b->max_discard_seg = b->discard_align = 0;
    b->max_wz_sectors = b->max_wz_seg = 0;
    if ((f & BLK_F_DISCARD) && v->devcfg_len >= 48) {
        b->max_discard_sectors = vcfg32(v, BLK_CFG_MAX_DISCARD_SECTORS);
        b->max_discard_seg = vcfg32(v, BLK_CFG_MAX_DISCARD_SEG);
        b->discard_align = vcfg32(v, BLK_CFG_DISCARD_ALIGN);
    }
    if ((f & BLK_F_WRITE_ZEROES) && v->devcfg_len >= 56) {
        b->max_wz_sectors = vcfg32(v, BLK_CFG_MAX_WZ_SECTORS);
        b->max_wz_seg = vcfg32(v, BLK_CFG_MAX_WZ_SEG);
    }
    b->tmo = us_tsc(VQ_TIMEOUT_US);
    b->nslots = 0;
    return NULL;
}

/* Largest data transfer one request can carry. */
static uint64_t blk_max_request(const struct blk *b)
{
    return (uint64_t)b->seg_bytes * b->max_segs;
}

static void blk_slots(struct blk *b, unsigned n, uint32_t cap)
{
    unsigned i;

    if (n > MAX_SLOTS)
        n = MAX_SLOTS;
    for (i = 0; i < n; i++) {
        struct blk_slot *s = &b->slots[i];

        memset(s, 0, sizeof(*s));
        s->rec = dma_alloc(32, 32);
        s->buf = dma_alloc(cap, 4096);
        s->cap = cap;
    }
    b->nslots = n;
}

static int blk_submit(struct blk *b, struct blk_slot *s)
{
    struct vbuf vb[VQ_INDIRECT_MAX];
    unsigned n = 0;
    uint32_t off;
    int write = s->type == BLK_T_IN || s->type == BLK_T_GET_ID;

    *(volatile uint32_t *)(s->rec + 0) = s->type;
    *(volatile uint32_t *)(s->rec + 4) = 0;
    *(volatile uint64_t *)(s->rec + 8) = s->sector;
    s->rec[16] = BLK_S_UNWRITTEN;
    vb[n++] = (struct vbuf){ (uint64_t)s->rec, 16, 0 };
    for (off = 0; off < s->len; off += b->seg_bytes) {
        if (n > MAX_DATA_SEGS)
            return BLK_R_NO_ROOM;
        vb[n++] = (struct vbuf){ (uint64_t)(s->buf + off),
                                 s->len - off < b->seg_bytes ? s->len - off : b->seg_bytes, (uint32_t)write };
    }
    vb[n++] = (struct vbuf){ (uint64_t)(s->rec + 16), 1, 1 };
    return vq_add(&b->v.vq[0], vb, n, (uint32_t)(s - b->slots)) < 0 ? BLK_R_NO_ROOM : 0;
}

static int slot_status(const struct blk_slot *s)
{
    return *(volatile uint8_t *)(s->rec + 16);
}

/*
 * Run nreq requests, at most depth in flight: gen() describes request i
 * in a free slot (type, sector, len, data), done() gets each completed
 * slot.  0, or BLK_R_TIMEOUT / BLK_R_PROTOCOL / BLK_R_NO_ROOM.
 */
static int blk_pipeline(struct blk *b, uint64_t nreq, unsigned depth,
                        blk_gen_fn gen, blk_done_fn done, void *ctx)
{
    struct virtq *q = &b->v.vq[0];
    uint64_t next = 0, finished = 0;
    unsigned inflight = 0, i;

    if (depth > b->nslots)
        depth = b->nslots;
    if (depth == 0)
        return BLK_R_NO_ROOM;
    while (finished < nreq) {
        uint32_t tok, len;
        int r;

        for (i = 0; i < depth && next < nreq; i++) {
            struct blk_slot *s = &b->slots[i];

            if (s->busy)
                continue;
            gen(b, s, next, ctx);
            if (blk_submit(b, s) < 0) {
                if (inflight == 0)
                    return BLK_R_NO_ROOM;
                break;
            }
            s->busy = 1;
            s->tag = next++;
            inflight++;
        }
        vq_kick(q);
        if (!vq_wait(q, b->tmo))
            return BLK_R_TIMEOUT;
        while ((r = vq_get(q, &tok, &len)) != 0) {
            struct blk_slot *s;

            if (r < 0 || tok >= b->nslots || !b->slots[tok].busy)
                return BLK_R_PROTOCOL;
            s = &b->slots[tok];
            s->busy = 0;
            s->used_len = len;
            inflight--;
            finished++;
            b->requests++;
            done(b, s, ctx);
        }
    }
    return 0;
}

/* One request in slot 0; returns its status or a BLK_R_* error. */
static int blk_sync(struct blk *b, uint32_t type, uint64_t sector, uint32_t len)
{
    struct blk_slot *s = &b->slots[0];
    struct virtq *q = &b->v.vq[0];
    uint32_t tok, ulen;
    int r;

    s->type = type;
    s->sector = sector;
    s->len = len;
    if (blk_submit(b, s) < 0)
        return BLK_R_NO_ROOM;
    vq_kick(q);
    if (!vq_wait(q, b->tmo))
        return BLK_R_TIMEOUT;
    r = vq_get(q, &tok, &ulen);
    if (r <= 0 || tok != 0)
        return BLK_R_PROTOCOL;
    s->used_len = ulen;
    b->requests++;
    return slot_status(s);
}

static struct blk *blk_attach(const struct options *o)
{
    static struct blk b;
    const char *err = virtio_init(o, 1);

    if (err)
        fail(err, "", 0);
    if ((err = virtio_find(&b.v, VIRTIO_ID_BLK)) != NULL)
        fail(err, "", 0);
    return &b;
}

static void print_blk_line(struct blk *b)
{
    line_begin("blk");
    kv_dec("capacity", b->capacity);
    kv_dec("ro", (uint64_t)b->ro);
    kv_hex("features", b->v.dev_features);
    kv_hex("negotiated", b->v.features);
    kv_dec("blk_size", b->blk_size);
    if (b->size_max)
        kv_dec("size_max", b->size_max);
    if (b->seg_max)
        kv_dec("seg_max", b->seg_max);
    kv_dec("max_request", blk_max_request(b));
    if (b->v.features & BLK_F_DISCARD) {
        kv_dec("max_discard_sectors", b->max_discard_sectors);
        kv_dec("discard_align", b->discard_align);
    }
    if (b->v.features & BLK_F_WRITE_ZEROES)
        kv_dec("max_write_zeroes_sectors", b->max_wz_sectors);
    line_end();
}

/* ------------------------------------------------------------------ */
/* blk workload.                                                        */

struct rw_ctx {
    uint32_t type;
    uint64_t first, sectors;            /* sequential: the range */
    uint32_t chunk;                     /* sequential: sectors per request */
    uint64_t salt;
    int verify;                         /* check reads against the pattern */
    uint64_t errors;                    /* requests not OK */
    int first_error;
};

/* Sequential requests over [first, first + sectors). */
static void seq_gen(struct blk *b, struct blk_slot *s, uint64_t i, void *vctx)
{
    struct rw_ctx *c = vctx;
    uint64_t start = c->first + i * c->chunk;
    uint64_t n = c->first + c->sectors - start;

    (void)b;
    if (n > c->chunk)
        n = c->chunk;
    s->type = c->type;
    s->sector = start;
    s->len = (uint32_t)(n * SECTOR);
    if (c->type == BLK_T_OUT && c->salt)
        pattern_fill(s->buf, start, (uint32_t)n, c->salt);
}

/*
 * Random requests in [first, first + sectors): 1 to 'chunk' sectors,
 * block aligned, placement from mix(salt, i), so the same i always gives
 * the same request.
 */
static void rand_gen(struct blk *b, struct blk_slot *s, uint64_t i, void *vctx)
{
    struct rw_ctx *c = vctx;
    uint64_t r = mix(c->salt * 0x1000193 + 7, i);
    uint64_t blocks = c->chunk / b->align, n, slots_in_range, start;

    n = (1 + (r & 0xffff) % blocks) * b->align;
    if (n > c->sectors)
        n = c->sectors;
    slots_in_range = (c->sectors - n) / b->align + 1;
    start = c->first + ((r >> 16) % slots_in_range) * b->align;
    s->type = c->type;
    s->sector = start;
    s->len = (uint32_t)(n * SECTOR);
    if (c->type == BLK_T_OUT)
        pattern_fill(s->buf, start, (uint32_t)n, c->salt);
}

static void rw_done(struct blk *b, struct blk_slot *s, void *vctx)
{
    struct rw_ctx *c = vctx;
    int st = slot_status(s);

    (void)b;
    if (st != BLK_S_OK) {
        if (!c->errors++)
            c->first_error = st;
        return;
    }
    if (c->type == BLK_T_IN && c->verify)
        verify(s->buf, s->sector, s->len / SECTOR, c->salt);
}

/* The end of a phase's line: the pipeline's error and the failed requests; 1 if all went well. */
static int end_outcome(int r, const struct rw_ctx *c)
{
    if (r)
        kv_status("error", r);
    if (c->errors) {
        kv_dec("failed", c->errors);
        kv_status("status", c->first_error);
    }
    line_end();
    return r == 0 && c->errors == 0;
}

static int run_phase(struct blk *b, const char *name, struct rw_ctx *c, uint64_t nreq,
                     unsigned depth, blk_gen_fn gen)
{
    uint64_t t0 = rdtsc(), t1;
    int r = blk_pipeline(b, nreq, depth, gen, rw_done, c);

    t1 = rdtsc();
    line_begin("blk");
    kv_str("phase", name);
    kv_dec("requests", nreq);
    kv_dec("cycles", t1 - t0);
    return end_outcome(r, c);
}

/* 16-byte discard / write-zeroes segment in the slot's buffer. */
static void range_segment(struct blk_slot *s, uint64_t sector, uint32_t nsec)
{
    memset(s->buf, 0, 16);
    *(uint64_t *)(s->buf + 0) = sector;
    *(uint32_t *)(s->buf + 8) = nsec;
    *(uint32_t *)(s->buf + 12) = 0;     /* no unmap */
}

static uint32_t align_down32(uint32_t v, uint32_t a)
{
    return a ? v / a * a : v;
}

NORETURN void test_blk(const struct options *o)
{
    struct blk *b = blk_attach(o);
    uint64_t n = o->have_n ? o->n : 64;
    unsigned qd = o->have_qd ? (unsigned)o->qd : 32;
    uint64_t seq_sectors, chunk;
    const char *err;
    int ok = 1, st;
    char serial[BLK_ID_BYTES + 1];
    unsigned i;

    if ((err = blk_start(b, virtio_want(o), o->msix)) != NULL)
        fail(err, "", 0);
    virtio_print(&b->v, "blk");
    print_blk_line(b);
    blk_slots(b, qd, 65536);
    chunk = blk_max_request(b) < 65536 ? blk_max_request(b) / SECTOR : 128;
    chunk = chunk / b->align * b->align;
    if (b->capacity < 256 || chunk == 0)
        fail("disk too small (needs 256 sectors) or requests too small", "", 0);

    /* GET_ID */
    memset(b->slots[0].buf, 0, BLK_ID_BYTES);
    st = blk_sync(b, BLK_T_GET_ID, 0, BLK_ID_BYTES);
    for (i = 0; i < BLK_ID_BYTES && b->slots[0].buf[i]; i++)
        serial[i] = (char)b->slots[0].buf[i];
    serial[i] = 0;
    line_begin("blk");
    kv_status("get_id", st);
    put_str(" serial=\"");
    put_escaped(serial, i);
    put_str("\"");
    line_end();
    if (st != BLK_S_OK && st != BLK_S_UNSUPP)
        ok = 0;

    seq_sectors = b->capacity / 2 < 2048 ? b->capacity / 2 : 2048;
    seq_sectors = seq_sectors / b->align * b->align;

    if (b->ro) {
        struct rw_ctx rc = { .type = BLK_T_IN, .first = 0, .sectors = seq_sectors,
                             .chunk = (uint32_t)chunk };

        pattern_fill(b->slots[0].buf, 0, b->align, 9);
        st = blk_sync(b, BLK_T_OUT, 0, b->blk_size);
        line_begin("blk");
        kv_status("ro_write", st);
        line_end();
        if (st != BLK_S_IOERR)
            ok = 0;
        if (!run_phase(b, "seq_read", &rc, (seq_sectors + chunk - 1) / chunk, qd, seq_gen))
            ok = 0;
    } else {
        struct rw_ctx wc = { .type = BLK_T_OUT, .first = 0, .sectors = seq_sectors,
                             .chunk = (uint32_t)chunk, .salt = 1 };
        struct rw_ctx rc = wc;
        uint64_t nseq = (seq_sectors + chunk - 1) / chunk;
        uint64_t rnd_first = seq_sectors, rnd_sectors = (b->capacity - seq_sectors) / b->align * b->align;

        rc.type = BLK_T_IN;
        rc.verify = 1;
        line_begin("blk");
        kv_str("pattern", "seq");
        kv_dec("first", 0);
        kv_dec("sectors", seq_sectors);
        kv_dec("salt", 1);
        line_end();
        ok &= run_phase(b, "seq_write", &wc, nseq, qd, seq_gen);
        ok &= run_phase(b, "seq_read", &rc, nseq, qd, seq_gen);

        /* Random placement after the sequential range, salt 2. */
        wc = (struct rw_ctx){ .type = BLK_T_OUT, .first = rnd_first, .sectors = rnd_sectors,
                              .chunk = (uint32_t)chunk, .salt = 2 };
        rc = wc;
        rc.type = BLK_T_IN;
        rc.verify = 1;
        if (n && rnd_sectors >= b->align) {
            ok &= run_phase(b, "rand_write", &wc, n, qd, rand_gen);
            ok &= run_phase(b, "rand_read", &rc, n, qd, rand_gen);
        }

        /* FLUSH */
        if (b->v.features & BLK_F_FLUSH) {
            st = blk_sync(b, BLK_T_FLUSH, 0, 0);
            line_begin("blk");
            kv_status("flush", st);
            line_end();
            if (st != BLK_S_OK)
                ok = 0;
        }

        /* WRITE_ZEROES over a block range we first fill with salt 3. */
        if ((b->v.features & BLK_F_WRITE_ZEROES) && b->max_wz_sectors >= b->align &&
            rnd_sectors >= 128) {
            uint32_t z = align_down32(b->max_wz_sectors < 64 ? b->max_wz_sectors : 64, b->align);
            int st_fill, st_zero, st_read;
            uint64_t before = mismatched_sectors;

            pattern_fill(b->slots[0].buf, rnd_first, z, 3);
            st_fill = blk_sync(b, BLK_T_OUT, rnd_first, z * SECTOR);
            range_segment(&b->slots[0], rnd_first, z);
            st_zero = blk_sync(b, BLK_T_WRITE_ZEROES, rnd_first, 16);
            memset(b->slots[0].buf, 0xa5, z * SECTOR);
            st_read = blk_sync(b, BLK_T_IN, rnd_first, z * SECTOR);
            if (st_read == BLK_S_OK)
                verify(b->slots[0].buf, rnd_first, z, ~0ULL);
            line_begin("blk");
            kv_status("write_zeroes", st_zero);
            kv_dec("sector", rnd_first);
            kv_dec("sectors", z);
            kv_dec("zeroed", st_read == BLK_S_OK && mismatched_sectors == before);
            line_end();
            if (st_fill != BLK_S_OK || st_zero != BLK_S_OK || st_read != BLK_S_OK)
                ok = 0;
        }

        /* DISCARD: only the status can be checked, the contents are open. */
        if ((b->v.features & BLK_F_DISCARD) && b->max_discard_sectors >= b->align &&
            rnd_sectors >= 256) {
            uint32_t d = b->max_discard_sectors < 64 ? b->max_discard_sectors : 64;
            uint64_t first = rnd_first + 128;

            if (b->discard_align > 1) {
                first = (first + b->discard_align - 1) / b->discard_align * b->discard_align;
                d = align_down32(d, b->discard_align);
            }
            d = align_down32(d, b->align);
            if (d) {
                range_segment(&b->slots[0], first, d);
                st = blk_sync(b, BLK_T_DISCARD, first, 16);
                line_begin("blk");
                kv_status("discard", st);
                kv_dec("sector", first);
                kv_dec("sectors", d);
                line_end();
                if (st != BLK_S_OK)
                    ok = 0;
            }
        }
    }

    /* A request beyond the end must fail with IOERR ... */
    st = blk_sync(b, BLK_T_IN, b->capacity, b->blk_size);
    line_begin("blk");
    kv_status("beyond_capacity", st);
    kv_dec("sector", b->capacity);
    line_end();
    if (st != BLK_S_IOERR)
        ok = 0;
    /* ... and the device must go on working. */
    st = blk_sync(b, BLK_T_IN, 0, (uint32_t)(chunk * SECTOR));
    if (st == BLK_S_OK && !b->ro)
        verify(b->slots[0].buf, 0, (uint32_t)chunk, 1);
    line_begin("blk");
    kv_status("after_error", st);
    line_end();
    if (st != BLK_S_OK)
        ok = 0;

    line_begin("blk");
    kv_dec("verified", verified_sectors);
    kv_dec("mismatches", mismatched_sectors);
    kv_dec("requests", b->requests);
    kv_dec("notifies", b->v.vq[0].notifies);
    if (b->v.msix)
        kv_dec("irqs", virtio_irqs(&b->v));
    line_end();
    if (mismatched_sectors)
        ok = 0;
    if (!ok)
        fail("virtio-blk check failed", "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* blkbench workload.                                                   */

#define BENCH_SEQ_REQUEST   (1u << 20)
#define BENCH_SEQ_DEPTH     8
#define BENCH_RAND_BYTES    4096

struct bench_phase {
    const char *name;
    uint64_t bytes, requests, cycles, notifies, irqs;
};

static int bench_run(struct blk *b, struct bench_phase *p, struct rw_ctx *c, uint64_t nreq,
                     unsigned depth, blk_gen_fn gen, uint64_t bytes)
{
    uint64_t n0 = b->v.vq[0].notifies, i0 = virtio_irqs(&b->v), t0, t1;
    int r;

    t0 = rdtsc();
    r = blk_pipeline(b, nreq, depth, gen, rw_done, c);
    t1 = rdtsc();
    p->bytes = bytes;
    p->requests = nreq;
    p->cycles = t1 - t0;
    p->notifies = b->v.vq[0].notifies - n0;
    p->irqs = virtio_irqs(&b->v) - i0;
    line_begin("blkbench");
    kv_str("phase", p->name);
    kv_dec("bytes", bytes);
    kv_dec("requests", nreq);
    kv_dec("depth", depth);
    kv_dec("cycles", p->cycles);
    kv_dec("notifies", p->notifies);
    if (b->v.msix)
        kv_dec("irqs", p->irqs);
    return end_outcome(r, c);
}

/* Random block-aligned 4 KiB requests in [0, sectors). */
static void bench_rand_gen(struct blk *b, struct blk_slot *s, uint64_t i, void *vctx)
{
    struct rw_ctx *c = vctx;
    uint64_t per = c->chunk, places = c->sectors / per;

    (void)b;
    s->type = c->type;
    s->sector = (mix(c->salt, i) % places) * per;
    s->len = (uint32_t)(per * SECTOR);
}

/*
 * Crash consistency: write the salt-2 pattern to sectors [0, n), FLUSH, say
 * so, then keep running (counting) until the host kills the VMM.  The host
 * then finds every flushed sector in the image file.
 */
NORETURN void test_blkflush(const struct options *o)
{
    struct blk *b = blk_attach(o);
    uint64_t n = o->have_n ? o->n : 256, done;
    volatile uint64_t *counter = (volatile uint64_t *)COUNTER_ADDR;
    const char *err;
    int st = BLK_S_OK;

    if ((err = blk_start(b, virtio_want(o), o->msix)) != NULL)
        fail(err, "", 0);
    blk_slots(b, 1, 65536);
    if (n > b->capacity)
        n = b->capacity;
    for (done = 0; done < n && st == BLK_S_OK; done += 128) {
        uint32_t nsec = n - done < 128 ? (uint32_t)(n - done) : 128;

        pattern_fill(b->slots[0].buf, done, nsec, 2);
        st = blk_sync(b, BLK_T_OUT, done, nsec * SECTOR);
    }
    if (st == BLK_S_OK)
        st = blk_sync(b, BLK_T_FLUSH, 0, 0);
    line_begin("blkflush");
    kv_dec("sectors", n);
    kv_dec("salt", 2);
    kv_status("flush", st);
    line_end();
    if (st != BLK_S_OK)
        fail("blkflush: a write or the flush failed", "", 0);
    *counter = 0;
    for (;;)
        (*counter)++;
}

NORETURN void test_blkbench(const struct options *o)
{
    struct blk *b;
    uint64_t mb = o->have_mb ? o->mb : 64, n = o->have_n ? o->n : 4096;
    unsigned qd = o->have_qd ? (unsigned)o->qd : 32, seq_depth, i;
    uint64_t hz, bytes, req, mark, nseq, sectors;
    const char *src, *err;
    struct bench_phase ph[4] = { { .name = "seq_write" }, { .name = "seq_read" },
                                 { .name = "rand_write" }, { .name = "rand_read" } };
    struct rw_ctx c;
    int ok = 1;

    b = blk_attach(o);
    hz = tsc_calibrate(&src);           /* before the device can interrupt */
    if ((err = blk_start(b, virtio_want(o), o->msix)) != NULL)
        fail(err, "", 0);
    virtio_print(&b->v, "blk");
    print_blk_line(b);
    if (b->ro)
        fail("blkbench needs a writable disk", "", 0);

    req = blk_max_request(b) < BENCH_SEQ_REQUEST ? blk_max_request(b) : BENCH_SEQ_REQUEST;
    req = req / b->blk_size * b->blk_size;
    bytes = mb << 20;
    if (bytes > b->capacity * SECTOR)
        bytes = b->capacity * SECTOR;
    bytes = req ? bytes / req * req : 0;
    if (bytes == 0 || bytes < BENCH_RAND_BYTES)
        fail("disk too small for blkbench", "", 0);
    sectors = bytes / SECTOR;

    /* Sequential: requests of up to 1 MiB, up to 8 in flight. */
    seq_depth = qd < BENCH_SEQ_DEPTH ? qd : BENCH_SEQ_DEPTH;
    mark = dma_mark();
    blk_slots(b, seq_depth, (uint32_t)req);
    for (i = 0; i < seq_depth; i++)
        pattern_fill(b->slots[i].buf, i, (uint32_t)(req / SECTOR), 5);
    nseq = bytes / req;
    c = (struct rw_ctx){ .type = BLK_T_OUT, .first = 0, .sectors = sectors,
                         .chunk = (uint32_t)(req / SECTOR) };
    ok &= bench_run(b, &ph[0], &c, nseq, seq_depth, seq_gen, bytes);
    c = (struct rw_ctx){ .type = BLK_T_IN, .first = 0, .sectors = sectors,
                         .chunk = (uint32_t)(req / SECTOR) };
    ok &= bench_run(b, &ph[1], &c, nseq, seq_depth, seq_gen, bytes);
    dma_release(mark);

    /* Random: 4 KiB (or one block, if larger), qd in flight. */
    {
        uint32_t rb = b->blk_size > BENCH_RAND_BYTES ? b->blk_size : BENCH_RAND_BYTES;

        blk_slots(b, qd, rb);
        c = (struct rw_ctx){ .type = BLK_T_OUT, .sectors = sectors, .chunk = rb / SECTOR, .salt = 11 };
        ok &= bench_run(b, &ph[2], &c, n, qd, bench_rand_gen, n * rb);
        c = (struct rw_ctx){ .type = BLK_T_IN, .sectors = sectors, .chunk = rb / SECTOR, .salt = 12 };
        ok &= bench_run(b, &ph[3], &c, n, qd, bench_rand_gen, n * rb);
    }

    line_begin("blkbench");
    kv_dec("seq_write_mbps", muldiv64(ph[0].bytes, hz, ph[0].cycles) / 1000000);
    kv_dec("seq_read_mbps", muldiv64(ph[1].bytes, hz, ph[1].cycles) / 1000000);
    kv_dec("rand_write_iops", muldiv64(ph[2].requests, hz, ph[2].cycles));
    kv_dec("rand_read_iops", muldiv64(ph[3].requests, hz, ph[3].cycles));
    kv_dec("bytes", bytes);
    kv_dec("request", req);
    kv_dec("seq_depth", seq_depth);
    kv_dec("qd", qd);
    kv_dec("n", n);
    kv_dec("tsc_hz", hz);
    kv_str("tsc_source", src);
    kv_str("irq", virtio_irq_name(&b->v));
    line_end();
    if (!ok)
        fail("a blkbench request failed", "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* hostile workload.                                                    */

enum { H_LOOP, H_BAD_ADDR, H_ZERO_LEN, H_LONG_CHAIN, H_INDIRECT_LEN, H_NESTED, H_CASES };

static const char *const hostile_names[H_CASES] = {
    "loop", "bad_addr", "zero_len", "long_chain", "indirect_len", "nested_indirect",
};

#define HOSTILE_WAIT_US     2000000
#define HOSTILE_POLL_US     200
#define HOSTILE_AFTER_USED_US 200000
#define HOSTILE_BAD_ADDR    0x700000000ULL

static void set_desc(volatile struct vq_desc *d, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

/* Put one malformed request on the freshly started queue; 0 if this
 * case cannot be built (no indirect descriptors). */
static int hostile_build(struct blk *b, unsigned kind, uint8_t **status_byte)
{
    struct virtq *q = &b->v.vq[0];
    uint8_t *rec = dma_alloc(32, 32), *data = dma_alloc(4096, 4096);
    uint64_t hdr = (uint64_t)rec, status = (uint64_t)(rec + 16), buf = (uint64_t)data;
    volatile struct vq_desc *t, *t2;
    unsigned m, k;

    *(uint32_t *)rec = BLK_T_IN;
    rec[16] = BLK_S_UNWRITTEN;
    *status_byte = rec + 16;
    switch (kind) {
    case H_LOOP:                        /* 0 -> 1 -> 0 -> ... */
        set_desc(&q->desc[0], hdr, 16, VD_NEXT, 1);
        set_desc(&q->desc[1], buf, SECTOR, VD_WRITE | VD_NEXT, 0);
        break;
    case H_BAD_ADDR:                    /* data buffer far outside guest RAM */
        set_desc(&q->desc[0], hdr, 16, VD_NEXT, 1);
        set_desc(&q->desc[1], HOSTILE_BAD_ADDR, 4096, VD_WRITE | VD_NEXT, 2);
        set_desc(&q->desc[2], status, 1, VD_WRITE, 0);
        break;
    case H_ZERO_LEN:                    /* a data descriptor of length 0 */
        set_desc(&q->desc[0], hdr, 16, VD_NEXT, 1);
        set_desc(&q->desc[1], buf, 0, VD_WRITE | VD_NEXT, 2);
        set_desc(&q->desc[2], status, 1, VD_WRITE, 0);
        break;
    case H_LONG_CHAIN:                  /* indirect table of 2 x queue size entries */
        if (!q->indirect)
            return 0;
        m = 2u * q->size;
        t = dma_alloc(16ULL * m, 16);
        set_desc(&t[0], hdr, 16, VD_NEXT, 1);
        for (k = 1; k + 1 < m; k++)
            set_desc(&t[k], buf + SECTOR * ((k - 1) % 8), SECTOR, VD_WRITE | VD_NEXT, (uint16_t)(k + 1));
        set_desc(&t[m - 1], status, 1, VD_WRITE, 0);
        set_desc(&q->desc[0], (uint64_t)t, 16 * m, VD_INDIRECT, 0);
        break;
    case H_INDIRECT_LEN:                /* table length not a multiple of 16 */
        if (!q->indirect)
            return 0;
        t = dma_alloc(64, 16);
        set_desc(&t[0], hdr, 16, VD_NEXT, 1);
        set_desc(&t[1], buf, SECTOR, VD_WRITE | VD_NEXT, 2);
        set_desc(&t[2], status, 1, VD_WRITE, 0);
        set_desc(&q->desc[0], (uint64_t)t, 3 * 16 + 8, VD_INDIRECT, 0);
        break;
    case H_NESTED:                      /* an indirect descriptor inside a table */
        if (!q->indirect)
            return 0;
        /* Apart from the nesting it would be a good read: header, then
         * (through the inner table) data and status. */
        t = dma_alloc(32, 16);
        t2 = dma_alloc(32, 16);
        set_desc(&t2[0], buf, SECTOR, VD_WRITE | VD_NEXT, 1);
        set_desc(&t2[1], status, 1, VD_WRITE, 0);
        set_desc(&t[0], hdr, 16, VD_NEXT, 1);
        set_desc(&t[1], (uint64_t)t2, 32, VD_INDIRECT | VD_WRITE, 0);
        set_desc(&q->desc[0], (uint64_t)t, 32, VD_INDIRECT, 0);
        break;
    }
    q->avail[2] = 0;
    barrier();
    q->avail[1] = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    vq_notify(q);
    return 1;
}

/* A good write and read-back of 4 KiB after a reset. */
static int hostile_recover(struct blk *b, const struct options *o, int *st_out)
{
    const char *err = blk_start(b, virtio_want(o) | VF_INDIRECT_DESC, o->msix);
    uint64_t before = mismatched_sectors, sector;
    int st;

    if (err) {
        *st_out = BLK_R_PROTOCOL;
        return 0;
    }
    /* The last 4 KiB of the disk, away from what the blk workload leaves. */
    sector = b->capacity >= 16 ? (b->capacity - 8) / b->align * b->align : 0;
    blk_slots(b, 1, 4096);
    pattern_fill(b->slots[0].buf, sector, 8, 4);
    st = blk_sync(b, BLK_T_OUT, sector, 4096);
    if (st == BLK_S_OK) {
        memset(b->slots[0].buf, 0, 4096);
        st = blk_sync(b, BLK_T_IN, sector, 4096);
        if (st == BLK_S_OK)
            verify(b->slots[0].buf, sector, 8, 4);
    }
    *st_out = st;
    return st == BLK_S_OK && mismatched_sectors == before;
}

NORETURN void test_hostile(const struct options *o)
{
    struct blk *b = blk_attach(o);
    unsigned kind, reset_cases = 0, recovered_cases = 0;
    const char *err;

    for (kind = 0; kind < H_CASES; kind++) {
        uint64_t mark = dma_mark(), t0, wait = us_tsc(HOSTILE_WAIT_US), cfg_irqs;
        uint8_t status = 0, *req_status = NULL;
        int needs_reset = 0, completed = 0, answered = 0, built, recovered, st, req_st = BLK_S_UNWRITTEN;
        struct virtq *q;

        if ((err = blk_start(b, virtio_want(o) | VF_INDIRECT_DESC, o->msix)) != NULL)
            fail(err, "", 0);
        if (kind == 0) {
            virtio_print(&b->v, "blk");
            print_blk_line(b);
        }
        q = &b->v.vq[0];
        cfg_irqs = irq_count[0];
        built = hostile_build(b, kind, &req_status);
        t0 = rdtsc();
        while (built && rdtsc() - t0 < wait) {
            status = virtio_status(&b->v);
            if (status & VS_NEEDS_RESET) {
                needs_reset = 1;
                break;
            }
            /* Once the device has answered, give it only a little longer. */
            if (!answered && *(volatile uint16_t *)(q->used + 2) != 0) {
                answered = 1;
                if (wait > rdtsc() - t0 + us_tsc(HOSTILE_AFTER_USED_US))
                    wait = rdtsc() - t0 + us_tsc(HOSTILE_AFTER_USED_US);
            }
            tsc_delay_us(HOSTILE_POLL_US);
        }
        completed = *(volatile uint16_t *)(q->used + 2) != 0;
        cfg_irqs = irq_count[0] - cfg_irqs;
        if (completed)
            req_st = *(volatile uint8_t *)req_status;

        recovered = hostile_recover(b, o, &st);
        reset_cases += (unsigned)needs_reset;
        recovered_cases += (unsigned)recovered;

        line_begin("hostile");
        kv_str("case", hostile_names[kind]);
        if (!built)
            kv_str("skipped", "no_indirect_desc");
        kv_dec("needs_reset", (uint64_t)needs_reset);
        kv_hex("device_status", status);
        kv_dec("completed", (uint64_t)completed);
        if (completed)
            kv_status("blk_status", req_st);
        if (o->msix)
            kv_dec("config_irqs", cfg_irqs);
        kv_dec("recovered", (uint64_t)recovered);
        kv_status("check", st);
        line_end();
        dma_release(mark);
    }
    line_begin("hostile");
    kv_dec("cases", H_CASES);
    kv_dec("needs_reset", reset_cases);
    kv_dec("recovered", recovered_cases);
    line_end();
    if (reset_cases != H_CASES || recovered_cases != H_CASES)
        fail("not every malformed request ended in DEVICE_NEEDS_RESET and recovery", "", 0);
    pass();
}

/*
 * blksum: read the first probe.n sectors (default 64) of the first
 * virtio-blk disk and print their FNV-1a hash: "probe: blksum sectors=N
 * fnv=0x...".  The host compares it with the image it gave (a copy-on-write
 * overlay shows its own writes and the base everywhere else).
 */
NORETURN void test_blksum(const struct options *o)
{
    struct blk *b = blk_attach(o);
    uint64_t n = o->have_n ? o->n : 64, done;
    uint32_t h = 2166136261u;
    const char *err;
    int st = BLK_S_OK;

    if ((err = blk_start(b, virtio_want(o), o->msix)) != NULL)
        fail(err, "", 0);
    blk_slots(b, 1, 65536);
    if (n > b->capacity)
        n = b->capacity;
    for (done = 0; done < n && st == BLK_S_OK; done += 128) {
        uint32_t nsec = n - done < 128 ? (uint32_t)(n - done) : 128, i;

        st = blk_sync(b, BLK_T_IN, done, nsec * SECTOR);
        for (i = 0; st == BLK_S_OK && i < nsec * SECTOR; i++)
            h = (h ^ b->slots[0].buf[i]) * 16777619u;
    }
    line_begin("blksum");
    kv_dec("sectors", n);
    kv_status("read", st);
    kv_hex("fnv", h);
    line_end();
    print_result(st == BLK_S_OK);
    probe_exit(st == BLK_S_OK ? EXIT_PASS : EXIT_FAIL);
}
