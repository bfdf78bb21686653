/*
 * PCI (ring 3): configuration space, enumeration, BARs, capabilities; the
 * pci workload.  Also the allocator for the RAM the virtio workloads hand
 * to devices.
 *
 * Configuration space is reached through ECAM when the firmware or VMM
 * describes it (ACPI MCFG table, or else a constant _CBA object of the
 * host bridge in the DSDT), otherwise through configuration mechanism #1
 * at 0xcf8/0xcfc.  ECAM is plain MMIO from ring 3 (one exit per access),
 * while port I/O from ring 3 may have to go through the I/O gate (two
 * gate calls per access), so ECAM is preferred.
 *
 * BARs the firmware or VMM assigned are used as they are.  A memory BAR
 * left at 0 (or placed above 4 GiB, beyond the identity map) is given an
 * address from the host bridge's 32-bit memory window in the DSDT, if
 * one is described, the way firmware would.
 */
#include "probe.h"

#define PCI_CF8             0xcf8
#define PCI_CFC             0xcfc

#define CFG_ID              0x00
#define CFG_COMMAND         0x04
#define CFG_STATUS          0x06
#define CFG_CLASS_REV       0x08
#define CFG_HEADER_TYPE     0x0e
#define CFG_BAR0            0x10
#define CFG_SECONDARY_BUS   0x19
#define CFG_CAP_PTR         0x34

#define CMD_IO              0x0001
#define CMD_MEMORY          0x0002
#define CMD_MASTER          0x0004
#define CMD_INTX_DISABLE    0x0400
#define STATUS_CAP_LIST     0x0010


struct pci_dev pci_devs[PCI_MAX_DEVS];
unsigned pci_ndevs;

static enum { CFG_NONE, CFG_ECAM, CFG_CF8 } cfg_mode;
static uint64_t ecam_base;
static unsigned ecam_bus_first, ecam_bus_last;
static const char *ecam_source = "none";
static uint8_t bus_seen[256 / 8];
static int pci_ready;
static unsigned too_many;               /* functions beyond PCI_MAX_DEVS */

static uint64_t phys(uint64_t a)
{
    __asm__("" : "+r"(a));
    return a;
}

static uint8_t rd8(uint64_t a)   { return *(const volatile uint8_t *)phys(a); }
static uint32_t rd32(uint64_t a) { return *(const volatile uint32_t *)phys(a); }
static uint64_t rd64(uint64_t a) { return *(const volatile uint64_t *)phys(a); }

/* ------------------------------------------------------------------ */
/* DMA arena.                                                           */

static uint64_t dma_next = DMA_ARENA;

static void zero_mem(uint64_t addr, uint64_t size)
{
    uint64_t words = size / 8, rest = size % 8;
    uint8_t *tail;

    __asm__ volatile("rep stosq" : "+D"(addr), "+c"(words) : "a"(0ULL) : "memory");
    tail = (uint8_t *)addr;
    while (rest--)
        *tail++ = 0;
}

void *dma_alloc(uint64_t size, uint64_t align)
{
    uint64_t a;

    if (align < 16)
        align = 16;
    a = (dma_next + align - 1) & ~(align - 1);
    if (a + size > DMA_ARENA_END || a + size < a)
        fail("out of DMA memory", "", 0);
    dma_next = a + size;
    zero_mem(a, size);
    return (void *)a;
}

uint64_t dma_mark(void)
{
    return dma_next;
}

void dma_release(uint64_t mark)
{
    dma_next = mark;
}

/* ------------------------------------------------------------------ */
/* Configuration space.                                                 */

static uint64_t ecam_addr(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
    return ecam_base + ((uint64_t)bus << 20) + ((uint64_t)dev << 15) +
           ((uint64_t)fn << 12) + off;
}

static uint32_t cf8_addr(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
    return 0x80000000u | bus << 16 | dev << 11 | fn << 8 | (off & 0xfc);
}

static uint32_t cfg_read32(unsigned bus, unsigned dev, unsigned fn, unsigned off)
{
    off &= 0xffc;
    if (cfg_mode == CFG_ECAM)
        return mmio_read32(ecam_addr(bus, dev, fn, off));
    if (cfg_mode == CFG_CF8 && off < 256) {
        port_outl(PCI_CF8, cf8_addr(bus, dev, fn, off));
        return port_inl(PCI_CFC);
    }
    return 0xffffffffu;
}

