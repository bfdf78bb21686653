/*
 * virtio over PCI, modern transport (virtio 1.2, 4.1), or over MMIO
 * (4.2, version 2), split virtqueues (2.7), all in ring 3; and the rng
 * workload.  The device workloads see one interface whatever the
 * transport: virtio_init() and virtio_find() pick it (MMIO when the
 * command line names virtio_mmio.device= windows, else PCI), and each
 * transport is a table of register operations (struct virtio_ops).
 * Interrupts: MSI-X on PCI (probe.irq=msix), the device's IOAPIC line on
 * MMIO (probe.irq=ioapic), or none (polling).  Up to VIRTIO_MAX_QUEUES
 * queues per device (blk and rng use one, net two, vsock and balloon three).
 *
 * The hot paths touch only RAM: requests go into the descriptor table and
 * the available ring, completions are found by watching the used ring.
 * The device is told about new requests with one notify write per batch,
 * and not at all when it says it does not need one (VIRTQ_USED_F_NO_NOTIFY
 * or, with VIRTIO_F_EVENT_IDX, avail_event).  In polling mode the device
 * is asked not to interrupt; with MSI-X (probe.irq=msix) queue i's
 * vector is IRQ_VECTOR_BASE + 1 + i and ring 3 waits, with interrupts on,
 * for the ring-0 handler to count it.
 */
#include "virtio.h"

/* Common configuration structure (4.1.4.3) */
#define CC_DFSELECT         0x00
#define CC_DF               0x04
#define CC_GFSELECT         0x08
#define CC_GF               0x0c
#define CC_MSIX_CONFIG      0x10
#define CC_NUM_QUEUES       0x12
#define CC_STATUS           0x14
#define CC_CFG_GENERATION   0x15
#define CC_Q_SELECT         0x16
#define CC_Q_SIZE           0x18
#define CC_Q_MSIX           0x1a
#define CC_Q_ENABLE         0x1c
#define CC_Q_NOTIFY_OFF     0x1e
#define CC_Q_DESC           0x20
#define CC_Q_DRIVER         0x28
#define CC_Q_DEVICE         0x30
#define CC_MIN_LEN          0x38

/* virtio PCI capability (vendor-specific, ID 0x09) */
#define PCI_CAP_VENDOR      0x09
#define PCI_CAP_MSIX        0x11
#define VCAP_CFG_TYPE       3
#define VCAP_BAR            4
#define VCAP_OFFSET         8
#define VCAP_LENGTH         12
#define VCAP_NOTIFY_MULT    16
#define VCAP_COMMON         1
#define VCAP_NOTIFY         2
#define VCAP_ISR            3
#define VCAP_DEVICE         4

#define MSIX_CTRL_ENABLE    0x8000
#define MSIX_CTRL_MASK_ALL  0x4000
#define MSI_NO_VECTOR       0xffff
#define MSI_ADDRESS_BASE    0xfee00000u
#define MSIX_ENTRY_CONFIG   0
#define MSIX_ENTRY_QUEUE0   1

/* virtio-mmio registers (4.2.2), all 32 bits wide */
#define MM_MAGIC            0x000
#define MM_VERSION          0x004
#define MM_DEVICE_ID        0x008
#define MM_DF               0x010
#define MM_DF_SEL           0x014
#define MM_GF               0x020
#define MM_GF_SEL           0x024
#define MM_Q_SEL            0x030
#define MM_Q_NUM_MAX        0x034
#define MM_Q_NUM            0x038
#define MM_Q_READY          0x044
#define MM_NOTIFY           0x050
#define MM_INT_STATUS       0x060
#define MM_INT_ACK          0x064
#define MM_STATUS           0x070
#define MM_Q_DESC           0x080
#define MM_Q_DRIVER         0x090
#define MM_Q_DEVICE         0x0a0
#define MM_CFG_GEN          0x0fc
#define MM_CONFIG           0x100
#define MM_MAGIC_VALUE      0x74726976u /* "virt" */
#define MM_MAX_DEVS         32
#define MM_IRQ_SLOT         1           /* every queue's irq_count[] slot: the line's vector */
#define IOAPIC_DEFAULT      0xfec00000u
#define IOAPIC_PINS         24

/* What differs between transports; everything else is shared. */
struct virtio_ops {
    uint8_t (*status)(struct virtio *v);
    void (*set_status)(struct virtio *v, uint8_t s);
    uint8_t (*generation)(struct virtio *v);
    /* 32-bit register access, and where the feature registers are:
     * device features select / word, driver features select / word */
    uint32_t (*r32)(struct virtio *v, unsigned off);
    void (*w32)(struct virtio *v, unsigned off, uint32_t x);
    unsigned df_sel, df, gf_sel, gf;
    /* Interrupts set up (MSI-X) or turned off, before the queues. */
    const char *(*irqs)(struct virtio *v);
    /* Select queue qi: its maximum size, 0 if it is not available. */
    uint16_t (*queue_max)(struct virtio *v, unsigned qi);
    /* Program the selected queue (size, rings, vector), find its notify
     * address, make it ready. */
    const char *(*queue_enable)(struct virtio *v, struct virtq *q);
    void (*print_where)(const struct virtio *v);
    void (*print_regs)(const struct virtio *v);
};

