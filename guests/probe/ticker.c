/*
 * ticker: a heartbeat the host can watch from outside.
 *
 * Prints "probe: tick n=K ms=T" every probe.n milliseconds (default 100),
 * forever, from ring 3.  K counts the lines printed, so a paused domain
 * shows a gap in time but never a jump in K; T is TSC time since start.
 */
#include "probe.h"

NORETURN void test_ticker(const struct options *o)
{
    uint64_t hz = tsc_calibrate(NULL);
    uint64_t period_ms = o->have_n && o->n ? o->n : 100;
    uint64_t period = muldiv64(hz, period_ms, 1000);
    uint64_t start = rdtsc(), next = start + period, k = 0;

    line_begin("ticker");
    kv_dec("period_ms", period_ms);
    kv_dec("tsc_hz", hz);
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