static void cfg_write32(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint32_t v)
{
    off &= 0xffc;
    if (cfg_mode == CFG_ECAM) {
        mmio_write32(ecam_addr(bus, dev, fn, off), v);
    } else if (cfg_mode == CFG_CF8 && off < 256) {
        port_outl(PCI_CF8, cf8_addr(bus, dev, fn, off));
        port_outl(PCI_CFC, v);
    }
}

static void cfg_write16(unsigned bus, unsigned dev, unsigned fn, unsigned off, uint16_t v)
{
    off &= 0xffe;
    if (cfg_mode == CFG_ECAM) {
        mmio_write16(ecam_addr(bus, dev, fn, off), v);
    } else if (cfg_mode == CFG_CF8 && off < 256) {
        port_outl(PCI_CF8, cf8_addr(bus, dev, fn, off));
        port_outw((uint16_t)(PCI_CFC + (off & 2)), v);
    }
}

uint32_t pci_read32(const struct pci_dev *d, unsigned off)
{
    return cfg_read32(d->bus, d->dev, d->fn, off);
}

uint16_t pci_read16(const struct pci_dev *d, unsigned off)
{
    return (uint16_t)(pci_read32(d, off) >> (8 * (off & 2)));
}

uint8_t pci_read8(const struct pci_dev *d, unsigned off)
{
    return (uint8_t)(pci_read32(d, off) >> (8 * (off & 3)));
}

void pci_write32(const struct pci_dev *d, unsigned off, uint32_t v)
{
    cfg_write32(d->bus, d->dev, d->fn, off, v);
}

void pci_write16(const struct pci_dev *d, unsigned off, uint16_t v)
{
    cfg_write16(d->bus, d->dev, d->fn, off, v);
}

unsigned pci_find_cap(const struct pci_dev *d, uint8_t id, unsigned after)
{
    unsigned off, guard;

    if (!(pci_read16(d, CFG_STATUS) & STATUS_CAP_LIST))
        return 0;
    off = after ? pci_read8(d, after + 1) : pci_read8(d, CFG_CAP_PTR);
    for (guard = 0; guard < 48 && off >= 0x40 && off < 0x100; guard++) {
        off &= 0xfc;
        if (pci_read8(d, off) == id)
            return off;
        off = pci_read8(d, off + 1);
    }
    return 0;
}

struct pci_dev *pci_find(uint16_t vendor, uint16_t device)
{
    return pci_find_nth(vendor, device, 0);
}

struct pci_dev *pci_find_nth(uint16_t vendor, uint16_t device, unsigned nth)
{
    unsigned i;

    for (i = 0; i < pci_ndevs; i++)
        if (pci_devs[i].vendor == vendor && pci_devs[i].device == device && nth-- == 0)
            return &pci_devs[i];
    return NULL;
}

void pci_enable(const struct pci_dev *d)
{
    uint16_t cmd = pci_read16(d, CFG_COMMAND);

    pci_write16(d, CFG_COMMAND, (uint16_t)(cmd | CMD_MEMORY | CMD_MASTER | CMD_INTX_DISABLE));
}

/* ------------------------------------------------------------------ */
/* Finding the configuration mechanism.                                 */

/* An AML integer at a: ZeroOp, OneOp, Byte/Word/DWord/QWordPrefix. */
static int aml_integer(uint64_t a, uint64_t *v)
{
    switch (rd8(a)) {
    case 0x00: *v = 0; return 1;
    case 0x01: *v = 1; return 1;
    case 0x0a: *v = rd8(a + 1); return 1;
    case 0x0b: *v = rd8(a + 1) | (uint64_t)rd8(a + 2) << 8; return 1;
    case 0x0c: *v = rd32(a + 1); return 1;
    case 0x0e: *v = rd64(a + 1); return 1;
    default:   return 0;
    }
}

/*
 * The host bridge's _CBA in the DSDT, in either of the two simple forms
 * firmware uses: Name (_CBA, value) or Method (_CBA) { Return (value) }.
 */