static uint8_t cc_r8(struct virtio *v, unsigned off)   { return mmio_read8(v->common + off); }
static uint16_t cc_r16(struct virtio *v, unsigned off) { return mmio_read16(v->common + off); }
static uint32_t cc_r32(struct virtio *v, unsigned off) { return mmio_read32(v->common + off); }
static void cc_w8(struct virtio *v, unsigned off, uint8_t x)   { mmio_write8(v->common + off, x); }
static void cc_w16(struct virtio *v, unsigned off, uint16_t x) { mmio_write16(v->common + off, x); }
static void cc_w32(struct virtio *v, unsigned off, uint32_t x) { mmio_write32(v->common + off, x); }

static void cc_w64(struct virtio *v, unsigned off, uint64_t x)
{
    cc_w32(v, off, (uint32_t)x);
    cc_w32(v, off + 4, (uint32_t)(x >> 32));
}

static uint32_t mm_r(struct virtio *v, unsigned off) { return mmio_read32(v->mmio + off); }
static void mm_w(struct virtio *v, unsigned off, uint32_t x) { mmio_write32(v->mmio + off, x); }

static void mm_w64(struct virtio *v, unsigned off, uint64_t x)
{
    mm_w(v, off, (uint32_t)x);
    mm_w(v, off + 4, (uint32_t)(x >> 32));
}

uint8_t virtio_status(struct virtio *v)
{
    return v->ops->status(v);
}

void virtio_set_status(struct virtio *v, uint8_t s)
{
    v->ops->set_status(v, s);
}

uint8_t vcfg_generation(struct virtio *v)
{
    return v->ops->generation(v);
}

void vq_notify(struct virtq *q)
{
    if (q->notify32)
        mmio_write32(q->notify_addr, q->index);
    else
        mmio_write16(q->notify_addr, q->index);
}

uint8_t vcfg8(struct virtio *v, unsigned off)   { return mmio_read8(v->devcfg + off); }
uint16_t vcfg16(struct virtio *v, unsigned off) { return mmio_read16(v->devcfg + off); }
uint32_t vcfg32(struct virtio *v, unsigned off) { return mmio_read32(v->devcfg + off); }

void vcfg_w32(struct virtio *v, unsigned off, uint32_t x) { mmio_write32(v->devcfg + off, x); }

uint64_t vcfg64(struct virtio *v, unsigned off)
{
    uint8_t g0, g1;
    uint64_t x;
    unsigned tries = 0;

    do {
        g0 = vcfg_generation(v);
        x = mmio_read32(v->devcfg + off) | (uint64_t)mmio_read32(v->devcfg + off + 4) << 32;
        g1 = vcfg_generation(v);
    } while (g0 != g1 && ++tries < 100);
    return x;
}

uint64_t virtio_irqs(const struct virtio *v)
{
    uint64_t n = 0;
    unsigned i;

    (void)v;
    for (i = 0; i < IRQ_VECTORS; i++)
        n += irq_count[i];
    return n;
}

const char *virtio_name(uint16_t device_id)
{
    switch (device_id) {
    case VIRTIO_ID_NET:     return "virtio-net";
    case VIRTIO_ID_BLK:     return "virtio-blk";
    case VIRTIO_ID_RNG:     return "virtio-rng";
    case VIRTIO_ID_BALLOON: return "virtio-balloon";
    case VIRTIO_ID_VSOCK:   return "virtio-vsock";
    default:                return "virtio";
    }
}

/* ------------------------------------------------------------------ */
/* PCI transport: finding the device and its structures.                */

/* Address of [offset, offset + length) in a memory BAR, or 0. */
static uint64_t bar_region(const struct pci_dev *d, unsigned bar, uint32_t offset, uint32_t length)
{
    const struct pci_bar *b;

    if (bar > 5)
        return 0;
    b = &d->bar[bar];
    if (b->io || !b->addr || (uint64_t)offset + length > b->size)
        return 0;
    return b->addr + offset;
}

static const char *missing_device(uint16_t device_id)
{
    switch (device_id) {
    case VIRTIO_ID_NET:     return "no virtio-net device (1af4:1041)";
    case VIRTIO_ID_BLK:     return "no virtio-blk device (1af4:1042)";
    case VIRTIO_ID_RNG:     return "no virtio-rng device (1af4:1044)";
    case VIRTIO_ID_BALLOON: return "no virtio-balloon device (1af4:1045)";
    case VIRTIO_ID_VSOCK:   return "no virtio-vsock device (1af4:1053)";
    default:                return "no such virtio device";
    }
}

static const struct virtio_ops pci_ops;
static const struct virtio_ops mmio_ops;

