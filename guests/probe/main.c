/*
 * Ring-3 part of the probe: command line, workloads, result.
 */
#include "probe.h"

#define ZP_EXT_CMD_LINE_PTR 0x0c8       /* boot_params.ext_cmd_line_ptr */
#define ZP_CMD_LINE_PTR     0x228       /* boot_params.hdr.cmd_line_ptr */
#define HVM_START_MAGIC     0x336ec578
#define HVM_CMDLINE_PADDR   24          /* hvm_start_info.cmdline_paddr */
#define CMDLINE_MAX         4096

static size_t bounded_strlen_max(const char *s);

/* ------------------------------------------------------------------ */

void print_result(int pass)
{
    line_begin(NULL);
    kv_str("result", pass ? "pass" : "fail");
    line_end();
}

/* probe: error="<msg><arg>", probe: result=fail, exit 1 */
NORETURN void fail(const char *msg, const char *arg, size_t arg_len)
{
    line_begin(NULL);
    put_str(" error=\"");
    put_str(msg);
    put_escaped(arg, arg_len);
    put_str("\"");
    line_end();
    print_result(0);
    probe_exit(EXIT_FAIL);
}

NORETURN void pass(void)
{
    print_result(1);
    probe_exit(EXIT_PASS);
}

/* key="value" with the value escaped, inside the current line. */
void put_quoted(const char *key, const char *s)
{
    put_char(' ');
    put_str(key);
    put_str("=\"");
    put_escaped(s, bounded_strlen_max(s));
    put_str("\"");
}

/* ------------------------------------------------------------------ */
/* Command line.                                                        */

static size_t bounded_strlen(const char *s, size_t max)
{
    size_t n = 0;

    while (n < max && s[n])
        n++;
    return n;
}

static size_t bounded_strlen_max(const char *s)
{
    return bounded_strlen(s, CMDLINE_MAX);
}