static uint64_t dsdt_cba(void)
{
    uint64_t t = acpi.dsdt, v;
    uint32_t len, i;

    if (!t)
        return 0;
    len = rd32(t + 4);
    for (i = 36 + 1; i + 16 <= len; i++) {
        uint64_t p = t + i;

        if (rd8(p) != '_' || rd8(p + 1) != 'C' || rd8(p + 2) != 'B' || rd8(p + 3) != 'A')
            continue;
        if (rd8(p - 1) == 0x08 && aml_integer(p + 4, &v))           /* NameOp */
            return v;
        if (rd8(p + 5) == 0xa4 && aml_integer(p + 6, &v))           /* flags, ReturnOp */
            return v;
    }
    return 0;
}

/*
 * The largest 32-bit memory window above 2 GiB among the DSDT's DWord
 * Memory address space descriptors (the host bridge's _CRS), for BARs
 * that nobody assigned.
 */
static int dsdt_mem_window(uint64_t *base, uint64_t *end)
{
    uint64_t t = acpi.dsdt, best = 0;
    uint32_t len, i;

    if (!t)
        return 0;
    len = rd32(t + 4);
    for (i = 36; i + 26 <= len; i++) {
        uint64_t p = t + i, lo, hi;

        /* Large item 0x87, length 0x17, resource type 0 (memory). */
        if (rd8(p) != 0x87 || rd8(p + 1) != 0x17 || rd8(p + 2) != 0 || rd8(p + 3) != 0)
            continue;
        lo = rd32(p + 10);
        hi = rd32(p + 14);
        if (lo < 0x80000000u || hi <= lo || hi - lo + 1 < 0x100000)
            continue;
        if (hi - lo + 1 > best) {
            best = hi - lo + 1;
            *base = lo;
            *end = hi + 1;
        }
    }
    return best != 0;
}

static void find_config_mechanism(void)
{
    uint64_t cba;

    cfg_mode = CFG_NONE;
    if (acpi.mcfg && acpi.mcfg_len >= 44 + 16) {
        uint64_t e;

        for (e = acpi.mcfg + 44; e + 16 <= acpi.mcfg + acpi.mcfg_len; e += 16) {
            uint64_t base = rd64(e);
            unsigned seg = rd8(e + 8) | rd8(e + 9) << 8;
            unsigned first = rd8(e + 10), last = rd8(e + 11);

            /* base is where bus 0 would be, whatever the first bus. */
            if (seg != 0 || first > last || base + ((uint64_t)(last + 1) << 20) > MAPPED_LIMIT)
                continue;
            ecam_base = base;
            ecam_bus_first = first;
            ecam_bus_last = last;
            ecam_source = "mcfg";
            cfg_mode = CFG_ECAM;
            return;
        }
    }
    cba = dsdt_cba();
    if (cba && cba + (256ULL << 20) <= MAPPED_LIMIT) {
        ecam_base = cba;
        ecam_bus_first = 0;
        ecam_bus_last = 255;
        ecam_source = "dsdt";
        cfg_mode = CFG_ECAM;
        return;
    }
    /* Configuration mechanism #1: 0xcf8 keeps what is written to it. */
    port_outl(PCI_CF8, 0x80000000u);
    if (port_inl(PCI_CF8) == 0x80000000u) {
        cfg_mode = CFG_CF8;
        ecam_source = "none";
        ecam_bus_first = 0;
        ecam_bus_last = 255;
    }
}

/* ------------------------------------------------------------------ */
/* Enumeration and BARs.                                                */

