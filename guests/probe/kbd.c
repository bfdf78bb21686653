/*
 * kbd (ring 3): the i8042 keyboard as the host presses keys on it.
 *
 * Turns on the controller's keyboard interrupt (configuration byte bit 0;
 * with probe.n=1 also bit 6, translation to scan code set 1, as Linux's
 * atkbd usually has it), routes ISA IRQ 1 through the IOAPIC to a counted
 * vector (IRQ_VECTOR_BASE + KBD_SLOT, fixed, edge, to this CPU) with the
 * 8259s masked, prints kbd state=waiting and reads every byte the keyboard
 * sends while the output-buffer-full status bit is set.  Half a second
 * after the last byte (or after probe.secs seconds, default 60, with none)
 * it prints kbd state=read bytes=N irqs=K codes=HEX (the bytes in order,
 * two hex digits each) and passes if any byte came.
 */
#include "virtio.h"        /* us_tsc */

#define KBD_DATA        0x60
#define KBD_STATUS      0x64
#define KBD_OBF         0x01
#define KBD_CMD_RCONFIG 0x20
#define KBD_CMD_WCONFIG 0x60
#define KBD_CFG_INT     0x01
#define KBD_CFG_XLATE   0x40
#define KBD_IRQ         1
#define KBD_SLOT        1               /* irq_count[] entry */
#define IOAPIC_DEFAULT  0xfec00000ULL
#define IOAPIC_REDTBL   0x10
#define KBD_MAX         32

/* IOAPIC pin -> vector: fixed delivery, physical destination, active high, edge, unmasked. */
static void ioapic_route(uint64_t base, unsigned pin, uint8_t vector, uint32_t apic_id)
{
    mmio_write32(base, IOAPIC_REDTBL + 2 * pin + 1);
    mmio_write32(base + 0x10, apic_id << 24);
    mmio_write32(base, IOAPIC_REDTBL + 2 * pin);
    mmio_write32(base + 0x10, vector);
}

static uint8_t kbd_config(void)
{
    uint64_t t0 = rdtsc();

    port_outb(KBD_STATUS, KBD_CMD_RCONFIG);
    while (!(port_inb(KBD_STATUS) & KBD_OBF))
        if (rdtsc() - t0 > us_tsc(1000000))
            fail("kbd: the controller did not answer the read-configuration command", "", 0);
    return port_inb(KBD_DATA);
}

NORETURN void test_kbd(const struct options *o)
{
    static const char digits[] = "0123456789abcdef";
    char hex[2 * KBD_MAX + 1];
    uint64_t limit = us_tsc((o->have_secs ? o->secs : 60) * 1000000ULL), quiet = us_tsc(500000);
    uint64_t ioapic, irqs, t0, last = 0;
    uint8_t want = KBD_CFG_INT | (o->have_n && o->n ? KBD_CFG_XLATE : 0), config;
    unsigned n = 0, pin;

    acpi_scan(o->boot_kind, o->boot_info, 0);
    ioapic = acpi.have_ioapic ? acpi.ioapic_addr : IOAPIC_DEFAULT;
    pin = KBD_IRQ - (acpi.have_ioapic ? acpi.ioapic_gsi_base : 0);
    ioapic_route(ioapic, pin, IRQ_VECTOR_BASE + KBD_SLOT, lapic_setup_for_msi());
    while (port_inb(KBD_STATUS) & KBD_OBF)
        (void)port_inb(KBD_DATA);
    port_outb(KBD_STATUS, KBD_CMD_WCONFIG);
    port_outb(KBD_DATA, want);
    config = kbd_config();
    irqs = irq_count[KBD_SLOT];
    user_sti();
    line_begin("kbd");
    kv_str("state", "waiting");
    kv_hex("config", config);
    line_end();
    if (config != want)
        fail("kbd: the controller did not keep the configuration byte", "", 0);
    for (t0 = rdtsc(); n < KBD_MAX;) {
        if (port_inb(KBD_STATUS) & KBD_OBF) {
            uint8_t b = port_inb(KBD_DATA);

            hex[2 * n] = digits[b >> 4];
            hex[2 * n + 1] = digits[b & 15];
            n++;
            last = rdtsc();
            continue;
        }
        if (n ? rdtsc() - last > quiet : rdtsc() - t0 > limit)
            break;
        cpu_relax();
    }
    hex[2 * n] = 0;
    irqs = irq_count[KBD_SLOT] - irqs;
    line_begin("kbd");
    kv_str("state", "read");
    kv_dec("bytes", n);
    kv_dec("irqs", irqs);
    kv_str("codes", n ? hex : "none");
    line_end();
    if (!n)
        fail("kbd: no byte came from the keyboard", "", 0);
    pass();
}
