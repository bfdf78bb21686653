/*
 * mptable: the Intel MultiProcessor table (MP Specification 1.4), found
 * the way a kernel booted with acpi=off finds it (Linux's find_smp_config):
 * the MP floating pointer ("_MP_", 16 bytes, length 1, bytes summing to 0)
 * on a 16-byte boundary in the first KiB of memory, the last KiB of base
 * memory (639 KiB), the BIOS area 0xF0000-0xFFFFF, then the first KiB of
 * the EBDA whose segment the BIOS data area holds at 0x40E.  It points to
 * the configuration table ("PCMP", checksummed over its base length),
 * whose entries are walked by type.  Runs in ring 3.
 */
#include "probe.h"

#define MP_PROCESSOR        0
#define MP_BUS              1
#define MP_IOAPIC           2
#define MP_IO_INTERRUPT     3
#define MP_LOCAL_INTERRUPT  4
#define MP_CPU_ENABLED      1
#define MP_CPU_BSP          2
#define MP_HEADER_SIZE      44

/* x, hidden from the compiler: low addresses (0 included) are plain RAM
 * here, not null pointers it may reason about. */
static uint64_t opaque(uint64_t x)
{
    __asm__("" : "+r"(x));
    return x;
}

static int sums_to_zero(uint64_t addr, uint64_t len)
{
    const volatile uint8_t *p = (const volatile uint8_t *)addr;
    uint8_t sum = 0;
    uint64_t i;

    for (i = 0; i < len; i++)
        sum = (uint8_t)(sum + p[i]);
    return sum == 0;
}

static uint64_t scan(uint64_t base, uint64_t len)
{
    uint64_t a;

    for (a = opaque(base); a + 16 <= base + len; a += 16) {
        const volatile uint8_t *p = (const volatile uint8_t *)a;

        if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_' && p[8] == 1 && sums_to_zero(a, 16))
            return a;
    }
    return 0;
}

NORETURN void test_mptable(const struct options *o)
{
    uint64_t fp, table, end, at;
    uint16_t ebda = *(const volatile uint16_t *)opaque(0x40e), length, count, i;
    unsigned cpus = 0, bsp = 0, bsps = 0, ioapics = 0, buses = 0, isa = 0, io_ints = 0, local_ints = 0;
    uint32_t ioapic_addr = 0;
    const char *where = "low";
    const volatile uint8_t *t;

    (void)o;
    fp = scan(0, 0x400);
    if (!fp && (fp = scan(639 * 0x400, 0x400)) != 0)
        where = "base_top";
    if (!fp && (fp = scan(0xf0000, 0x10000)) != 0)
        where = "bios";
    if (!fp && ebda && (fp = scan((uint64_t)ebda << 4, 0x400)) != 0)
        where = "ebda";
    if (!fp)
        fail("no MP floating pointer", "", 0);
    table = *(const volatile uint32_t *)(fp + 4);
    if (table == 0 || table + MP_HEADER_SIZE > MAPPED_LIMIT)
        fail("the MP floating pointer has no usable configuration table address", "", 0);
    t = (const volatile uint8_t *)table;
    length = *(const volatile uint16_t *)(table + 4);
    count = *(const volatile uint16_t *)(table + 34);
    if (t[0] != 'P' || t[1] != 'C' || t[2] != 'M' || t[3] != 'P')
        fail("MP configuration table signature is not PCMP", "", 0);
    if (length < MP_HEADER_SIZE || table + length > MAPPED_LIMIT || !sums_to_zero(table, length))
        fail("MP configuration table length or checksum is wrong", "", 0);
    end = table + length;
    at = table + MP_HEADER_SIZE;
    for (i = 0; i < count; i++) {
        const volatile uint8_t *e = (const volatile uint8_t *)at;
        unsigned size = e[0] == MP_PROCESSOR ? 20 : 8;

        if (e[0] > MP_LOCAL_INTERRUPT || at + size > end)
            fail("MP configuration table entry of unknown type or past the end", "", 0);
        switch (e[0]) {
        case MP_PROCESSOR:
            if (e[3] & MP_CPU_ENABLED)
                cpus++;
            if (e[3] & MP_CPU_BSP) {
                bsp = e[1];
                bsps++;
            }
            break;
        case MP_BUS:
            buses++;
            if (e[2] == 'I' && e[3] == 'S' && e[4] == 'A')
                isa++;
            break;
        case MP_IOAPIC:
            ioapics++;
            ioapic_addr = *(const volatile uint32_t *)(at + 4);
            break;
        case MP_IO_INTERRUPT:
            io_ints++;
            break;
        default:
            local_ints++;
        }
        at += size;
    }
    if (at != end)
        fail("MP configuration table entries do not fill its length", "", 0);
    line_begin("mptable");
    kv_hex("pointer", fp);
    kv_str("found", where);
    kv_hex("table", table);
    kv_dec("spec", t[6]);
    kv_dec("length", length);
    kv_dec("entries", count);
    kv_dec("cpus", cpus);
    kv_dec("bsp", bsp);
    kv_dec("ioapics", ioapics);
    kv_hex("ioapic_addr", ioapic_addr);
    kv_dec("buses", buses);
    kv_dec("isa", isa);
    kv_dec("io_interrupts", io_ints);
    kv_dec("local_interrupts", local_ints);
    kv_hex("lapic", *(const volatile uint32_t *)(table + 36));
    line_end();
    if (bsps != 1 || cpus == 0 || ioapics == 0)
        fail("the MP table needs one bootstrap processor, enabled CPUs and an IOAPIC", "", 0);
    pass();
}
