/*
 * memsum: ring-3 computation over a block of memory, for save/restore and
 * migration tests.  Each round rewrites every 64-bit word of the block from
 * its old value, the round number and a xorshift stream, and folds it into a
 * running sum, so the final checksum depends on every store of every round:
 * a lost page, a lost round or a repeated one changes it.  The round number
 * is kept at COUNTER_ADDR for a host to watch, and a progress line is
 * printed every rounds/20 rounds.
 */
#include "probe.h"

#define MEMSUM_BASE 0x2000000ULL   /* right after the DMA arena */

NORETURN void test_memsum(const struct options *o)
{
    uint64_t mb = o->have_mb ? o->mb : 16, rounds = o->have_n ? o->n : 200;
    volatile uint64_t *round_out = (volatile uint64_t *)COUNTER_ADDR;
    uint64_t *mem = (uint64_t *)MEMSUM_BASE;
    uint64_t words, x = 0x9E3779B97F4A7C15ULL, sum = 0, r, i, every;

    if (mb == 0 || mb > 2048)
        fail("probe.mb for memsum must be 1..2048", "", 0);
    words = mb << 17;          /* 8-byte words in mb MiB */
    every = rounds / 20 ? rounds / 20 : 1;
    *round_out = 0;

    line_begin("memsum");
    kv_str("state", "start");
    kv_dec("mb", mb);
    kv_dec("rounds", rounds);
    line_end();

    for (i = 0; i < words; i++)
        mem[i] = i;
    for (r = 1; r <= rounds; r++) {
        for (i = 0; i < words; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            mem[i] = mem[i] * 0x5851F42D4C957F2DULL + x + r;
            sum = (sum ^ mem[i]) * 0x100000001B3ULL;
        }
        *round_out = r;
        if (r % every == 0) {
            line_begin("memsum");
            kv_dec("round", r);
            line_end();
        }
    }

    line_begin("memsum");
    kv_str("state", "done");
    kv_dec("mb", mb);
    kv_dec("rounds", rounds);
    put_str(" checksum=");
    put_hex16(sum);
    line_end();
    pass();
}