static int mem_eq(const char *a, size_t alen, const char *b)
{
    size_t blen = bounded_strlen(b, CMDLINE_MAX);
    size_t i;

    if (alen != blen)
        return 0;
    for (i = 0; i < alen; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Declared in probe.h. */
int parse_u64(const char *s, size_t len, int allow_hex, uint64_t *out)
{
    uint64_t v = 0;
    unsigned base = 10;
    size_t i = 0;

    if (allow_hex && len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        i = 2;
    }
    if (i == len)
        return 0;
    for (; i < len; i++) {
        char c = s[i];
        unsigned d;

        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return 0;
        if (v > (UINT64_MAX - d) / base)
            return 0;
        v = v * base + d;
    }
    *out = v;
    return 1;
}

/* Dotted-quad IPv4 address: four decimal parts 0..255; host byte order. */
static int parse_ipv4(const char *s, size_t len, uint32_t *out)
{
    uint32_t ip = 0;
    size_t i = 0;
    unsigned part;

    for (part = 0; part < 4; part++) {
        size_t start = i;
        uint64_t v;

        while (i < len && s[i] != '.')
            i++;
        if (i - start > 3 || !parse_u64(s + start, i - start, 0, &v) || v > 255)
            return 0;
        ip = ip << 8 | (uint32_t)v;
        if (part < 3) {
            if (i == len)
                return 0;
            i++;                        /* the dot */
        }
    }
    if (i != len)
        return 0;
    *out = ip;
    return 1;
}

/* probe.features=NAME[,NAME...]: eventidx, indirect, offload, none. */
static void parse_features(struct options *o, const char *val, size_t val_len)
{
    size_t i = 0;

    o->features = 0;
    while (i < val_len) {
        size_t start = i;

        while (i < val_len && val[i] != ',')
            i++;
        if (mem_eq(val + start, i - start, "eventidx"))
            o->features |= FEAT_EVENT_IDX;
        else if (mem_eq(val + start, i - start, "indirect"))
            o->features |= FEAT_INDIRECT;
        else if (mem_eq(val + start, i - start, "offload"))
            o->features |= FEAT_OFFLOAD;
        else if (!mem_eq(val + start, i - start, "none"))
            fail("bad value for probe.features: ", val, val_len);
        i++;
    }
}

static void parse_option(struct options *o, const char *tok, size_t len)
{
    const char *key = tok, *val;
    size_t key_len = 0, val_len;
    uint64_t v;

    while (key_len < len && tok[key_len] != '=')
        key_len++;
    val = tok + key_len + (key_len < len);
    val_len = len - key_len - (key_len < len);

    if (mem_eq(key, key_len, "probe.test")) {
        o->test = val;
        o->test_len = val_len;
    } else if (mem_eq(key, key_len, "probe.n")) {
        if (!parse_u64(val, val_len, 0, &v))
            fail("bad value for probe.n: ", val, val_len);
        o->n = v;
        o->have_n = 1;
    } else if (mem_eq(key, key_len, "probe.port")) {
        if (!parse_u64(val, val_len, 1, &v) || v > 0xffff)
            fail("bad value for probe.port: ", val, val_len);
        o->port = v;
        o->have_port = 1;
    } else if (mem_eq(key, key_len, "probe.addr")) {
        if (!parse_u64(val, val_len, 1, &v) || v > MAPPED_LIMIT - 4 || (v & 3))
            fail("bad value for probe.addr: ", val, val_len);
        o->addr = v;
    } else if (mem_eq(key, key_len, "probe.ring")) {
        if (!parse_u64(val, val_len, 0, &v) || (v != 0 && v != 3))
            fail("bad value for probe.ring: ", val, val_len);
        o->ring = (unsigned)v;
    } else if (mem_eq(key, key_len, "probe.irq")) {
        if (mem_eq(val, val_len, "poll"))
            o->msix = IRQ_POLL;
        else if (mem_eq(val, val_len, "msix"))
            o->msix = IRQ_MSIX;
        else if (mem_eq(val, val_len, "ioapic"))
            o->msix = IRQ_IOAPIC;
        else
            fail("bad value for probe.irq: ", val, val_len);
    } else if (mem_eq(key, key_len, "probe.qd")) {
        if (!parse_u64(val, val_len, 0, &v) || v < 1 || v > 256)
            fail("bad value for probe.qd: ", val, val_len);
        o->qd = v;
        o->have_qd = 1;
    } else if (mem_eq(key, key_len, "probe.mb")) {
        if (!parse_u64(val, val_len, 0, &v) || v < 1 || v > (1u << 20))
            fail("bad value for probe.mb: ", val, val_len);
        o->mb = v;
        o->have_mb = 1;
    } else if (mem_eq(key, key_len, "probe.features")) {
        parse_features(o, val, val_len);
    } else if (mem_eq(key, key_len, "probe.ip")) {
        if (!parse_ipv4(val, val_len, &o->ip))
            fail("bad value for probe.ip: ", val, val_len);
    } else if (mem_eq(key, key_len, "probe.peer")) {
        if (!parse_ipv4(val, val_len, &o->peer))
            fail("bad value for probe.peer: ", val, val_len);
    } else if (mem_eq(key, key_len, "probe.secs")) {
        if (!parse_u64(val, val_len, 0, &v) || v < 1 || v > 86400)
            fail("bad value for probe.secs: ", val, val_len);
        o->secs = v;
        o->have_secs = 1;
    } else if (mem_eq(key, key_len, "probe.size")) {
        if (!parse_u64(val, val_len, 0, &v) || v > (1u << 20))
            fail("bad value for probe.size: ", val, val_len);
        o->size = v;
        o->have_size = 1;
    } else if (mem_eq(key, key_len, "probe.path")) {
        if (val_len == 0 || val_len > 255)
            fail("bad value for probe.path: ", val, val_len);
        o->path = val;
        o->path_len = val_len;
    } else if (mem_eq(key, key_len, "probe.out")) {
        if (val_len == 0 || val_len > 255)
            fail("bad value for probe.out: ", val, val_len);
        o->out = val;
        o->out_len = val_len;
    } else if (mem_eq(key, key_len, "probe.text")) {
        if (val_len > 4000)
            fail("bad value for probe.text: ", val, val_len);
        o->text = val;
        o->text_len = val_len;
    } else if (mem_eq(key, key_len, "probe.conns")) {
        if (!parse_u64(val, val_len, 0, &v) || v < 1 || v > 16)
            fail("bad value for probe.conns: ", val, val_len);
        o->conns = v;
    } else if (mem_eq(key, key_len, "probe.dev")) {
        if (!parse_u64(val, val_len, 0, &v) || v > 31)
            fail("bad value for probe.dev: ", val, val_len);
        o->dev = (unsigned)v;
    } else {
        fail("unknown option ", key, key_len);
    }
}

static void parse_cmdline(struct options *o, const char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t start;

        while (i < len && is_space(s[i]))
            i++;
        start = i;
        while (i < len && !is_space(s[i]))
            i++;
        /* Only probe.* tokens are ours; the rest belongs to others. */
        if (i - start >= 6 && mem_eq(s + start, 6, "probe."))
            parse_option(o, s + start, i - start);
    }
}

/*
 * Locate the command line.  Returns NULL with *err set when the boot
 * information cannot be used.
 */
static const char *find_cmdline(uint32_t kind, uint64_t info, const char **err)
{
    uint64_t addr;

    *err = NULL;
    if (info == 0)
        return "";
    if (info >= MAPPED_LIMIT - 4096) {
        *err = "boot information above 4 GiB";
        return NULL;
    }
    if (kind == BOOT_PVH) {
        const volatile uint32_t *si = (const volatile uint32_t *)info;

        if (si[0] != HVM_START_MAGIC) {
            *err = "bad hvm_start_info magic";
            return NULL;
        }
        addr = *(const volatile uint64_t *)(info + HVM_CMDLINE_PADDR);
    } else {
        const volatile uint8_t *zp = (const volatile uint8_t *)info;

        addr = *(const volatile uint32_t *)(zp + ZP_CMD_LINE_PTR) |
               (uint64_t)*(const volatile uint32_t *)(zp + ZP_EXT_CMD_LINE_PTR) << 32;
    }
    if (addr == 0)
        return "";
    if (addr >= MAPPED_LIMIT - CMDLINE_MAX) {
        *err = "command line above 4 GiB";
        return NULL;
    }
    return (const char *)addr;
}

/* ------------------------------------------------------------------ */
/* Workloads.                                                           */

static unsigned read_cpl(void)
{
    uint16_t cs;

    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return cs & 3;
}

static unsigned read_iopl(void)
{
    uint64_t rflags;

    __asm__ volatile("pushfq; popq %0" : "=r"(rflags));
    return (rflags >> 12) & 3;
}

static const char *io_mode(void)
{
    return io_use_gate ? "gate" : "direct";
}

static NORETURN void test_hello(void)
{
    unsigned cpl = read_cpl();

    line_begin("hello");
    kv_dec("cpl", cpl);
    kv_dec("iopl", read_iopl());
    kv_str("io", io_mode());
    line_end();
    if (cpl != 3)
        fail("not running in ring 3", "", 0);
    pass();
}

static NORETURN void test_pio(const struct options *o)
{
    uint64_t n = o->have_n ? o->n : 100000;
    uint16_t port = (uint16_t)o->port;
    uint64_t t0, t1, i;

    if (o->ring == 0) {
        /* The whole loop in ring 0: one gate call, then n plain outb. */
        t0 = rdtsc();
        __asm__ volatile("int3"
                         : "+S"(n)
                         : "c"(IO_GATE_PIO_LOOP), "d"(port)
                         : "rax", "memory");
        t1 = rdtsc();
    } else if (io_use_gate) {
        t0 = rdtsc();
        for (i = 0; i < n; i++)
            gate_outb(port, (uint8_t)i);
        t1 = rdtsc();
    } else {
        t0 = rdtsc();
        for (i = 0; i < n; i++)
            outb(port, (uint8_t)i);
        t1 = rdtsc();
    }

    line_begin("pio");
    kv_dec("n", n);
    kv_hex("port", port);
    kv_dec("cycles", t1 - t0);
    kv_str("io", o->ring == 0 ? "direct" : io_mode());
    kv_dec("ring", o->ring);
    line_end();
    pass();
}

static NORETURN void test_mmio(const struct options *o)
{
    uint64_t n = o->have_n ? o->n : 10000;
    volatile uint32_t *p = (volatile uint32_t *)o->addr;
    uint64_t t0, t1, i;

    if (o->ring == 0) {
        uint64_t count = n;

        t0 = rdtsc();
        __asm__ volatile("int3"
                         : "+S"(count)
                         : "c"(IO_GATE_MMIO_LOOP), "D"(p)
                         : "rax", "memory");
        t1 = rdtsc();
    } else {
        t0 = rdtsc();
        for (i = 0; i < n; i++)
            *p = (uint32_t)i;
        t1 = rdtsc();
    }

    line_begin("mmio");
    kv_dec("n", n);
    kv_hex("addr", o->addr);
    kv_dec("cycles", t1 - t0);
    kv_dec("ring", o->ring);
    line_end();
    pass();
}

static NORETURN void test_cpu(const struct options *o)
{
    uint64_t n = o->have_n ? o->n : 10000000;
    uint64_t x = 0x9E3779B97F4A7C15ULL, sum = 0;
    uint64_t t0, t1, i;

    t0 = rdtsc();
    for (i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum += x;
    }
    t1 = rdtsc();

    line_begin("cpu");
    kv_dec("n", n);
    put_str(" checksum=");
    put_hex16(sum);
    kv_dec("cycles", t1 - t0);
    line_end();
    pass();
}

/*
 * Count forever in ring 3, at a fixed address the host can read while
 * the guest runs (or is paused).
 */
static NORETURN void test_counter(void)
{
    volatile uint64_t *counter = (volatile uint64_t *)COUNTER_ADDR;

    *counter = 0;
    line_begin("counter");
    kv_hex("addr", COUNTER_ADDR);
    line_end();
    for (;;)
        (*counter)++;
}

/*
 * Reboot through the i8042's "pulse reset line" command; a VMM that does not
 * honour it leaves us running, which is reported as a failure.
 */
static NORETURN void test_reboot(void)
{
    line_begin("reboot");
    kv_str("via", "i8042");
    line_end();
    port_outb(0x64, 0xfe);
    tsc_delay_us(2000000);
    fail("reboot did not happen", "", 0);
}

/* The same through System Control Port A (0x92): bit 1 (A20) reads back, bit 0 resets. */
static NORETURN void test_reboot_porta(void)
{
    uint8_t a20 = port_inb(0x92);

    line_begin("reboot");
    kv_str("via", "porta");
    kv_hex("porta", a20);
    line_end();
    port_outb(0x92, a20 | 0x01);
    tsc_delay_us(2000000);
    fail("reboot through port 0x92 did not happen", "", 0);
}

/* The same through the reset control register at 0xCF9 (bit 1 hard reset, bit 2 reset CPU). */
static NORETURN void test_reboot_cf9(void)
{
    line_begin("reboot");
    kv_str("via", "cf9");
    line_end();
    port_outb(0xcf9, 0x02);
    port_outb(0xcf9, 0x06);
    tsc_delay_us(2000000);
    fail("reboot through port 0xcf9 did not happen", "", 0);
}

/*
 * The CMOS shutdown status byte (register 0x0F) across a reset.  On a PC it
 * lives in battery-backed CMOS RAM: the BIOS reads it at the reset vector to
 * tell a cold boot from a warm one.  First boot: it reads 0 (or anything but
 * probe.n), so write probe.n (default 0x0a) there and reset through
 * probe.port (0xcf9, the default, or 0x92).  After the reset the byte reads
 * back as written, and the workload passes.
 */
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define CMOS_SHUTDOWN_STATUS 0x0f

static uint8_t cmos_read(uint8_t reg)
{
    port_outb(CMOS_INDEX, reg);
    return port_inb(CMOS_DATA);
}

static NORETURN void test_cmos(const struct options *o)
{
    uint8_t want = o->have_n ? (uint8_t)o->n : 0x0a;
    uint64_t via = o->have_port ? o->port : 0xcf9;
    uint8_t now = cmos_read(CMOS_SHUTDOWN_STATUS);

    if ((o->have_n && (o->n < 1 || o->n > 0xff)) || (via != 0xcf9 && via != 0x92))
        fail("probe.test=cmos takes probe.n=1..255 and probe.port=0xcf9|0x92", "", 0);
    line_begin("cmos");
    kv_hex("shutdown", now);
    kv_str("boot", now == want ? "after_reset" : "first");
    line_end();
    if (now == want)
        pass();
    port_outb(CMOS_INDEX, CMOS_SHUTDOWN_STATUS);
    port_outb(CMOS_DATA, want);
    line_begin("cmos");
    kv_hex("wrote", want);
    kv_hex("read", cmos_read(CMOS_SHUTDOWN_STATUS));
    kv_str("via", via == 0x92 ? "porta" : "cf9");
    line_end();
    if (via == 0x92) {
        port_outb(0x92, port_inb(0x92) | 0x01);
    } else {
        port_outb(0xcf9, 0x02);
        port_outb(0xcf9, 0x06);
    }
    tsc_delay_us(2000000);
    fail("reset did not happen", "", 0);
}

/* Write probe.n to the debug-exit port as the exit status (the VMM maps it). */
static NORETURN void test_exit(const struct options *o)
{
    uint32_t value = o->have_n ? (uint32_t)o->n : 0;

    line_begin("exit");
    kv_hex("value", value);
    line_end();
    print_result(1);
    probe_exit(value);
}

static NORETURN void test_fault(void)
{
    /* hlt at CPL 3 raises #GP(0). */
    __asm__ volatile("hlt");
    fail("hlt in ring 3 did not fault", "", 0);
}

/* ------------------------------------------------------------------ */

void user_main(uint32_t kind, uint64_t info)
{
    struct options o = { .test = "hello", .test_len = 5,
                         .port = 0x0b00, .addr = 0xd0000000, .ring = 3,
                         .ip = 0x0a00020f, .peer = 0x0a000201, .conns = 1,
                         .boot_kind = kind, .boot_info = info };
    const char *err, *cmdline;
    size_t len;

    /*
     * Ring 0 asked for IOPL=3, but a hypervisor may not pass it on (PVM
     * forces IOPL=0 in user mode).  Then in/out would #GP: use the gate.
     */
    io_use_gate = read_iopl() != 3;

    cmdline = find_cmdline(kind, info, &err);
    len = cmdline ? bounded_strlen(cmdline, CMDLINE_MAX) : 0;

    line_begin("boot");
    kv_str("entry", kind == BOOT_PVH ? "pvh" : "elf64");
    put_str(" cmdline=\"");
    put_escaped(cmdline ? cmdline : "", len);
    put_str("\"");
    line_end();

    if (err)
        fail(err, "", 0);

    o.cmdline = (uint64_t)cmdline;
    o.cmdline_len = len;
    parse_cmdline(&o, cmdline, len);

    if (mem_eq(o.test, o.test_len, "hello"))
        test_hello();
    if (mem_eq(o.test, o.test_len, "pio"))
        test_pio(&o);
    if (mem_eq(o.test, o.test_len, "mmio"))
        test_mmio(&o);
    if (mem_eq(o.test, o.test_len, "cpu"))
        test_cpu(&o);
    if (mem_eq(o.test, o.test_len, "fault"))
        test_fault();
    if (mem_eq(o.test, o.test_len, "counter"))
        test_counter();
    if (mem_eq(o.test, o.test_len, "ticker"))
        test_ticker(&o);
    if (mem_eq(o.test, o.test_len, "reboot"))
        test_reboot();
    if (mem_eq(o.test, o.test_len, "reboot-porta"))
        test_reboot_porta();
    if (mem_eq(o.test, o.test_len, "reboot-cf9"))
        test_reboot_cf9();
    if (mem_eq(o.test, o.test_len, "cmos"))
        test_cmos(&o);
    if (mem_eq(o.test, o.test_len, "exit"))
        test_exit(&o);
    if (mem_eq(o.test, o.test_len, "acpi"))
        test_acpi(kind, info);
    if (mem_eq(o.test, o.test_len, "poweroff"))
        test_poweroff(kind, info);
    if (mem_eq(o.test, o.test_len, "smp"))
        test_smp(kind, info);
    if (mem_eq(o.test, o.test_len, "timer"))
        test_timer(kind, info, o.have_n ? o.n : 20);
    if (mem_eq(o.test, o.test_len, "pci"))
        test_pci(&o);
    if (mem_eq(o.test, o.test_len, "rng"))
        test_rng(&o);
    if (mem_eq(o.test, o.test_len, "blk"))
        test_blk(&o);
    if (mem_eq(o.test, o.test_len, "blkflush"))
        test_blkflush(&o);
    if (mem_eq(o.test, o.test_len, "blksum"))
        test_blksum(&o);
    if (mem_eq(o.test, o.test_len, "blkbench"))
        test_blkbench(&o);
    if (mem_eq(o.test, o.test_len, "hostile"))
        test_hostile(&o);
    if (mem_eq(o.test, o.test_len, "net"))
        test_net(&o);
    if (mem_eq(o.test, o.test_len, "netping"))
        test_netping(&o);
    if (mem_eq(o.test, o.test_len, "netbench"))
        test_netbench(&o);
    if (mem_eq(o.test, o.test_len, "nethostile"))
        test_nethostile(&o);
    if (mem_eq(o.test, o.test_len, "vsock"))
        test_vsock(&o);
    if (mem_eq(o.test, o.test_len, "vsockclient"))
        test_vsockclient(&o);
    if (mem_eq(o.test, o.test_len, "balloon"))
        test_balloon(&o);
    if (mem_eq(o.test, o.test_len, "burn"))
        test_burn(&o);
    if (mem_eq(o.test, o.test_len, "latency"))
        test_latency(&o);
    if (mem_eq(o.test, o.test_len, "memsum"))
        test_memsum(&o);
    if (mem_eq(o.test, o.test_len, "blksnap"))
        test_blksnap(&o);
    if (mem_eq(o.test, o.test_len, "blkswap"))
        test_blkswap(&o);
    if (mem_eq(o.test, o.test_len, "kbd"))
        test_kbd(&o);
    if (mem_eq(o.test, o.test_len, "fwcfg"))
        test_fwcfg(&o);
    if (mem_eq(o.test, o.test_len, "mptable"))
        test_mptable(&o);
    if (mem_eq(o.test, o.test_len, "fs"))
        test_fs(&o);
    if (mem_eq(o.test, o.test_len, "fsbench"))
        test_fsbench(&o);
    if (mem_eq(o.test, o.test_len, "vmgenid"))
        test_vmgenid(&o);
    fail("unknown test ", o.test, o.test_len);
}