static void size_bars(struct pci_dev *d)
{
    unsigned type = d->hdr_type & 0x7f, i;
    uint16_t cmd;

    d->nbars = type == 0 ? 6 : type == 1 ? 2 : 0;
    if (!d->nbars)
        return;
    cmd = pci_read16(d, CFG_COMMAND);
    pci_write16(d, CFG_COMMAND, (uint16_t)(cmd & ~(CMD_IO | CMD_MEMORY)));
    for (i = 0; i < d->nbars; i++) {
        unsigned off = CFG_BAR0 + 4 * i;
        uint32_t orig = pci_read32(d, off), mask;
        struct pci_bar *b = &d->bar[i];

        pci_write32(d, off, 0xffffffffu);
        mask = pci_read32(d, off);
        pci_write32(d, off, orig);
        if (mask == 0 || mask == 0xffffffffu)
            continue;
        if (orig & 1) {
            b->io = 1;
            b->size = (uint16_t)(~(mask & ~3u) + 1);
            b->addr = orig & ~3u;
            b->how = b->addr ? "firmware" : "unassigned";
            continue;
        }
        b->pref = (orig >> 3) & 1;
        if (((orig >> 1) & 3) == 2 && i + 1 < d->nbars) {
            uint32_t hi = pci_read32(d, off + 4), hmask;
            uint64_t full;

            pci_write32(d, off + 4, 0xffffffffu);
            hmask = pci_read32(d, off + 4);
            pci_write32(d, off + 4, hi);
            full = (uint64_t)hmask << 32 | (mask & ~0xfu);
            b->is64 = 1;
            b->size = ~full + 1;
            b->addr = (uint64_t)hi << 32 | (orig & ~0xfu);
            i++;
        } else {
            b->size = (uint32_t)(~(mask & ~0xfu) + 1);
            b->addr = orig & ~0xfu;
        }
        b->how = b->addr ? "firmware" : "unassigned";
    }
    pci_write16(d, CFG_COMMAND, cmd);
}

static void scan_bus(unsigned bus, unsigned depth)
{
    unsigned dev, fn;

    if (bus < ecam_bus_first || bus > ecam_bus_last || (bus_seen[bus / 8] & (1 << (bus % 8))))
        return;
    bus_seen[bus / 8] |= (uint8_t)(1 << (bus % 8));
    for (dev = 0; dev < 32; dev++) {
        for (fn = 0; fn < 8; fn++) {
            uint32_t id = cfg_read32(bus, dev, fn, CFG_ID);
            uint8_t hdr;
            struct pci_dev *d;

            if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) {
                if (fn == 0)
                    break;
                continue;
            }
            hdr = (uint8_t)(cfg_read32(bus, dev, fn, CFG_HEADER_TYPE & ~3u) >> 16);
            if (pci_ndevs < PCI_MAX_DEVS) {
                d = &pci_devs[pci_ndevs++];
                memset(d, 0, sizeof(*d));
                d->bus = (uint8_t)bus;
                d->dev = (uint8_t)dev;
                d->fn = (uint8_t)fn;
                d->vendor = (uint16_t)id;
                d->device = (uint16_t)(id >> 16);
                d->class_code = cfg_read32(bus, dev, fn, CFG_CLASS_REV) >> 8;
                d->hdr_type = hdr;
                size_bars(d);
            } else {
                too_many++;
            }
            if ((hdr & 0x7f) == 1 && depth < 8) {
                unsigned sec = (cfg_read32(bus, dev, fn, CFG_SECONDARY_BUS & ~3u) >> 8) & 0xff;

                if (sec > bus)
                    scan_bus(sec, depth + 1);
            }
            if (fn == 0 && !(hdr & 0x80))
                break;
        }
    }
}

/* Does [a, a + size) overlap a memory BAR someone else already placed? */
static int overlaps_bar(uint64_t a, uint64_t size, uint64_t *end)
{
    unsigned i, j;

    for (i = 0; i < pci_ndevs; i++) {
        for (j = 0; j < pci_devs[i].nbars; j++) {
            const struct pci_bar *b = &pci_devs[i].bar[j];

            if (b->io || !b->size || !b->addr || b->addr + b->size > MAPPED_LIMIT)
                continue;
            if (a < b->addr + b->size && b->addr < a + size) {
                *end = b->addr + b->size;
                return 1;
            }
        }
    }
    return 0;
}

