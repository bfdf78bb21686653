/*
 * Ring-0 exception handler.  Every vector except the I/O gate lands here
 * through the stubs in entry.S, from ring 3 or ring 0 alike.
 */
#include "probe.h"

void exception_handler(struct trap_frame *f)
{
    static int depth;

    io_use_gate = 0;            /* ring 0 always has direct port access */
    if (depth++ == 0) {
        line_begin("exception");
        kv_dec("vector", f->vector);
        kv_hex("error", f->error);
        kv_hex("rip", f->rip);
        kv_hex("cs", f->cs);
        kv_dec("cpl", f->cs & 3);
        line_end();
        line_begin(NULL);
        kv_str("result", "fail");
        line_end();
    }
    probe_exit(EXIT_EXCEPTION);
}
