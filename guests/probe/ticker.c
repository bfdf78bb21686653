/*
 * ticker: a heartbeat the host can watch from outside.
 *
 * Prints "probe: tick n=K ms=T" every probe.n milliseconds (default 100),
 * forever, from ring 3.  K counts the lines printed, so a paused domain
 * shows a gap in time but never a jump in K; T is TSC time since start.
 * With probe.mb=M it first writes M MiB of memory once (a guest with data in
 * its RAM, for the snapshot-clone benchmark), then only ticks.
 */
#include "probe.h"

#define FILL_BASE 0x2000000ULL      /* right after the DMA arena, as memsum's block */

NORETURN void test_ticker(const struct options *o)
{
    uint64_t hz = tsc_calibrate(NULL);
    uint64_t period_ms = o->have_n && o->n ? o->n : 100;
    uint64_t period = muldiv64(hz, period_ms, 1000);
    uint64_t fill_mb = o->have_mb ? o->mb : 0, start, next, k = 0, i;
    volatile uint64_t *fill = (volatile uint64_t *)FILL_BASE;

    if (fill_mb > 2048)
        fail("probe.mb for ticker must be 0..2048", "", 0);
    for (i = 0; i < fill_mb << 17; i++)
        fill[i] = i * 0x9E3779B97F4A7C15ULL;
    start = rdtsc();
    next = start + period;
    line_begin("ticker");
    kv_dec("period_ms", period_ms);
    kv_dec("tsc_hz", hz);
    kv_dec("filled_mb", fill_mb);
    line_end();
    for (;;) {
        uint64_t now = rdtsc();

        if (now < next) {
            cpu_relax();
            continue;
        }
        k++;
        line_begin("tick");
        kv_dec("n", k);
        kv_dec("ms", muldiv64(now - start, 1000, hz));
        line_end();
        next += period;
        if (next < now)
            next = now + period;    /* we were stopped: no burst of catch-up lines */
    }
}
