/*
 * ACPI tables (ring 3): find the RSDP, check every table, read the MADT
 * and FADT; the acpi and poweroff workloads.
 *
 * All tables are read in place: the identity map covers 0..4 GiB with
 * user pages, so ring 3 can read them wherever the firmware or VMM put
 * them (below 4 GiB).
 */
#include "probe.h"

#define ZP_ACPI_RSDP_ADDR   0x070       /* boot_params.acpi_rsdp_addr */
#define HVM_START_MAGIC     0x336ec578
#define HVM_VERSION         4           /* hvm_start_info.version */
#define HVM_RSDP_PADDR      32          /* hvm_start_info.rsdp_paddr (version >= 1) */
#define TABLE_MAX_LEN       (16u << 20) /* sanity limit for one table */
#define SDT_HEADER_LEN      36

/* FADT (ACPI 6.5, 5.2.9) field offsets. */
#define FADT_DSDT           40
#define FADT_SMI_CMD        48
#define FADT_ACPI_ENABLE    52
#define FADT_PM1A_CNT_BLK   64
#define FADT_PM1_CNT_LEN    89
#define FADT_FLAGS          112
#define FADT_RESET_REG      116
#define FADT_RESET_VALUE    128
#define FADT_X_DSDT         140
#define FADT_X_PM1A_CNT_BLK 172
#define FADT_SLEEP_CONTROL  244
#define FADT_HW_REDUCED     (1u << 20)
#define FADT_RESET_REG_SUP  (1u << 10)

#define GAS_MEMORY          0
#define GAS_IO              1

/* Sleep registers: SLP_TYP and SLP_EN. */
#define SLEEP_CONTROL_SLP_EN    0x20    /* bit 5; SLP_TYP in bits 4:2 */
#define PM1_CNT_SLP_EN          0x2000  /* bit 13; SLP_TYP in bits 12:10 */
#define PM1_CNT_SLP_TYP_MASK    0x1c00

struct acpi_info acpi;

static int all_ok;                      /* every checksum seen so far was fine */

/*
 * Reads of guest-physical addresses.  The empty asm hides the constant
 * address from the compiler, which would otherwise object to low
 * addresses such as the BDA's.
 */
static uint64_t phys(uint64_t a)
{
    __asm__("" : "+r"(a));
    return a;
}

static uint8_t rd8(uint64_t a)   { return *(const volatile uint8_t *)phys(a); }
static uint16_t rd16(uint64_t a) { return *(const volatile uint16_t *)phys(a); }
static uint32_t rd32(uint64_t a) { return *(const volatile uint32_t *)phys(a); }
static uint64_t rd64(uint64_t a) { return *(const volatile uint64_t *)phys(a); }

static int sum_ok(uint64_t a, uint32_t len)
{
    uint8_t sum = 0;
    uint32_t i;

    for (i = 0; i < len; i++)
        sum = (uint8_t)(sum + rd8(a + i));
    return sum == 0;
}

static int sig_is(uint64_t a, const char *sig, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (rd8(a + i) != (uint8_t)sig[i])
            return 0;
    return 1;
}

static void copy_str(char *dst, uint64_t src, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        char c = (char)rd8(src + i);

        dst[i] = c ? c : ' ';
    }
    dst[len] = 0;
}

static void put_gas(const char *key, const struct gas *g)
{
    put_char(' ');
    put_str(key);
    put_char('=');
    if (g->space == GAS_IO)
        put_str("io:");
    else if (g->space == GAS_MEMORY)
        put_str("mem:");
    else {
        put_str("space");
        put_dec(g->space);
        put_char(':');
    }
    put_hex(g->addr);
}

static void read_gas(uint64_t a, struct gas *g)
{
    g->space = rd8(a);
    g->bit_width = rd8(a + 1);
    g->addr = rd64(a + 4);
}

/* ------------------------------------------------------------------ */
/* RSDP.                                                                */

static int rsdp_valid(uint64_t a)
{
    if (a == 0 || a >= MAPPED_LIMIT - 36 || !sig_is(a, "RSD PTR ", 8))
        return 0;
    return sum_ok(a, 20);
}

static uint64_t scan_rsdp(uint64_t start, uint64_t end)
{
    uint64_t a;

    for (a = start; a + 20 <= end; a += 16)
        if (rsdp_valid(a))
            return a;
    return 0;
}