static const char *pci_find_virtio(struct virtio *v, uint16_t device_id, unsigned nth)
{
    struct pci_dev *d = pci_find_nth(VIRTIO_VENDOR, device_id, nth);
    unsigned cap = 0;

    if (!d)
        return missing_device(device_id);
    v->ops = &pci_ops;
    v->pci = d;
    while ((cap = pci_find_cap(d, PCI_CAP_VENDOR, cap)) != 0) {
        uint8_t type = pci_read8(d, cap + VCAP_CFG_TYPE);
        uint8_t caplen = pci_read8(d, cap + 2);
        unsigned bar = pci_read8(d, cap + VCAP_BAR);
        uint32_t off = pci_read32(d, cap + VCAP_OFFSET);
        uint32_t len = pci_read32(d, cap + VCAP_LENGTH);
        uint64_t a;

        if (caplen < 16)
            continue;
        a = bar_region(d, bar, off, len);
        /* The first usable structure of each type counts. */
        if (type == VCAP_COMMON && !v->common && len >= CC_MIN_LEN) {
            v->common = a;
        } else if (type == VCAP_NOTIFY && !v->notify && caplen >= 20 && a) {
            v->notify = a;
            v->notify_len = len;
            v->notify_mult = pci_read32(d, cap + VCAP_NOTIFY_MULT);
        } else if (type == VCAP_ISR && !v->isr && len >= 1) {
            v->isr = a;
        } else if (type == VCAP_DEVICE && !v->devcfg && a) {
            v->devcfg = a;
            v->devcfg_len = len;
        }
    }
    if (!v->common)
        return "no usable virtio common configuration capability";
    if (!v->notify)
        return "no usable virtio notification capability";
    if (!v->isr)
        return "no usable virtio ISR capability";
    v->msix_cap = pci_find_cap(d, PCI_CAP_MSIX, 0);
    pci_enable(d);
    return NULL;
}

/* MSI-X table entries in use: the table's size, at most IRQ_VECTORS. */
static unsigned msix_entries(const struct virtio *v)
{
    return v->msix_size < IRQ_VECTORS ? v->msix_size : IRQ_VECTORS;
}

