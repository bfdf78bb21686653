/*
 * fs: a minimal FUSE client over virtio-fs (virtio 1.2, 5.11; <linux/fuse.h>).
 *
 *   probe.test=fs [probe.path=NAME] [probe.out=NAME probe.text=TEXT]
 *                 [probe.secs=N] [probe.n=ROUNDS] [probe.irq=msix]
 *
 * FUSE_INIT, then for probe.path: LOOKUP (in the root), GETATTR, OPEN,
 * READ (up to 64 KiB), RELEASE, printing the file's length, its FNV-1a
 * hash and (escaped) its first 256 bytes; for probe.out: LOOKUP, then OPEN
 * (truncating) an existing file or CREATE a new one, WRITE probe.text,
 * RELEASE, then LOOKUP again to read the size back.
 * With probe.secs, a heartbeat follows for that many seconds: every 250 ms
 * a GETATTR of the root, printed as "probe: fs tick=K getattr=ok|timeout|
 * error|skipped status=0x..": once a request times out or the device asks
 * for a reset, no more requests are sent but the ticks go on.
 *
 * With probe.n=ROUNDS the whole session is done that many times, the
 * device reset in between ("probe: fs round=K reset=1"), as a driver that
 * starts over would.
 *
 * Requests go on the first request queue (queue 1); queue 0 (hiprio) is
 * set up and left empty.  Each request is two buffers: the in header and
 * arguments (device-readable), the out header and reply (device-writable).
 */
#include "probe.h"
#include "virtio.h"

#define VIRTIO_ID_FS        0x105a      /* 0x1040 + device type 26 */
#define FS_TAG_LEN          36

#define FUSE_LOOKUP         1
#define FUSE_GETATTR        3
#define FUSE_OPEN           14
#define FUSE_READ           15
#define FUSE_WRITE          16
#define FUSE_RELEASE        18
#define FUSE_INIT           26
#define FUSE_CREATE         35
#define FUSE_ROOT_ID        1

#define FUSE_IN_HDR         40
#define FUSE_OUT_HDR        16
#define ENTRY_OUT           128         /* fuse_entry_out: 40 + fuse_attr (88) */
#define ATTR_OUT            104         /* fuse_attr_out: 16 + fuse_attr */
#define ATTR_SIZE_OFF       8           /* fuse_attr.size */
#define READ_MAX            65536
#define REQ_MAX             (READ_MAX + 4096)

#define O_WRONLY_CREAT_TRUNC 0x241
#define O_WRONLY_TRUNC      0x201
#define ENOENT              2
#define MODE_REG_644        0100644

struct fs {
    struct virtio v;
    uint8_t *in, *out;                  /* one request at a time */
    uint64_t unique;
    uint64_t tmo;
    int down;                           /* a request timed out: send no more */
};