static uint64_t find_rsdp(uint32_t kind, uint64_t info, const char **source)
{
    uint64_t a = 0, ebda;

    if (info && info < MAPPED_LIMIT - 4096) {
        if (kind == BOOT_PVH) {
            if (rd32(info) == HVM_START_MAGIC && rd32(info + HVM_VERSION) >= 1)
                a = rd64(info + HVM_RSDP_PADDR);
            *source = "pvh";
        } else {
            a = rd64(info + ZP_ACPI_RSDP_ADDR);
            *source = "zeropage";
        }
        if (a && rsdp_valid(a))
            return a;
    }
    /* The first KiB of the EBDA, if the BDA points to a plausible one. */
    ebda = (uint64_t)rd16(0x40e) << 4;
    *source = "scan";
    if (ebda >= 0x80000 && ebda < 0xa0000) {
        a = scan_rsdp(ebda, ebda + 1024);
        if (a)
            return a;
    }
    return scan_rsdp(0xe0000, 0x100000);
}

/* ------------------------------------------------------------------ */
/* Tables.                                                              */

/* Check one table; print its line if verbose.  Returns its length or 0. */
static uint32_t check_table(uint64_t a, int verbose, const char *want)
{
    uint32_t len;
    int ok;
    char sig[5];

    if (a == 0 || a >= MAPPED_LIMIT - SDT_HEADER_LEN) {
        all_ok = 0;
        if (verbose) {
            line_begin("acpi");
            put_str(" error=\"table address ");
            put_hex(a);
            put_str(" not usable\"");
            line_end();
        }
        return 0;
    }
    copy_str(sig, a, 4);
    len = rd32(a + 4);
    ok = len >= SDT_HEADER_LEN && len <= TABLE_MAX_LEN && a + len <= MAPPED_LIMIT &&
         sum_ok(a, len) && (!want || sig_is(a, want, 4));
    if (!ok)
        all_ok = 0;
    if (verbose) {
        line_begin("acpi");
        kv_str("table", sig);
        kv_hex("addr", a);
        kv_dec("len", len);
        kv_str("checksum", ok ? "ok" : "bad");
        line_end();
    }
    return ok ? len : 0;
}

static void parse_madt(uint64_t a, uint32_t len)
{
    uint64_t p = a + 44, end = a + len;

    acpi.have_madt = 1;
    acpi.madt = a;
    acpi.madt_len = len;
    acpi.lapic_addr = rd32(a + 36);
    while (p + 2 <= end) {
        uint8_t type = rd8(p), elen = rd8(p + 1);

        if (elen < 2 || p + elen > end)
            break;
        if (type == 0 && elen >= 8) {           /* Processor Local APIC */
            if ((rd32(p + 4) & 1) && acpi.ncpus < ACPI_MAX_CPUS)
                acpi.apic_ids[acpi.ncpus++] = rd8(p + 3);
        } else if (type == 9 && elen >= 16) {   /* Processor Local x2APIC */
            if ((rd32(p + 8) & 1) && acpi.ncpus < ACPI_MAX_CPUS)
                acpi.apic_ids[acpi.ncpus++] = rd32(p + 4);
        } else if (type == 1 && elen >= 12) {   /* I/O APIC */
            if (!acpi.have_ioapic) {
                acpi.have_ioapic = 1;
                acpi.ioapic_addr = rd32(p + 4);
                acpi.ioapic_gsi_base = rd32(p + 8);
            }
        } else if (type == 5 && elen >= 12) {   /* LAPIC address override */
            acpi.lapic_addr = rd64(p + 4);
        }
        p += elen;
    }
}

/* One line per interrupt source override and LAPIC NMI entry. */
static void print_madt_extras(void)
{
    uint64_t p = acpi.madt + 44, end = acpi.madt + acpi.madt_len;

    while (p + 2 <= end) {
        uint8_t type = rd8(p), elen = rd8(p + 1);

        if (elen < 2 || p + elen > end)
            break;
        if (type == 2 && elen >= 10) {
            line_begin("acpi iso");
            kv_dec("irq", rd8(p + 3));
            kv_dec("gsi", rd32(p + 4));
            kv_hex("flags", rd16(p + 8));
            line_end();
        } else if (type == 4 && elen >= 6) {
            line_begin("acpi lapic_nmi");
            kv_hex("uid", rd8(p + 2));
            kv_dec("lint", rd8(p + 5));
            kv_hex("flags", rd16(p + 3));
            line_end();
        }
        p += elen;
    }
}