static const char *setup_msix(struct virtio *v)
{
    const struct pci_dev *d = v->pci;
    uint16_t ctrl;
    uint32_t tbl;
    unsigned e, n;

    if (!v->msix_cap)
        return "probe.irq=msix: the device has no MSI-X capability";
    ctrl = pci_read16(d, v->msix_cap + 2);
    v->msix_size = (ctrl & 0x7ff) + 1u;
    if (v->msix_size < 2)
        return "probe.irq=msix: fewer than 2 MSI-X table entries";
    n = msix_entries(v);
    tbl = pci_read32(d, v->msix_cap + 4);
    v->msix_table = bar_region(d, tbl & 7, tbl & ~7u, 16 * n);
    if (!v->msix_table)
        return "probe.irq=msix: MSI-X table not in a usable BAR";
    v->apic_id = lapic_setup_for_msi();
    for (e = 0; e < n; e++) {
        uint64_t ent = v->msix_table + 16 * e;

        mmio_write32(ent + 0, MSI_ADDRESS_BASE | v->apic_id << 12);
        mmio_write32(ent + 4, 0);
        mmio_write32(ent + 8, IRQ_VECTOR_BASE + e);     /* fixed, edge */
        mmio_write32(ent + 12, 0);                      /* unmasked */
    }
    pci_write16(d, v->msix_cap + 2, (uint16_t)((ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_MASK_ALL));
    cc_w16(v, CC_MSIX_CONFIG, MSIX_ENTRY_CONFIG);
    if (cc_r16(v, CC_MSIX_CONFIG) != MSIX_ENTRY_CONFIG)
        return "the device refused the configuration MSI-X vector";
    return NULL;
}

static uint8_t pci_status(struct virtio *v) { return cc_r8(v, CC_STATUS); }
static void pci_set_status(struct virtio *v, uint8_t s) { cc_w8(v, CC_STATUS, s); }
static uint8_t pci_generation(struct virtio *v) { return cc_r8(v, CC_CFG_GENERATION); }

static const char *pci_irqs(struct virtio *v)
{
    if (v->msix == IRQ_IOAPIC)
        return "probe.irq=ioapic: a virtio-PCI device interrupts through MSI-X (probe.irq=msix)";
    if (v->msix)
        return setup_msix(v);
    if (v->msix_cap) {                  /* INTx is off too: no interrupts at all */
        uint16_t ctrl = pci_read16(v->pci, v->msix_cap + 2);

        pci_write16(v->pci, v->msix_cap + 2, (uint16_t)(ctrl & ~MSIX_CTRL_ENABLE));
    }
    return NULL;
}

static uint16_t pci_queue_max(struct virtio *v, unsigned qi)
{
    cc_w16(v, CC_Q_SELECT, (uint16_t)qi);
    return cc_r16(v, CC_Q_SIZE);
}

static const char *pci_queue_enable(struct virtio *v, struct virtq *q)
{
    uint16_t off;

    cc_w16(v, CC_Q_SIZE, q->size);
    cc_w64(v, CC_Q_DESC, (uint64_t)q->desc);
    cc_w64(v, CC_Q_DRIVER, (uint64_t)q->avail);
    cc_w64(v, CC_Q_DEVICE, (uint64_t)q->used);
    if (v->msix) {
        /* entry 1 + i; the last queues share the last entry of a small table */
        q->irq_slot = MSIX_ENTRY_QUEUE0 + q->index;
        if (q->irq_slot >= msix_entries(v))
            q->irq_slot = msix_entries(v) - 1;
        cc_w16(v, CC_Q_MSIX, (uint16_t)q->irq_slot);
        if (cc_r16(v, CC_Q_MSIX) != q->irq_slot)
            return "the device refused the queue's MSI-X vector";
    }
    off = cc_r16(v, CC_Q_NOTIFY_OFF);
    if ((uint64_t)off * v->notify_mult + 2 > v->notify_len)
        return "queue notify address outside the notification structure";
    q->notify_addr = v->notify + (uint64_t)off * v->notify_mult;
    cc_w16(v, CC_Q_ENABLE, 1);
    return NULL;
}

static void pci_print_where(const struct virtio *v)
{
    put_str(" dev=");
    pci_put_bdf(v->pci);
}

static void pci_print_regs(const struct virtio *v)
{
    kv_hex("common", v->common);
    kv_hex("notify", v->vq[0].notify_addr);
    kv_dec("notify_mult", v->notify_mult);
    kv_hex("isr", v->isr);
    kv_hex("device_cfg", v->devcfg);
    kv_str("irq", virtio_irq_name(v));
    if (v->msix) {
        kv_dec("msix_vectors", v->msix_size);
        kv_dec("apic_id", v->apic_id);
    }
}

static const struct virtio_ops pci_ops = {
    pci_status, pci_set_status, pci_generation, cc_r32, cc_w32, CC_DFSELECT, CC_DF, CC_GFSELECT, CC_GF,
    pci_irqs, pci_queue_max, pci_queue_enable, pci_print_where, pci_print_regs,
};

/* ------------------------------------------------------------------ */
/* MMIO transport: windows named on the command line.                   */

/* virtio_mmio.device=<size>@<base>:<irq>[:<id>] entries (Linux's syntax) */
static struct {
    uint64_t base, size;
    uint32_t irq;
} mm_devs[MM_MAX_DEVS];
static unsigned mm_ndevs;

/* A size or address as Linux's memparse() takes it: a number (0x for
 * hex) with an optional K, M or G suffix.  0 on a syntax error. */
static int parse_size(const char *s, size_t len, uint64_t *out)
{
    unsigned shift = 0;

    if (len > 1 && (s[len - 1] == 'K' || s[len - 1] == 'k'))
        shift = 10;
    else if (len > 1 && (s[len - 1] == 'M' || s[len - 1] == 'm'))
        shift = 20;
    else if (len > 1 && (s[len - 1] == 'G' || s[len - 1] == 'g'))
        shift = 30;
    if (shift)
        len--;
    if (!parse_u64(s, len, 1, out) || (shift && *out >> (64 - shift)))
        return 0;
    *out <<= shift;
    return 1;
}

static size_t span(const char *s, size_t len, char stop)
{
    size_t i = 0;

    while (i < len && s[i] != stop)
        i++;
    return i;
}

/* One entry's value (after "virtio_mmio.device="); 0 if it is malformed. */
static int mm_parse_entry(const char *s, size_t len)
{
    uint64_t size, base, irq;
    size_t a = span(s, len, '@'), b, c;

    if (a == len || !parse_size(s, a, &size))
        return 0;
    s += a + 1;
    len -= a + 1;
    b = span(s, len, ':');
    if (b == len || !parse_size(s, b, &base))
        return 0;
    s += b + 1;
    len -= b + 1;
    c = span(s, len, ':');              /* an id may follow: not ours to use */
    if (!parse_u64(s, c, 0, &irq) || irq > 255)
        return 0;
    /* The registers and some configuration space must fit, inside the
     * probe's identity map below 4 GiB, page aligned. */
    if (size < 0x200 || base & 0xfff || base >= MAPPED_LIMIT || size > MAPPED_LIMIT - base)
        return 0;
    mm_devs[mm_ndevs].base = base;
    mm_devs[mm_ndevs].size = size;
    mm_devs[mm_ndevs].irq = (uint32_t)irq;
    mm_ndevs++;
    return 1;
}

static void mm_parse(const struct options *o)
{
    static const char key[] = "virtio_mmio.device=";
    const size_t klen = sizeof(key) - 1;
    const char *s = (const char *)o->cmdline;
    size_t len = o->cmdline_len, i = 0, k;

    mm_ndevs = 0;
    while (s && i < len) {
        size_t start, n;

        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n'))
            i++;
        start = i;
        while (i < len && s[i] != ' ' && s[i] != '\t' && s[i] != '\n')
            i++;
        n = i - start;
        for (k = 0; k < klen && k < n && s[start + k] == key[k]; k++)
            ;
        if (k < klen)
            continue;
        if (mm_ndevs == MM_MAX_DEVS)
            fail("too many virtio_mmio.device= entries", "", 0);
        if (!mm_parse_entry(s + start + klen, n - klen))
            fail("bad virtio_mmio.device= entry: ", s + start, n);
    }
}

static void mm_print_dev(unsigned i)
{
    uint64_t base = mm_devs[i].base;

    line_begin("virtio-mmio");
    kv_hex("base", base);
    kv_dec("size", mm_devs[i].size);
    kv_dec("irq", mm_devs[i].irq);
    kv_hex("magic", mmio_read32(base + MM_MAGIC));
    kv_dec("version", mmio_read32(base + MM_VERSION));
    kv_dec("device", mmio_read32(base + MM_DEVICE_ID));
    line_end();
}

static const char *mm_find(struct virtio *v, uint16_t device_id, unsigned nth)
{
    unsigned i;

    for (i = 0; i < mm_ndevs; i++) {
        uint64_t base = mm_devs[i].base;

        if (mmio_read32(base + MM_MAGIC) != MM_MAGIC_VALUE)
            return "virtio-mmio: a window on the command line has no magic value";
        if (mmio_read32(base + MM_VERSION) != 2)
            return "virtio-mmio: version is not 2 (legacy devices are not supported)";
        /* DeviceID is the device type; the PCI ids are 0x1040 + type. */
        if (mmio_read32(base + MM_DEVICE_ID) + 0x1040u == device_id && nth-- == 0) {
            v->ops = &mmio_ops;
            v->mmio = base;
            v->mmio_irq = mm_devs[i].irq;
            v->devcfg = base + MM_CONFIG;
            v->devcfg_len = (uint32_t)(mm_devs[i].size - MM_CONFIG);
            return NULL;
        }
    }
    return missing_device(device_id);
}

static uint8_t mm_status(struct virtio *v) { return (uint8_t)mm_r(v, MM_STATUS); }
static void mm_set_status(struct virtio *v, uint8_t s) { mm_w(v, MM_STATUS, s); }
static uint8_t mm_generation(struct virtio *v) { return (uint8_t)mm_r(v, MM_CFG_GEN); }

/*
 * probe.irq=ioapic: the device's line, as the command line names it, goes
 * to vector IRQ_VECTOR_BASE + MM_IRQ_SLOT on this CPU, edge-triggered and
 * active high.  The device holds its line up while InterruptStatus is not
 * zero; the driver acknowledges every reason on each interrupt (vq_wait),
 * and the device drops and raises its line when a reason is left, so every
 * new one is an edge.
 */
static const char *mm_irqs(struct virtio *v)
{
    uint64_t ioapic = acpi.have_ioapic ? acpi.ioapic_addr : IOAPIC_DEFAULT;
    uint32_t pin = v->mmio_irq;

    if (v->msix == IRQ_MSIX)
        return "probe.irq=msix: a virtio-mmio device interrupts on an IOAPIC line (probe.irq=ioapic)";
    if (!v->msix)
        return NULL;
    if (pin >= IOAPIC_PINS)
        return "probe.irq=ioapic: the device's line is beyond the IOAPIC's 24 pins";
    v->apic_id = lapic_setup_for_msi();
    mmio_write32(ioapic, 0x10 + 2 * pin + 1);              /* IOREDTBL high: destination */
    mmio_write32(ioapic + 0x10, v->apic_id << 24);
    mmio_write32(ioapic, 0x10 + 2 * pin);                  /* low: fixed, physical, edge, high, unmasked */
    mmio_write32(ioapic + 0x10, IRQ_VECTOR_BASE + MM_IRQ_SLOT);
    return NULL;
}

static uint16_t mm_queue_max(struct virtio *v, unsigned qi)
{
    uint32_t max;

    mm_w(v, MM_Q_SEL, qi);
    if (mm_r(v, MM_Q_READY))            /* already in use: not for us (4.2.3.2) */
        return 0;
    max = mm_r(v, MM_Q_NUM_MAX);
    return (uint16_t)(max > 32768 ? 32768 : max);
}

static const char *mm_queue_enable(struct virtio *v, struct virtq *q)
{
    mm_w(v, MM_Q_NUM, q->size);
    mm_w64(v, MM_Q_DESC, (uint64_t)q->desc);
    mm_w64(v, MM_Q_DRIVER, (uint64_t)q->avail);
    mm_w64(v, MM_Q_DEVICE, (uint64_t)q->used);
    q->notify_addr = v->mmio + MM_NOTIFY;
    q->notify32 = 1;                    /* QueueNotify takes 32-bit writes only */
    if (v->msix) {
        q->irq_slot = MM_IRQ_SLOT;
        q->irq_ack = v->mmio;
    }
    mm_w(v, MM_Q_READY, 1);
    if (mm_r(v, MM_Q_READY) != 1)
        return "the device did not take QueueReady";
    return NULL;
}

static void mm_print_where(const struct virtio *v)
{
    kv_str("transport", "mmio");
    kv_hex("base", v->mmio);
    kv_dec("gsi", v->mmio_irq);
}

static void mm_print_regs(const struct virtio *v)
{
    kv_hex("notify", v->vq[0].notify_addr);
    kv_hex("device_cfg", v->devcfg);
    kv_str("irq", virtio_irq_name(v));
    if (v->msix)
        kv_dec("apic_id", v->apic_id);
}

static const struct virtio_ops mmio_ops = {
    mm_status, mm_set_status, mm_generation, mm_r, mm_w, MM_DF_SEL, MM_DF, MM_GF_SEL, MM_GF,
    mm_irqs, mm_queue_max, mm_queue_enable, mm_print_where, mm_print_regs,
};

/* ------------------------------------------------------------------ */
/* Either transport.                                                    */

const char *virtio_init(const struct options *o, int verbose)
{
    unsigned i;

    mm_parse(o);
    if (!mm_ndevs)
        return pci_init(o, verbose);
    if (verbose)
        for (i = 0; i < mm_ndevs; i++)
            mm_print_dev(i);
    return NULL;
}

const char *virtio_find(struct virtio *v, uint16_t device_id)
{
    return virtio_find_nth(v, device_id, 0);
}

const char *virtio_find_nth(struct virtio *v, uint16_t device_id, unsigned nth)
{
    memset(v, 0, sizeof(*v));
    return mm_ndevs ? mm_find(v, device_id, nth) : pci_find_virtio(v, device_id, nth);
}

int virtio_reset(struct virtio *v)
{
    uint64_t t0 = rdtsc(), limit = us_tsc(1000000);

    virtio_set_status(v, 0);
    while (virtio_status(v) != 0) {
        if (rdtsc() - t0 > limit)
            return 0;
        cpu_relax();
    }
    return 1;
}

static const char *setup_queue(struct virtio *v, unsigned qi, unsigned max_qsize)
{
    static const char *const missing[VIRTIO_MAX_QUEUES] = {
        "queue 0 is not available", "queue 1 is not available", "queue 2 is not available",
    };
    struct virtq *q = &v->vq[qi];
    const char *err;
    uint16_t max, i;
    unsigned size = 1;

    memset(q, 0, sizeof(*q));
    max = v->ops->queue_max(v, qi);
    if (qi == 0)
        v->queue_max = max;
    if (max == 0)
        return missing[qi];
    while (size * 2 <= max && size * 2 <= max_qsize)
        size *= 2;
    q->size = (uint16_t)size;
    q->index = (uint16_t)qi;
    q->desc = dma_alloc(16ULL * size, 4096);
    q->avail = dma_alloc(6 + 2ULL * size, 4096);
    q->used = dma_alloc(6 + 8ULL * size, 4096);
    q->token = dma_alloc(4ULL * size, 16);
    q->ndesc = dma_alloc(2ULL * size, 16);
    q->event_idx = !!(v->features & VF_EVENT_IDX);
    q->indirect = !!(v->features & VF_INDIRECT_DESC);
    q->msix = v->msix;
    if (q->indirect)
        q->indir = dma_alloc(16ULL * VQ_INDIRECT_MAX * size, 16);
    for (i = 0; i < q->size; i++)
        q->desc[i].next = (uint16_t)(i + 1);
    q->free_head = 0;
    q->num_free = q->size;
    if (!q->msix && !q->event_idx)
        q->avail[0] = VQ_AVAIL_NO_INTERRUPT;
    if (q->event_idx)                   /* used_event: see vq_get() */
        q->avail[2 + q->size] = q->msix ? 0 : 0xffff;
    err = v->ops->queue_enable(v, q);   /* sets irq_slot with interrupts */
    q->irq_seen = irq_count[q->irq_slot];
    return err;
}

static uint32_t device_features(struct virtio *v, unsigned word)
{
    v->ops->w32(v, v->ops->df_sel, word);
    return v->ops->r32(v, v->ops->df);
}

static void driver_features(struct virtio *v, unsigned word, uint32_t f)
{
    v->ops->w32(v, v->ops->gf_sel, word);
    v->ops->w32(v, v->ops->gf, f);
}

const char *virtio_negotiate(struct virtio *v, uint64_t want, int msix)
{
    uint8_t s;

    v->msix = msix;
    v->nqueues = 0;
    if (!virtio_reset(v))
        return "device_status did not read 0 after reset";
    virtio_set_status(v, VS_ACKNOWLEDGE);
    virtio_set_status(v, VS_ACKNOWLEDGE | VS_DRIVER);
    v->dev_features = device_features(v, 0);
    v->dev_features |= (uint64_t)device_features(v, 1) << 32;
    if (!(v->dev_features & VF_VERSION_1)) {
        virtio_set_status(v, VS_ACKNOWLEDGE | VS_DRIVER | VS_FAILED);
        return "the device does not offer VIRTIO_F_VERSION_1";
    }
    v->features = v->dev_features & (want | VF_VERSION_1);
    driver_features(v, 0, (uint32_t)v->features);
    driver_features(v, 1, (uint32_t)(v->features >> 32));
    virtio_set_status(v, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK);
    s = virtio_status(v);
    if (!(s & VS_FEATURES_OK)) {
        virtio_set_status(v, VS_ACKNOWLEDGE | VS_DRIVER | VS_FAILED);
        return "the device did not accept the features (FEATURES_OK clear)";
    }
    return NULL;
}

const char *virtio_setup(struct virtio *v, unsigned nq, unsigned max_qsize)
{
    const char *err;
    unsigned i;

    if (nq == 0 || nq > VIRTIO_MAX_QUEUES)
        return "bad number of virtqueues";
    err = v->ops->irqs(v);
    for (i = 0; !err && i < nq; i++)
        err = setup_queue(v, i, max_qsize);
    if (err) {
        virtio_set_status(v, VS_ACKNOWLEDGE | VS_DRIVER | VS_FAILED);
        return err;
    }
    v->nqueues = nq;
    virtio_set_status(v, VS_ACKNOWLEDGE | VS_DRIVER | VS_FEATURES_OK | VS_DRIVER_OK);
    if (v->msix)
        user_sti();
    return NULL;
}

const char *virtio_start(struct virtio *v, uint64_t want, int msix, unsigned max_qsize)
{
    const char *err = virtio_negotiate(v, want, msix);

    return err ? err : virtio_setup(v, 1, max_qsize);
}

const char *virtio_irq_name(const struct virtio *v)
{
    return v->msix == IRQ_IOAPIC ? "ioapic" : v->msix ? "msix" : "poll";
}

void virtio_print(const struct virtio *v, const char *what)
{
    line_begin("virtio");
    v->ops->print_where(v);
    kv_str("type", what);
    kv_hex("device_features", v->dev_features);
    kv_hex("features", v->features);
    kv_dec("queue_size", v->vq[0].size);
    kv_dec("queue_max", v->queue_max);
    if (v->nqueues > 1)
        kv_dec("queues", v->nqueues);
    v->ops->print_regs(v);
    line_end();
}

/* ------------------------------------------------------------------ */
/* Split virtqueue.                                                     */

static volatile uint16_t *used_idx_ptr(const struct virtq *q)
{
    return (volatile uint16_t *)(q->used + 2);
}

unsigned vq_descs_for(const struct virtq *q, unsigned n)
{
    return (q->indirect && n > 1 && n <= VQ_INDIRECT_MAX) ? 1 : n;
}

int vq_add(struct virtq *q, const struct vbuf *b, unsigned n, uint32_t token)
{
    uint16_t head = q->free_head, idx, last = 0;
    unsigned i;

    if (n == 0 || vq_descs_for(q, n) > q->num_free)
        return -1;
    if (vq_descs_for(q, n) == 1 && n > 1) {
        volatile struct vq_desc *t = q->indir + (uint64_t)head * VQ_INDIRECT_MAX;

        for (i = 0; i < n; i++) {
            t[i].addr = b[i].addr;
            t[i].len = b[i].len;
            t[i].flags = (uint16_t)((b[i].write ? VD_WRITE : 0) | (i + 1 < n ? VD_NEXT : 0));
            t[i].next = (uint16_t)(i + 1);
        }
        q->desc[head].addr = (uint64_t)t;
        q->desc[head].len = n * 16;
        q->desc[head].flags = VD_INDIRECT;
        q->free_head = q->desc[head].next;
        q->num_free--;
        q->ndesc[head] = 1;
    } else {
        /* The free list is linked through 'next', which is exactly the chain. */
        idx = head;
        for (i = 0; i < n; i++) {
            q->desc[idx].addr = b[i].addr;
            q->desc[idx].len = b[i].len;
            q->desc[idx].flags = (uint16_t)((b[i].write ? VD_WRITE : 0) | (i + 1 < n ? VD_NEXT : 0));
            last = idx;
            idx = q->desc[idx].next;
        }
        q->free_head = q->desc[last].next;
        q->num_free = (uint16_t)(q->num_free - n);
        q->ndesc[head] = (uint16_t)n;
    }
    q->token[head] = token;
    q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    return 0;
}

void vq_kick(struct virtq *q)
{
    uint16_t new_idx = q->avail_idx, old_idx = q->kicked_idx;
    int need;

    if (new_idx == old_idx)
        return;
    /* The avail index store must be visible before we read what the
     * device asked for (it does the mirror image). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (q->event_idx) {
        uint16_t ev = *(volatile uint16_t *)(q->used + 4 + 8 * (uint64_t)q->size);

        need = (uint16_t)(new_idx - ev - 1) < (uint16_t)(new_idx - old_idx);
    } else {
        need = !(*(volatile uint16_t *)q->used & VQ_USED_NO_NOTIFY);
    }
    q->kicked_idx = new_idx;
    q->kicks++;
    if (need) {
        vq_notify(q);
        q->notifies++;
    }
}

int vq_get(struct virtq *q, uint32_t *token, uint32_t *len)
{
    uint16_t idx = *used_idx_ptr(q), slot, n, last;
    uint32_t id;
    volatile uint8_t *e;

    if (idx == q->last_used)
        return 0;
    barrier();
    /* More than a queue's worth ahead: the index went back or is garbage. */
    if ((uint16_t)(idx - q->last_used) > q->size) {
        if (!q->bad_used++) {
            line_begin("virtio");
            kv_str("error", "used_idx_out_of_range");
            kv_dec("used_idx", idx);
            kv_dec("last_used", q->last_used);
            kv_dec("queue_size", q->size);
            line_end();
        }
        return -1;
    }
    slot = q->last_used & (q->size - 1);
    e = q->used + 4 + 8 * (uint64_t)slot;
    id = *(volatile uint32_t *)e;
    *len = *(volatile uint32_t *)(e + 4);
    q->last_used++;
    /*
     * used_event: with interrupts, ask for one as soon as anything past
     * what we have seen is used; when polling, one behind, which the
     * device has already passed, so it never asks for one.
     */
    if (q->event_idx)
        q->avail[2 + q->size] = q->msix ? q->last_used : (uint16_t)(q->last_used - 1);
    if (id >= q->size || q->ndesc[id] == 0) {
        if (!q->bad_used++) {
            line_begin("virtio");
            kv_str("error", "bad_used_element");
            kv_dec("id", id);
            kv_dec("len", *len);
            kv_dec("slot", (uint16_t)(q->last_used - 1));
            kv_dec("avail_idx", q->avail_idx);
            line_end();
        }
        return -1;
    }
    n = q->ndesc[id];
    last = (uint16_t)id;
    while (--n)
        last = q->desc[last].next;
    q->desc[last].next = q->free_head;
    q->free_head = (uint16_t)id;
    q->num_free = (uint16_t)(q->num_free + q->ndesc[id]);
    q->ndesc[id] = 0;
    q->completed++;
    *token = q->token[id];
    return 1;
}

int vq_wait(struct virtq *q, uint64_t timeout_tsc)
{
    uint64_t t0 = rdtsc();

    for (;;) {
        if (!q->msix) {
            if (*used_idx_ptr(q) != q->last_used)
                return 1;
        } else {
            uint64_t c = irq_count[q->irq_slot];

            if (c != q->irq_seen) {
                q->irq_seen = c;
                q->need_check = 1;
                if (q->irq_ack) {       /* MMIO: the line drops once every reason is acknowledged */
                    uint32_t why = mmio_read32(q->irq_ack + MM_INT_STATUS);

                    if (why)
                        mmio_write32(q->irq_ack + MM_INT_ACK, why);
                }
            }
            if (q->need_check) {
                /* used_event (written in vq_get) before the index read. */
                __atomic_thread_fence(__ATOMIC_SEQ_CST);
                if (*used_idx_ptr(q) != q->last_used)
                    return 1;
                q->need_check = 0;
            }
        }
        if (rdtsc() - t0 > timeout_tsc)
            return 0;
        cpu_relax();
    }
}

/* ------------------------------------------------------------------ */
/* rng workload.                                                        */

#define RNG_BYTES   4096
#define RNG_CHUNK   512

uint64_t virtio_want(const struct options *o)
{
    return (o->features & FEAT_EVENT_IDX ? VF_EVENT_IDX : 0) |
           (o->features & FEAT_INDIRECT ? VF_INDIRECT_DESC : 0);
}

NORETURN void test_rng(const struct options *o)
{
    static struct virtio v;
    const char *err = virtio_init(o, 1);
    uint8_t *staging, *out;
    uint8_t seen[256];
    unsigned got = 0, requests = 0, rounds = 0, distinct = 0, i;

    if (err)
        fail(err, "", 0);
    if ((err = virtio_find(&v, VIRTIO_ID_RNG)) != NULL)
        fail(err, "", 0);
    if ((err = virtio_start(&v, virtio_want(o), o->msix, 256)) != NULL)
        fail(err, "", 0);
    virtio_print(&v, "rng");
    staging = dma_alloc(RNG_BYTES, 4096);
    out = dma_alloc(RNG_BYTES, 16);

    /* Rounds of up to 8 requests of 512 bytes, one notify each round. */
    while (got < RNG_BYTES && rounds < 1000) {
        unsigned want = RNG_BYTES - got, k, n = 0;

        rounds++;
        for (k = 0; k * RNG_CHUNK < want; k++) {
            struct vbuf b = { (uint64_t)(staging + k * RNG_CHUNK),
                              want - k * RNG_CHUNK < RNG_CHUNK ? want - k * RNG_CHUNK : RNG_CHUNK, 1 };

            if (vq_add(&v.vq[0], &b, 1, k) < 0)
                break;
            n++;
        }
        requests += n;
        vq_kick(&v.vq[0]);
        while (n) {
            uint32_t tok, len;
            int r;

            if (!vq_wait(&v.vq[0], us_tsc(VQ_TIMEOUT_US)))
                fail("timeout waiting for virtio-rng", "", 0);
            while (n && (r = vq_get(&v.vq[0], &tok, &len)) != 0) {
                if (r < 0 || tok >= 8 || len > RNG_CHUNK)
                    fail("virtio-rng returned a bad used element", "", 0);
                if (len > RNG_BYTES - got)
                    len = RNG_BYTES - got;
                memcpy(out + got, staging + tok * RNG_CHUNK, len);
                got += len;
                n--;
            }
        }
    }
    memset(seen, 0, sizeof(seen));
    for (i = 0; i < got; i++) {
        if (!seen[out[i]])
            distinct++;
        seen[out[i]] = 1;
    }
    line_begin("rng");
    kv_dec("bytes", got);
    kv_dec("distinct", distinct);
    kv_dec("requests", requests);
    kv_dec("notifies", v.vq[0].notifies);
    if (v.msix)
        kv_dec("irqs", virtio_irqs(&v));
    line_end();
    if (got < RNG_BYTES)
        fail("virtio-rng did not deliver 4096 bytes", "", 0);
    if (distinct <= 200)
        fail("too few distinct byte values", "", 0);
    pass();
}