/* Give unassigned (or unreachable) memory BARs an address below 4 GiB. */
static unsigned assign_bars(void)
{
    uint64_t base = 0, end = 0;
    int have_window = dsdt_mem_window(&base, &end);
    unsigned i, j, assigned = 0;

    for (i = 0; i < pci_ndevs; i++) {
        struct pci_dev *d = &pci_devs[i];

        for (j = 0; j < d->nbars; j++) {
            struct pci_bar *b = &d->bar[j];
            uint64_t a, stop;
            uint16_t orig_cmd;

            if (b->io || !b->size || (b->addr && b->addr + b->size <= MAPPED_LIMIT))
                continue;
            if (!have_window) {
                b->how = b->addr ? "above_4g" : "unassigned";
                b->addr = 0;
                continue;
            }
            a = (base + b->size - 1) & ~(b->size - 1);
            while (a + b->size <= end && overlaps_bar(a, b->size, &stop))
                a = (stop + b->size - 1) & ~(b->size - 1);
            if (a + b->size > end || b->size > end - base) {
                b->how = "no_room";
                b->addr = 0;
                continue;
            }
            orig_cmd = pci_read16(d, CFG_COMMAND);
            pci_write16(d, CFG_COMMAND, (uint16_t)(orig_cmd & ~CMD_MEMORY));
            pci_write32(d, CFG_BAR0 + 4 * j, (uint32_t)a);
            if (b->is64)
                pci_write32(d, CFG_BAR0 + 4 * j + 4, (uint32_t)(a >> 32));
            pci_write16(d, CFG_COMMAND, orig_cmd);
            b->addr = a;
            b->how = "probe";
            assigned++;
        }
    }
    return assigned;
}

static void put_hexn(uint64_t v, unsigned digits)
{
    static const char hex[] = "0123456789abcdef";

    put_str("0x");
    while (digits--)
        put_char(hex[(v >> (4 * digits)) & 0xf]);
}

static void put_digits(unsigned v, unsigned digits)
{
    static const char hex[] = "0123456789abcdef";

    while (digits--)
        put_char(hex[(v >> (4 * digits)) & 0xf]);
}

void pci_put_bdf(const struct pci_dev *d)
{
    put_digits(d->bus, 2);
    put_char(':');
    put_digits(d->dev, 2);
    put_char('.');
    put_digits(d->fn, 1);
}

static void print_dev(const struct pci_dev *d, int bars)
{
    unsigned j;

    line_begin("pci");
    put_str(" dev=");
    pci_put_bdf(d);
    put_str(" vendor=");
    put_hexn(d->vendor, 4);
    put_str(" device=");
    put_hexn(d->device, 4);
    put_str(" class=");
    put_hexn(d->class_code, 6);
    kv_hex("header", d->hdr_type);
    line_end();
    if (!bars)
        return;
    for (j = 0; j < d->nbars; j++) {
        const struct pci_bar *b = &d->bar[j];

        if (!b->size)
            continue;
        line_begin("pci");
        put_str(" dev=");
        pci_put_bdf(d);
        kv_dec("bar", j);
        kv_str("type", b->io ? "io" : b->is64 ? "mem64" : "mem32");
        kv_dec("pref", b->pref);
        kv_hex("addr", b->addr);
        kv_hex("size", b->size);
        kv_str("assigned", b->how);
        line_end();
    }
}

const char *pci_init(const struct options *o, int verbose)
{
    unsigned i, assigned;

    if (!pci_ready) {
        acpi_scan(o->boot_kind, o->boot_info, 0);
        find_config_mechanism();
        if (cfg_mode == CFG_NONE)
            return "no PCI configuration mechanism (no MCFG, no _CBA, no 0xcf8)";
        pci_ndevs = 0;
        scan_bus(ecam_bus_first, 0);
        assigned = assign_bars();
        pci_ready = 1;
        if (verbose) {
            line_begin("pci");
            kv_str("config", cfg_mode == CFG_ECAM ? "ecam" : "cf8");
            if (cfg_mode == CFG_ECAM)
                kv_hex("ecam", ecam_base);
            kv_str("source", ecam_source);
            put_str(" buses=");
            put_dec(ecam_bus_first);
            put_char('-');
            put_dec(ecam_bus_last);
            kv_dec("functions", pci_ndevs + too_many);
            kv_dec("bars_assigned", assigned);
            line_end();
            for (i = 0; i < pci_ndevs; i++)
                print_dev(&pci_devs[i], verbose >= 2);
        }
    }
    return NULL;
}

NORETURN void test_pci(const struct options *o)
{
    const char *err = pci_init(o, 2);
    unsigned i;

    if (err)
        fail(err, "", 0);
    for (i = 0; i < pci_ndevs; i++)
        if ((pci_devs[i].class_code >> 8) == 0x0600)
            pass();
    fail("no host bridge found", "", 0);
}