static void put32(uint8_t *p, uint32_t x) { memcpy(p, &x, 4); }
static void put64(uint8_t *p, uint64_t x) { memcpy(p, &x, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t x; memcpy(&x, p, 4); return x; }
static uint64_t get64(const uint8_t *p) { uint64_t x; memcpy(&x, p, 8); return x; }

/* Start a request: the in header, arguments go at fs->in + FUSE_IN_HDR. */
static uint8_t *req_begin(struct fs *f, uint32_t opcode, uint64_t nodeid)
{
    memset(f->in, 0, FUSE_IN_HDR);
    put32(f->in + 4, opcode);
    put64(f->in + 8, ++f->unique);
    put64(f->in + 16, nodeid);
    return f->in + FUSE_IN_HDR;
}

/* Send the request with arg_len bytes of arguments and room for reply_len
 * bytes of reply.  Returns the reply's length (>= 0), -errno from the file
 * system, or one of the R_* codes. */
#define R_TIMEOUT   (-1000)
#define R_PROTOCOL  (-1001)
#define R_DOWN      (-1002)
static int64_t req_send(struct fs *f, uint32_t arg_len, uint32_t reply_len, uint64_t tmo)
{
    struct virtq *q = &f->v.vq[1];
    struct vbuf b[2];
    uint32_t tok, len, out_len;
    int32_t error;

    if (f->down)
        return R_DOWN;
    put32(f->in, FUSE_IN_HDR + arg_len);
    memset(f->out, 0, FUSE_OUT_HDR);
    b[0] = (struct vbuf){ (uint64_t)f->in, FUSE_IN_HDR + arg_len, 0 };
    b[1] = (struct vbuf){ (uint64_t)f->out, FUSE_OUT_HDR + reply_len, 1 };
    if (vq_add(q, b, 2, 1) < 0)
        return R_PROTOCOL;
    vq_kick(q);
    if (!vq_wait(q, tmo)) {
        f->down = 1;
        return R_TIMEOUT;
    }
    if (vq_get(q, &tok, &len) <= 0 || tok != 1 || len < FUSE_OUT_HDR)
        return R_PROTOCOL;
    out_len = get32(f->out);
    error = (int32_t)get32(f->out + 4);
    if (get64(f->out + 8) != f->unique || out_len > len)
        return R_PROTOCOL;
    if (error)
        return error < 0 ? error : R_PROTOCOL;
    return (int64_t)out_len - FUSE_OUT_HDR;
}

static void kv_result(const char *key, int64_t r)
{
    if (r >= 0)
        kv_str(key, "ok");
    else if (r == R_TIMEOUT)
        kv_str(key, "timeout");
    else if (r == R_DOWN)
        kv_str(key, "skipped");
    else if (r == R_PROTOCOL)
        kv_str(key, "protocol");
    else {
        put_char(' ');
        put_str(key);
        put_str("=errno");
        put_dec((uint64_t)-r);
    }
}

static uint32_t fnv1a(const uint8_t *p, uint64_t n)
{
    uint32_t h = 2166136261u;

    while (n--)
        h = (h ^ *p++) * 16777619u;
    return h;
}

/* LOOKUP name in the root: 0 and *nodeid, *size; or the error. */
static int64_t fs_lookup(struct fs *f, const char *name, size_t len, uint64_t *nodeid, uint64_t *size)
{
    uint8_t *a = req_begin(f, FUSE_LOOKUP, FUSE_ROOT_ID);
    int64_t r;

    memcpy(a, name, len);
    a[len] = 0;
    r = req_send(f, (uint32_t)len + 1, ENTRY_OUT, f->tmo);
    if (r < 0)
        return r;
    if (r < ENTRY_OUT)
        return R_PROTOCOL;
    *nodeid = get64(f->out + FUSE_OUT_HDR);
    *size = get64(f->out + FUSE_OUT_HDR + 40 + ATTR_SIZE_OFF);
    return 0;
}

static int64_t fs_release(struct fs *f, uint64_t nodeid, uint64_t fh)
{
    uint8_t *a = req_begin(f, FUSE_RELEASE, nodeid);

    memset(a, 0, 24);
    put64(a, fh);
    return req_send(f, 24, 0, f->tmo);
}

static int fs_read_file(struct fs *f, const char *name, size_t len)
{
    uint64_t nodeid = 0, size = 0, attr_size = 0, fh;
    int64_t r, got = -1;
    uint8_t *a;

    line_begin("fs");
    put_str(" path=\"");
    put_escaped(name, len);
    put_str("\"");
    r = fs_lookup(f, name, len, &nodeid, &size);
    kv_result("lookup", r);
    if (r < 0)
        goto out;
    a = req_begin(f, FUSE_GETATTR, nodeid);
    memset(a, 0, 16);
    r = req_send(f, 16, ATTR_OUT, f->tmo);
    kv_result("getattr", r);
    if (r < ATTR_OUT)
        goto out;
    attr_size = get64(f->out + FUSE_OUT_HDR + 16 + ATTR_SIZE_OFF);
    a = req_begin(f, FUSE_OPEN, nodeid);
    memset(a, 0, 8);                    /* O_RDONLY */
    r = req_send(f, 8, 16, f->tmo);
    kv_result("open", r);
    if (r < 16)
        goto out;
    fh = get64(f->out + FUSE_OUT_HDR);
    a = req_begin(f, FUSE_READ, nodeid);
    memset(a, 0, 40);
    put64(a, fh);
    put64(a + 8, 0);
    put32(a + 16, READ_MAX);
    got = req_send(f, 40, READ_MAX, f->tmo);
    kv_result("read", got);
    kv_result("release", fs_release(f, nodeid, fh));
out:
    kv_dec("size", attr_size);
    if (got >= 0) {
        kv_dec("len", (uint64_t)got);
        kv_hex("fnv", fnv1a(f->out + FUSE_OUT_HDR, (uint64_t)got));
        put_str(" data=\"");
        put_escaped((const char *)f->out + FUSE_OUT_HDR, got < 256 ? (size_t)got : 256);
        put_str("\"");
    }
    line_end();
    return got >= 0 && (uint64_t)got == attr_size;
}

/* Write text to name in the root: an existing file is opened truncated
 * (LOOKUP, OPEN), a new one made with CREATE, as the Linux client does; a
 * CREATE for an existing name is left out (QEMU 7.2's virtiofsd aborts on
 * one: it opens the existing file again with O_CREAT and no mode). */
static int fs_write_file(struct fs *f, const char *name, size_t len, const char *text, size_t text_len)
{
    uint64_t nodeid = 0, fh, size = 0;
    int64_t r, wrote = -1;
    uint8_t *a;

    line_begin("fs");
    put_str(" out=\"");
    put_escaped(name, len);
    put_str("\"");
    r = fs_lookup(f, name, len, &nodeid, &size);
    if (r == 0) {
        a = req_begin(f, FUSE_OPEN, nodeid);
        memset(a, 0, 8);
        put32(a, O_WRONLY_TRUNC);
        r = req_send(f, 8, 16, f->tmo);
        kv_result("open", r);
        if (r < 16)
            goto out;
        fh = get64(f->out + FUSE_OUT_HDR);
    } else if (r == -ENOENT) {
        a = req_begin(f, FUSE_CREATE, FUSE_ROOT_ID);
        memset(a, 0, 16);
        put32(a, O_WRONLY_CREAT_TRUNC);
        put32(a + 4, MODE_REG_644);
        memcpy(a + 16, name, len);
        a[16 + len] = 0;
        r = req_send(f, 16 + (uint32_t)len + 1, ENTRY_OUT + 16, f->tmo);
        kv_result("create", r);
        if (r < ENTRY_OUT + 16)
            goto out;
        nodeid = get64(f->out + FUSE_OUT_HDR);
        fh = get64(f->out + FUSE_OUT_HDR + ENTRY_OUT);
    } else {
        kv_result("lookup", r);
        goto out;
    }
    a = req_begin(f, FUSE_WRITE, nodeid);
    memset(a, 0, 40);
    put64(a, fh);
    put64(a + 8, 0);
    put32(a + 16, (uint32_t)text_len);
    memcpy(a + 40, text, text_len);
    r = req_send(f, 40 + (uint32_t)text_len, 8, f->tmo);
    kv_result("write", r);
    if (r >= 8)
        wrote = get32(f->out + FUSE_OUT_HDR);
    kv_result("release", fs_release(f, nodeid, fh));
    size = 0;
    r = fs_lookup(f, name, len, &nodeid, &size);
    kv_result("lookup", r);
out:
    if (wrote >= 0)
        kv_dec("wrote", (uint64_t)wrote);
    kv_dec("size", size);
    line_end();
    return wrote == (int64_t)text_len && size == text_len;
}

/* One driver session: negotiate, set up both queues, FUSE_INIT, the file
 * operations and the heartbeat.  1 if everything asked for worked. */
static int fs_round(struct fs *f, const struct options *o)
{
    const char *err;
    char tag[FS_TAG_LEN + 1];
    uint32_t nreq;
    uint8_t *a;
    int64_t r;
    int ok = 1;
    unsigned i;

    if ((err = virtio_negotiate(&f->v, virtio_want(o), o->msix)) != NULL)
        fail(err, "", 0);
    if ((err = virtio_setup(&f->v, 2, 64)) != NULL)
        fail(err, "", 0);
    virtio_print(&f->v, "fs");
    for (i = 0; i < FS_TAG_LEN; i++)
        tag[i] = (char)vcfg8(&f->v, i);
    tag[FS_TAG_LEN] = 0;
    nreq = vcfg32(&f->v, FS_TAG_LEN);

    a = req_begin(f, FUSE_INIT, 0);
    memset(a, 0, 64);
    put32(a, 7);                        /* major */
    put32(a + 4, 31);                   /* minor */
    r = req_send(f, 64, 64, f->tmo);
    line_begin("fs");
    put_quoted("tag", tag);
    kv_dec("request_queues", nreq);
    kv_result("init", r);
    if (r >= 24) {
        kv_dec("major", get32(f->out + FUSE_OUT_HDR));
        kv_dec("minor", get32(f->out + FUSE_OUT_HDR + 4));
        kv_dec("max_write", get32(f->out + FUSE_OUT_HDR + 20));
    }
    line_end();
    if (r < 24)
        return 0;

    if (o->path_len)
        ok &= fs_read_file(f, o->path, o->path_len);
    if (o->out_len)
        ok &= fs_write_file(f, o->out, o->out_len, o->text, o->text_len);

    if (o->have_secs) {
        uint64_t period = us_tsc(250000), next = rdtsc(), k;

        for (k = 1; k <= o->secs * 4; k++) {
            while (rdtsc() < next)
                cpu_relax();
            next += period;
            if (virtio_status(&f->v) & VS_NEEDS_RESET)
                f->down = 1;
            a = req_begin(f, FUSE_GETATTR, FUSE_ROOT_ID);
            memset(a, 0, 16);
            r = req_send(f, 16, ATTR_OUT, period);
            line_begin("fs");
            kv_dec("tick", k);
            kv_result("getattr", r);
            kv_hex("status", virtio_status(&f->v));
            line_end();
        }
    }
    return ok;
}

NORETURN void test_fs(const struct options *o)
{
    static struct fs f;
    const char *err = virtio_init(o, 1);
    uint64_t rounds = o->have_n && o->n ? o->n : 1, round;
    int ok = 1;

    if (err)
        fail(err, "", 0);
    if ((err = virtio_find(&f.v, VIRTIO_ID_FS)) != NULL)
        fail(err, "", 0);
    f.in = dma_alloc(REQ_MAX, 4096);
    f.out = dma_alloc(REQ_MAX, 4096);
    f.tmo = us_tsc(VQ_TIMEOUT_US);
    for (round = 1; round <= rounds; round++) {
        uint64_t mark = dma_mark();

        if (round > 1) {                /* the driver starts over: reset, then everything again */
            line_begin("fs");
            kv_dec("round", round);
            kv_dec("reset", (uint64_t)virtio_reset(&f.v));
            line_end();
        }
        ok &= fs_round(&f, o);
        dma_release(mark);
    }
    print_result(ok);
    probe_exit(ok ? EXIT_PASS : EXIT_FAIL);
}

/*
 * fsbench: virtio-fs speed as the guest sees it, one request at a time.
 *
 *   probe.test=fsbench probe.path=NAME [probe.mb=M] [probe.n=N] [probe.irq=msix]
 *
 * Reads NAME from the start in 64 KiB READs, M MiB of it (64, or less if the
 * file is shorter), then does N (1000) small-file cycles on it: LOOKUP,
 * OPEN, READ of 4 KiB, RELEASE.  Prints
 * "probe: fsbench seq_read_mbps=X bytes=B small_files_per_s=Y requests_per_s=Z
 * irq=msix|poll tsc_hz=H tsc_source=S".
 */
NORETURN void test_fsbench(const struct options *o)
{
    static struct fs f;
    const char *err = virtio_init(o, 0), *src;
    uint64_t want = (o->have_mb ? o->mb : 64) << 20, n = o->have_n && o->n ? o->n : 1000;
    uint64_t hz, nodeid = 0, size = 0, fh = 0, bytes = 0, t0, seq_cycles, small_cycles, i;
    uint8_t *a;
    int64_t r;

    if (err)
        fail(err, "", 0);
    if (!o->path_len)
        fail("fsbench needs probe.path", "", 0);
    hz = tsc_calibrate(&src);
    if ((err = virtio_find(&f.v, VIRTIO_ID_FS)) != NULL)
        fail(err, "", 0);
    f.in = dma_alloc(REQ_MAX, 4096);
    f.out = dma_alloc(REQ_MAX, 4096);
    f.tmo = us_tsc(VQ_TIMEOUT_US);
    if ((err = virtio_negotiate(&f.v, virtio_want(o), o->msix)) != NULL)
        fail(err, "", 0);
    if ((err = virtio_setup(&f.v, 2, 64)) != NULL)
        fail(err, "", 0);
    a = req_begin(&f, FUSE_INIT, 0);
    memset(a, 0, 64);
    put32(a, 7);
    put32(a + 4, 31);
    if (req_send(&f, 64, 64, f.tmo) < 24)
        fail("FUSE_INIT failed", "", 0);
    if (fs_lookup(&f, o->path, o->path_len, &nodeid, &size) < 0)
        fail("fsbench: no such file: ", o->path, o->path_len);
    if (want > size)
        want = size;

    t0 = rdtsc();
    a = req_begin(&f, FUSE_OPEN, nodeid);
    memset(a, 0, 8);
    if (req_send(&f, 8, 16, f.tmo) < 16)
        fail("fsbench: OPEN failed", "", 0);
    fh = get64(f.out + FUSE_OUT_HDR);
    while (bytes < want) {
        a = req_begin(&f, FUSE_READ, nodeid);
        memset(a, 0, 40);
        put64(a, fh);
        put64(a + 8, bytes);
        put32(a + 16, READ_MAX);
        r = req_send(&f, 40, READ_MAX, f.tmo);
        if (r <= 0)
            fail("fsbench: READ failed", "", 0);
        bytes += (uint64_t)r;
    }
    fs_release(&f, nodeid, fh);
    seq_cycles = rdtsc() - t0;

    t0 = rdtsc();
    for (i = 0; i < n; i++) {
        if (fs_lookup(&f, o->path, o->path_len, &nodeid, &size) < 0)
            fail("fsbench: LOOKUP failed", "", 0);
        a = req_begin(&f, FUSE_OPEN, nodeid);
        memset(a, 0, 8);
        if (req_send(&f, 8, 16, f.tmo) < 16)
            fail("fsbench: OPEN failed", "", 0);
        fh = get64(f.out + FUSE_OUT_HDR);
        a = req_begin(&f, FUSE_READ, nodeid);
        memset(a, 0, 40);
        put64(a, fh);
        put32(a + 16, 4096);
        if (req_send(&f, 40, 4096, f.tmo) < 0)
            fail("fsbench: READ failed", "", 0);
        if (fs_release(&f, nodeid, fh) < 0)
            fail("fsbench: RELEASE failed", "", 0);
    }
    small_cycles = rdtsc() - t0;

    line_begin("fsbench");
    kv_dec("seq_read_mbps", muldiv64(bytes, hz, seq_cycles ? seq_cycles : 1) / 1000000);
    kv_dec("bytes", bytes);
    kv_dec("small_files_per_s", muldiv64(n, hz, small_cycles ? small_cycles : 1));
    kv_dec("requests_per_s", muldiv64(4 * n, hz, small_cycles ? small_cycles : 1));
    kv_str("irq", f.v.msix ? "msix" : "poll");
    kv_dec("tsc_hz", hz);
    kv_str("tsc_source", src);
    line_end();
    print_result(1);
    probe_exit(EXIT_PASS);
}
