/*
 * vmgenid: the VM Generation ID, watched from ring 3.
 *
 * Finds the GUID's guest-physical address in the fw_cfg file
 * etc/vmgenid_addr (8 bytes, little endian: the address the DSDT's VGEN
 * device returns from its ADDR method), then every probe.n milliseconds
 * (default 100) prints
 *
 *     probe: vmgenid n=K guid=<32 hex digits> changes=C
 *
 * K counts the lines printed (it lives in guest memory, so a restored
 * snapshot goes on from where it was saved); C counts the times the GUID
 * differed from the one read before.  The GUID is read with plain loads
 * each time: nothing tells the guest it changed.
 */
#include "probe.h"

#define VMGENID_FILE "etc/vmgenid_addr"
#define GUID_SIZE    16

static void put_guid(const volatile uint8_t *g)
{
    static const char digits[] = "0123456789abcdef";
    int i;

    put_str(" guid=");
    for (i = 0; i < GUID_SIZE; i++) {
        put_char(digits[g[i] >> 4]);
        put_char(digits[g[i] & 15]);
    }
}

NORETURN void test_vmgenid(const struct options *o)
{
    uint64_t hz = tsc_calibrate(NULL);
    uint64_t period_ms = o->have_n && o->n ? o->n : 100;
    uint64_t period = muldiv64(hz, period_ms, 1000);
    uint64_t addr = 0, next = rdtsc() + period, k = 0, changes = 0;
    uint8_t last[GUID_SIZE], now[GUID_SIZE];
    const volatile uint8_t *guid;
    uint32_t size;
    uint16_t select;
    int i;

    if (!fw_cfg_find(VMGENID_FILE, &select, &size) || size != 8)
        fail("no 8-byte fw_cfg file ", VMGENID_FILE, sizeof(VMGENID_FILE) - 1);
    fw_cfg_read(select, &addr, 8);
    if (addr == 0 || (addr & 7) || addr + GUID_SIZE > 0xc0000000ULL)
        fail("vmgenid address is not 8-byte aligned low RAM", "", 0);
    guid = (const volatile uint8_t *)addr;
    for (i = 0; i < GUID_SIZE; i++)
        last[i] = guid[i];
    line_begin("vmgenid");
    kv_hex("addr", addr);
    kv_dec("period_ms", period_ms);
    line_end();
    for (;;) {
        uint64_t t = rdtsc();
        int changed = 0;

        if (t < next) {
            cpu_relax();
            continue;
        }
        for (i = 0; i < GUID_SIZE; i++) {
            now[i] = guid[i];
            changed |= now[i] != last[i];
            last[i] = now[i];
        }
        changes += changed;
        k++;
        line_begin("vmgenid");
        kv_dec("n", k);
        put_guid(now);
        kv_dec("changes", changes);
        line_end();
        next += period;
        if (next < t)
            next = t + period;    /* we were stopped: no burst of catch-up lines */
    }
}