static void parse_fadt(uint64_t a, uint32_t len)
{
    acpi.have_fadt = 1;
    acpi.fadt_flags = len >= FADT_FLAGS + 4 ? rd32(a + FADT_FLAGS) : 0;
    acpi.dsdt = len >= FADT_X_DSDT + 8 ? rd64(a + FADT_X_DSDT) : 0;
    if (!acpi.dsdt)
        acpi.dsdt = rd32(a + FADT_DSDT);
    if (len >= FADT_SLEEP_CONTROL + 12)
        read_gas(a + FADT_SLEEP_CONTROL, &acpi.sleep_control);
    if (len >= FADT_RESET_VALUE + 1 && (acpi.fadt_flags & FADT_RESET_REG_SUP)) {
        read_gas(a + FADT_RESET_REG, &acpi.reset_reg);
        acpi.reset_value = rd8(a + FADT_RESET_VALUE);
        acpi.have_reset = acpi.reset_reg.addr != 0;
    }
    if (len >= FADT_X_PM1A_CNT_BLK + 12)
        read_gas(a + FADT_X_PM1A_CNT_BLK, &acpi.pm1a_cnt);
    if (!acpi.pm1a_cnt.addr && len >= FADT_PM1A_CNT_BLK + 4) {
        acpi.pm1a_cnt.space = GAS_IO;
        acpi.pm1a_cnt.bit_width = 16;
        acpi.pm1a_cnt.addr = rd32(a + FADT_PM1A_CNT_BLK);
    }
    acpi.smi_cmd = len >= FADT_SMI_CMD + 4 ? rd32(a + FADT_SMI_CMD) : 0;
    acpi.acpi_enable = len > FADT_ACPI_ENABLE ? rd8(a + FADT_ACPI_ENABLE) : 0;
}

static void print_madt(void)
{
    unsigned i;

    line_begin("acpi");
    kv_dec("cpus", acpi.ncpus);
    put_str(" apic_ids=");
    for (i = 0; i < acpi.ncpus; i++) {
        if (i)
            put_char(',');
        put_dec(acpi.apic_ids[i]);
    }
    if (acpi.have_ioapic) {
        kv_hex("ioapic", acpi.ioapic_addr);
        kv_dec("ioapic_gsi_base", acpi.ioapic_gsi_base);
    }
    kv_hex("lapic", acpi.lapic_addr);
    line_end();
    print_madt_extras();
}

static void print_fadt(void)
{
    line_begin("acpi fadt");
    kv_dec("hw_reduced", !!(acpi.fadt_flags & FADT_HW_REDUCED));
    if (acpi.sleep_control.addr)
        put_gas("sleep_control", &acpi.sleep_control);
    if (acpi.have_reset) {
        put_gas("reset", &acpi.reset_reg);
        put_char('/');
        put_hex(acpi.reset_value);
    }
    if (acpi.pm1a_cnt.addr)
        put_gas("pm1a_cnt", &acpi.pm1a_cnt);
    if (acpi.dsdt)
        kv_hex("dsdt", acpi.dsdt);
    line_end();
}

int acpi_scan(uint32_t kind, uint64_t info, int verbose)
{
    const char *source = "scan";
    uint64_t rsdp, root;
    uint32_t rev, root_len, entry_size, i;
    int rsdp_ok, xsdt;
    char oem[7];

    memset(&acpi, 0, sizeof(acpi));
    acpi.lapic_addr = LAPIC_DEFAULT_BASE;
    all_ok = 1;

    rsdp = find_rsdp(kind, info, &source);
    if (!rsdp) {
        if (verbose) {
            line_begin("acpi");
            kv_str("rsdp", "none");
            line_end();
        }
        return 0;
    }
    acpi.rsdp = rsdp;
    acpi.rsdp_source = source;
    rev = rd8(rsdp + 15);
    rsdp_ok = sum_ok(rsdp, 20);
    xsdt = rev >= 2 && rd64(rsdp + 24) != 0;
    if (rev >= 2) {
        uint32_t len = rd32(rsdp + 20);

        rsdp_ok = rsdp_ok && len >= 36 && len <= 4096 && sum_ok(rsdp, len);
    }
    if (!rsdp_ok)
        all_ok = 0;
    if (verbose) {
        copy_str(oem, rsdp + 9, 6);
        line_begin("acpi");
        kv_hex("rsdp", rsdp);
        kv_str("source", source);
        kv_dec("revision", rev);
        put_quoted("oem", oem);
        kv_str("checksum", rsdp_ok ? "ok" : "bad");
        line_end();
    }

    root = xsdt ? rd64(rsdp + 24) : rd32(rsdp + 16);
    entry_size = xsdt ? 8 : 4;
    root_len = check_table(root, verbose, xsdt ? "XSDT" : "RSDT");
    if (!root_len)
        return 0;
    for (i = 0; SDT_HEADER_LEN + (i + 1) * entry_size <= root_len; i++) {
        uint64_t e = root + SDT_HEADER_LEN + i * entry_size;
        uint64_t t = xsdt ? rd64(e) : rd32(e);
        uint32_t len = check_table(t, verbose, NULL);

        if (!len)
            continue;
        if (sig_is(t, "APIC", 4) && !acpi.have_madt)
            parse_madt(t, len);
        else if (sig_is(t, "FACP", 4) && !acpi.have_fadt)
            parse_fadt(t, len);
        else if (sig_is(t, "MCFG", 4) && !acpi.mcfg) {
            acpi.mcfg = t;
            acpi.mcfg_len = len;
        }
    }
    if (acpi.have_fadt && acpi.dsdt && !check_table(acpi.dsdt, verbose, "DSDT"))
        acpi.dsdt = 0;
    if (verbose) {
        if (acpi.have_madt)
            print_madt();
        if (acpi.have_fadt)
            print_fadt();
    }
    return all_ok;
}

