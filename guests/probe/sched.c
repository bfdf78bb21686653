/*
 * Workloads for a vCPU scheduler (ring 3): burn and latency.
 *
 * burn: computes in ring 3 for probe.secs seconds and reports, every
 * probe.n milliseconds of TSC time, how much it has done, so that the
 * host can tell each domain's rate of progress.
 *
 * latency: probe.n times, arms the LAPIC timer (one-shot) for a random
 * 1..10 ms, halts until it fires, and takes wake delay = TSC after the
 * wake - the deadline.  The deadline is counted from just before the
 * write that arms the timer, so the delay is never under-reported (it
 * may be over-reported by the time that write takes to reach the timer).
 */
#include "probe.h"

#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_DCR 0x3e0
#define LVT_MASKED      (1u << 16)
#define DCR_DIV_1       0xb
#define PIC1_DATA       0x21
#define PIC2_DATA       0xa1

#define BURN_BATCH      (1u << 16)      /* xorshift steps per unit of work */
#define LAT_MIN_US      1000
#define LAT_SPAN_US     9000
#define LAT_MAX_SAMPLES 1000000

static uint64_t tsc_ms(uint64_t tsc_ticks, uint64_t hz)
{
    return muldiv64(tsc_ticks, 1000, hz);
}

NORETURN void test_burn(const struct options *o)
{
    uint64_t secs = o->have_secs ? o->secs : 10;
    uint64_t every_ms = o->have_n ? o->n : 500;
    uint64_t hz = tsc_calibrate(NULL);
    uint64_t x = 0x9E3779B97F4A7C15ULL, sum = 0, work = 0;
    uint64_t t0, now, next, end, every, i;

    if (every_ms == 0)
        fail("bad value for probe.n: ", "0", 1);
    every = muldiv64(every_ms, hz, 1000);
    t0 = rdtsc();
    end = t0 + secs * hz;
    next = t0 + every;
    line_begin("burn");
    kv_dec("tsc_hz", hz);
    kv_dec("secs", secs);
    kv_dec("every_ms", every_ms);
    kv_dec("batch", BURN_BATCH);
    line_end();
    for (;;) {
        for (i = 0; i < BURN_BATCH; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sum += x;
        }
        work++;
        now = rdtsc();
        if (now >= next || now >= end) {
            line_begin("burn");
            kv_dec("ms", tsc_ms(now - t0, hz));
            kv_dec("work", work);
            line_end();
            next = now + every;
            if (now >= end)
                break;
        }
    }
    line_begin("burn");
    put_str(" done");
    kv_dec("ms", tsc_ms(rdtsc() - t0, hz));
    kv_dec("work", work);
    put_str(" checksum=");
    put_hex16(sum);
    line_end();
    pass();
}

/* "key=I.F" with one decimal of a value given in tenths. */
static void kv_tenths(const char *key, uint64_t tenths)
{
    put_char(' ');
    put_str(key);
    put_char('=');
    put_dec(tenths / 10);
    put_char('.');
    put_dec(tenths % 10);
}

static uint64_t tsc_to_tenth_us(uint64_t ticks, uint64_t hz)
{
    return muldiv64(ticks, 10000000, hz);
}

NORETURN void test_latency(const struct options *o)
{
    uint64_t n = o->have_n ? o->n : 1000;
    uint64_t hz, ahz, lapic, x, *samples, early = 0, over_1ms = 0, max_at = 0, max = 0, i;
    volatile uint64_t *ticks = &percpu_of(0)->ticks;

    if (n == 0 || n > LAT_MAX_SAMPLES)
        fail("bad value for probe.n (1..1000000 for latency)", "", 0);
    acpi_scan(o->boot_kind, o->boot_info, 0);
    hz = tsc_calibrate(NULL);
    ahz = lapic_timer_hz();
    lapic = lapic_base();
    samples = dma_alloc(n * sizeof(uint64_t), 8);

    /* Only the LAPIC timer may interrupt. */
    port_outb(PIC1_DATA, 0xff);
    port_outb(PIC2_DATA, 0xff);
    mmio_write32(lapic + LAPIC_LVT_LINT0, LVT_MASKED);
    mmio_write32(lapic + LAPIC_TIMER_DCR, DCR_DIV_1);
    mmio_write32(lapic + LAPIC_LVT_TIMER, TIMER_VECTOR);      /* one-shot */

    line_begin("latency");
    kv_dec("n", n);
    kv_dec("tsc_hz", hz);
    kv_dec("apic_hz", ahz);
    line_end();

    x = rdtsc() | 1;
    for (i = 0; i < n; i++) {
        uint64_t us, deadline, seen, t;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        us = LAT_MIN_US + x % LAT_SPAN_US;
        seen = *ticks;
        deadline = rdtsc() + muldiv64(us, hz, 1000000);
        mmio_write32(lapic + LAPIC_TIMER_ICR, (uint32_t)muldiv64(us, ahz, 1000000));
        while (*ticks == seen)
            user_wait_irq();
        t = rdtsc();
        if (t < deadline) {
            early++;
            samples[i] = 0;
        } else {
            samples[i] = t - deadline;
        }
        if (samples[i] > hz / 1000)
            over_1ms++;
        if (samples[i] > max) {
            max = samples[i];
            max_at = i;
        }
    }
    mmio_write32(lapic + LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);

    sort_u64(samples, n);
    line_begin("latency");
    kv_dec("n", n);
    kv_tenths("p50_us", tsc_to_tenth_us(percentile_u64(samples, n, 50), hz));
    kv_tenths("p99_us", tsc_to_tenth_us(percentile_u64(samples, n, 99), hz));
    kv_tenths("max_us", tsc_to_tenth_us(samples[n - 1], hz));
    kv_tenths("min_us", tsc_to_tenth_us(samples[0], hz));
    kv_dec("early", early);
    kv_dec("over_1ms", over_1ms);
    kv_dec("max_at", max_at);
    line_end();
    if (early)
        fail("the timer fired before its deadline", "", 0);
    pass();
}
