/*
 * Ring-0 exception handler.  Every vector except the I/O gate, the timer
 * and the spurious vector lands here through the stubs in entry.S, from
 * ring 3 or ring 0 alike, on any CPU.
 */
#include "probe.h"

void exception_handler(struct trap_frame *f)
{
    /* CPU index + 1 of the CPU reporting (the first one to get here). */
    static uint32_t reporter;
    uint32_t me = this_cpu() + 1, expected = 0;

    if (!__atomic_compare_exchange_n(&reporter, &expected, me, 0,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
        /* Faulted again while reporting: just exit.  Another CPU is
         * reporting: leave the exit to it. */
        if (expected == me)
            probe_exit(EXIT_EXCEPTION);
        probe_halt();
    }
    line_begin("exception");
    kv_dec("vector", f->vector);
    kv_hex("error", f->error);
    kv_hex("rip", f->rip);
    kv_hex("cs", f->cs);
    kv_dec("cpl", f->cs & 3);
    kv_dec("cpu", me - 1);
    line_end();
    line_begin(NULL);
    kv_str("result", "fail");
    line_end();
    probe_exit(EXIT_EXCEPTION);
}