NORETURN void test_acpi(uint32_t kind, uint64_t info)
{
    int ok = acpi_scan(kind, info, 1);

    if (!acpi.rsdp)
        fail("no RSDP", "", 0);
    if (!ok)
        fail("bad ACPI checksum", "", 0);
    if (!acpi.have_madt)
        fail("no MADT", "", 0);
    if (acpi.ncpus == 0)
        fail("no enabled CPU in the MADT", "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* Power-off.                                                           */

/*
 * SLP_TYPa of \_S5: look in the AML for "_S5_" followed by a PackageOp
 * and take the first element.  Returns -1 if there is none.
 */
static int find_s5(uint64_t table)
{
    uint32_t len = rd32(table + 4), i;

    for (i = SDT_HEADER_LEN; i + 8 <= len; i++) {
        uint64_t p = table + i;
        uint8_t lead;

        if (!sig_is(p, "_S5_", 4) || rd8(p + 4) != 0x12)
            continue;
        lead = rd8(p + 5);                      /* PkgLength */
        p += 5 + 1 + (lead >> 6);               /* past PkgLength */
        p += 1;                                 /* NumElements */
        if (p + 2 > table + len)
            return -1;
        switch (rd8(p)) {
        case 0x00: return 0;                    /* ZeroOp */
        case 0x01: return 1;                    /* OneOp */
        case 0x0a: return rd8(p + 1);           /* BytePrefix */
        case 0x0b: return rd8(p + 1);           /* WordPrefix, low byte */
        case 0x0c: return rd8(p + 1);           /* DWordPrefix, low byte */
        default:   return -1;
        }
    }
    return -1;
}

static void gas_write(const struct gas *g, uint32_t v, unsigned width)
{
    if (g->space == GAS_IO) {
        if (width == 8)
            port_outb((uint16_t)g->addr, (uint8_t)v);
        else
            port_outw((uint16_t)g->addr, (uint16_t)v);
    } else if (width == 8) {
        mmio_write8(g->addr, (uint8_t)v);
    } else {
        mmio_write16(g->addr, (uint16_t)v);
    }
}

static uint32_t gas_read16(const struct gas *g)
{
    if (g->space == GAS_IO)
        return port_inw((uint16_t)g->addr);
    return *(volatile uint16_t *)g->addr;
}

NORETURN void test_poweroff(uint32_t kind, uint64_t info)
{
    int slp_typ;
    uint64_t t0;

    acpi_scan(kind, info, 0);
    if (!acpi.rsdp)
        fail("no RSDP", "", 0);
    if (!acpi.have_fadt)
        fail("no FADT", "", 0);
    if (!acpi.dsdt)
        fail("no usable DSDT", "", 0);
    slp_typ = find_s5(acpi.dsdt);
    if (slp_typ < 0)
        fail("no \\_S5 package in the DSDT", "", 0);
    slp_typ &= 7;

    if ((acpi.fadt_flags & FADT_HW_REDUCED) && acpi.sleep_control.addr) {
        line_begin("poweroff");
        kv_str("via", "sleep_control");
        kv_dec("slp_typ", (uint64_t)slp_typ);
        put_gas("reg", &acpi.sleep_control);
        line_end();
        gas_write(&acpi.sleep_control, ((uint32_t)slp_typ << 2) | SLEEP_CONTROL_SLP_EN, 8);
    } else if (acpi.pm1a_cnt.addr) {
        uint32_t v = gas_read16(&acpi.pm1a_cnt);

        v = (v & ~(PM1_CNT_SLP_TYP_MASK | PM1_CNT_SLP_EN)) | ((uint32_t)slp_typ << 10);
        line_begin("poweroff");
        kv_str("via", "pm1a");
        kv_dec("slp_typ", (uint64_t)slp_typ);
        put_gas("reg", &acpi.pm1a_cnt);
        line_end();
        gas_write(&acpi.pm1a_cnt, v, 16);
        gas_write(&acpi.pm1a_cnt, v | PM1_CNT_SLP_EN, 16);
    } else {
        fail("no sleep control register and no PM1a control block", "", 0);
    }

    /* Give an asynchronous power-off a moment to take effect. */
    t0 = rdtsc();
    while (rdtsc() - t0 < 2 * tsc_hz())
        cpu_relax();
    fail("poweroff did not happen", "", 0);
}
