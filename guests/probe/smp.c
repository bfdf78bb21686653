/*
 * Several CPUs (ring 3): TSC and LAPIC timer calibration, AP start-up
 * with INIT-SIPI-SIPI, the smp and timer workloads.
 *
 * Everything here runs in ring 3 and reaches the LAPIC by MMIO (the
 * identity map makes it user accessible).  Ring 3 also prepares each AP's
 * TSS and GDT descriptor, so the AP's ring-0 path (entry.S: trampoline,
 * ap_entry32, ap_long) stays a few dozen instructions.
 */
#include "probe.h"

/* xAPIC registers (offsets from the LAPIC base). */
#define LAPIC_ID        0x020
#define LAPIC_SVR       0x0f0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_CCR 0x390
#define LAPIC_TIMER_DCR 0x3e0

#define SVR_ENABLE          0x100
#define ICR_BUSY            (1u << 12)
#define ICR_INIT            0x4500      /* INIT, level assert */
#define ICR_STARTUP         0x4600      /* Start-up IPI, level assert */
#define LVT_MASKED          (1u << 16)
#define LVT_PERIODIC        (1u << 17)
#define DCR_DIV_1           0xb
#define DCR_DIV_16          0x3
#define TIMER_DIVIDE        16

/* 8259 interrupt mask registers (master, slave). */
#define PIC1_DATA           0x21
#define PIC2_DATA           0xa1

/* KVM's LAPIC timer runs at 1 GHz; used when nothing gives the TSC rate. */
#define ASSUMED_APIC_HZ     1000000000ULL
#define FALLBACK_TSC_HZ     3000000000ULL
#define CALIBRATE_APIC_TICKS 10000000u  /* 10 ms at 1 GHz */

#define AP_START_TIMEOUT_US 5000000     /* per AP, generous: ring 0 may be emulated */
#define WORK_TIMEOUT_US     30000000    /* all CPUs finishing their work */

struct ap_boot {
    uint64_t index, kernel_rsp, user_rsp, tss_sel;
};

/* entry.S */
extern volatile struct ap_boot ap_boot;
extern uint64_t lapic_eoi_addr;
extern uint8_t gdt[];
extern const uint8_t ap_trampoline[], ap_trampoline_end[];

static uint64_t lapic = LAPIC_DEFAULT_BASE;
static unsigned ncpus = 1;                      /* CPUs started, BSP included */
static unsigned expected_cpus = 1;
static uint32_t cpu_apic_id[MAX_CPUS];          /* as read by each CPU itself */
static uint32_t madt_apic_id[MAX_CPUS];         /* what the MADT said */
static volatile uint32_t cpu_online[MAX_CPUS];
static volatile uint32_t cpu_done[MAX_CPUS];
static volatile uint32_t cpu_ok[MAX_CPUS];
static void (*volatile ap_work)(unsigned);

static uint64_t tsc_rate;
static const char *tsc_source = "none";
static uint64_t apic_hz;
static const char *apic_source = "none";

static uint32_t lapic_read(uint32_t reg)
{
    return mmio_read32(lapic + reg);
}

static void lapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(lapic + reg, v);
}

static uint32_t lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

static void lapic_enable(void)
{
    lapic_write(LAPIC_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
}

/* ------------------------------------------------------------------ */
/* Time.                                                                */

/* TSC rate from CPUID, if some leaf gives it. */
static uint64_t tsc_hz_cpuid(void)
{
    uint32_t r[4], max;

    cpuid(1, 0, r);
    if (r[2] & (1u << 31)) {                    /* hypervisor present */
        cpuid(0x40000000, 0, r);
        if (r[0] >= 0x40000010) {
            cpuid(0x40000010, 0, r);            /* EAX = TSC kHz */
            if (r[0]) {
                tsc_source = "cpuid_40000010";
                return (uint64_t)r[0] * 1000;
            }
        }
    }
    cpuid(0, 0, r);
    max = r[0];
    if (max >= 0x15) {
        cpuid(0x15, 0, r);                      /* TSC/crystal ratio, crystal Hz */
        if (r[0] && r[1] && r[2]) {
            tsc_source = "cpuid_15";
            return (uint64_t)r[2] * r[1] / r[0];
        }
    }
    if (max >= 0x16) {
        cpuid(0x16, 0, r);                      /* base MHz */
        if (r[0]) {
            tsc_source = "cpuid_16";
            return (uint64_t)r[0] * 1000000;
        }
    }
    return 0;
}

/*
 * Count the LAPIC timer (divide by 1, one-shot, masked) against the TSC
 * for CALIBRATE_APIC_TICKS timer ticks.  Returns 0 if the timer does not
 * count.  Each current-count read is an exit, which is fine here.
 */
static int measure_apic_vs_tsc(uint64_t *apic_ticks, uint64_t *tsc_ticks)
{
    uint32_t c0, c1;
    uint64_t t0, t1;

    lapic_write(LAPIC_TIMER_DCR, DCR_DIV_1);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
    lapic_write(LAPIC_TIMER_ICR, 0xffffffffu);
    c0 = lapic_read(LAPIC_TIMER_CCR);
    t0 = rdtsc();
    do {
        c1 = lapic_read(LAPIC_TIMER_CCR);
        t1 = rdtsc();
    } while (c0 - c1 < CALIBRATE_APIC_TICKS && t1 - t0 < (1ULL << 35));
    lapic_write(LAPIC_TIMER_ICR, 0);
    if (c0 - c1 < CALIBRATE_APIC_TICKS / 2 || t1 == t0)
        return 0;
    *apic_ticks = c0 - c1;
    *tsc_ticks = t1 - t0;
    return 1;
}

/* Work out tsc_rate and apic_hz once (BSP, LAPIC enabled). */
static void calibrate(void)
{
    uint64_t a, t;

    if (tsc_rate)
        return;
    tsc_rate = tsc_hz_cpuid();
    if (measure_apic_vs_tsc(&a, &t)) {
        if (tsc_rate) {
            apic_hz = tsc_rate * a / t;
            apic_source = "measured";
        } else {
            apic_hz = ASSUMED_APIC_HZ;
            apic_source = "assumed";
            tsc_rate = ASSUMED_APIC_HZ * t / a;
            tsc_source = "lapic";
        }
    } else {
        apic_hz = ASSUMED_APIC_HZ;
        apic_source = "assumed";
    }
    if (!tsc_rate) {
        tsc_rate = FALLBACK_TSC_HZ;
        tsc_source = "assumed";
    }
}

uint64_t tsc_hz(void)
{
    if (!tsc_rate) {
        tsc_rate = tsc_hz_cpuid();
        if (!tsc_rate) {
            /* Not calibrated against the LAPIC yet: assume something. */
            return FALLBACK_TSC_HZ;
        }
    }
    return tsc_rate;
}

static uint64_t us_to_tsc(uint64_t us)
{
    return tsc_hz() / 1000000 * us;
}

void tsc_delay_us(uint64_t us)
{
    uint64_t t0 = rdtsc(), d = us_to_tsc(us);

    while (rdtsc() - t0 < d)
        cpu_relax();
}

/* Wait until *flag is nonzero, for at most us microseconds. */
static int wait_flag(volatile uint32_t *flag, uint64_t us)
{
    uint64_t t0 = rdtsc(), d = us_to_tsc(us);

    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        if (rdtsc() - t0 >= d)
            return 0;
        cpu_relax();
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* AP start-up.                                                         */

static void put_le(uint8_t *p, uint64_t v, unsigned bytes)
{
    unsigned i;

    for (i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* TSS in the AP's per-CPU page and its descriptor in the GDT. */
static void prepare_cpu(unsigned idx)
{
    uint64_t area = cpu_area_of(idx);
    struct percpu *pc = percpu_of(idx);
    uint64_t tss = (uint64_t)pc->tss;
    uint8_t *d = gdt + TSS_SEL(idx);

    memset(pc, 0, sizeof(*pc));
    put_le(pc->tss + 4, area + KSTACK_TOP_OFF, 8);          /* RSP0 */
    put_le(pc->tss + 36, area + IST_TOP_OFF, 8);            /* IST1 */
    put_le(pc->tss + 102, sizeof(pc->tss), 2);              /* no I/O bitmap */

    put_le(d, sizeof(pc->tss) - 1, 2);                      /* limit 15:0 */
    put_le(d + 2, tss & 0xffff, 2);                         /* base 15:0 */
    d[4] = (uint8_t)(tss >> 16);                            /* base 23:16 */
    d[5] = 0x89;                                            /* present, 64-bit TSS */
    d[6] = 0;
    d[7] = (uint8_t)(tss >> 24);                            /* base 31:24 */
    put_le(d + 8, tss >> 32, 4);                            /* base 63:32 */
    put_le(d + 12, 0, 4);
}

static void send_ipi(uint32_t apic_id, uint32_t icr)
{
    unsigned tries = 0;

    while ((lapic_read(LAPIC_ICR_LO) & ICR_BUSY) && ++tries < 1000)
        cpu_relax();
    lapic_write(LAPIC_ICR_HI, apic_id << 24);
    lapic_write(LAPIC_ICR_LO, icr);
}

/* INIT-SIPI-SIPI for CPU idx; returns 1 once it is up in ring 3. */
static int start_ap(unsigned idx, uint32_t apic_id)
{
    uint32_t vector = AP_TRAMPOLINE >> 12;

    prepare_cpu(idx);
    ap_boot.index = idx;
    ap_boot.kernel_rsp = cpu_area_of(idx) + KSTACK_TOP_OFF;
    ap_boot.user_rsp = cpu_area_of(idx) + USTACK_TOP_OFF - 8;
    ap_boot.tss_sel = TSS_SEL(idx);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);

    send_ipi(apic_id, ICR_INIT);
    tsc_delay_us(10000);
    send_ipi(apic_id, ICR_STARTUP | vector);
    if (wait_flag(&cpu_online[idx], 1000))
        return 1;
    send_ipi(apic_id, ICR_STARTUP | vector);
    return wait_flag(&cpu_online[idx], AP_START_TIMEOUT_US);
}

/*
 * Start every enabled CPU of the MADT (as far as MAX_CPUS allows), one
 * after the other; each runs work(index) in ring 3 as soon as it is up.
 * Returns 1 if all of them came up.
 */
static int start_cpus(void (*work)(unsigned))
{
    uint32_t bsp = lapic_id();
    unsigned i;
    int all = 1;

    cpu_apic_id[0] = madt_apic_id[0] = bsp;
    cpu_online[0] = 1;
    ncpus = 1;
    expected_cpus = 1;
    ap_work = work;
    if (!acpi.have_madt)
        return 1;

    memcpy((void *)AP_TRAMPOLINE, ap_trampoline, (size_t)(ap_trampoline_end - ap_trampoline));
    for (i = 0; i < acpi.ncpus; i++) {
        uint32_t id = acpi.apic_ids[i];
        unsigned idx;

        if (id == bsp)
            continue;
        if (expected_cpus >= MAX_CPUS)
            break;
        expected_cpus++;
        if (!all)
            continue;                   /* after a failure, start no more */
        if (id > 0xfe) {
            line_begin("smp");
            kv_dec("skipped_apic_id", id);
            put_quoted("reason", "not reachable in xAPIC mode");
            line_end();
            all = 0;
            continue;
        }
        idx = ncpus;
        madt_apic_id[idx] = id;
        if (!start_ap(idx, id)) {
            line_begin(NULL);
            put_str(" error=\"cpu ");
            put_dec(idx);
            put_str(" (apic_id ");
            put_dec(id);
            put_str(") did not start\"");
            line_end();
            all = 0;
            continue;
        }
        ncpus++;
    }
    return all;
}

/* Ring 3 on an AP, entered from ap_long in entry.S. */
void ap_user_main(unsigned index)
{
    void (*work)(unsigned);

    cpu_apic_id[index] = lapic_id();
    lapic_enable();
    __atomic_store_n(&cpu_online[index], 1, __ATOMIC_RELEASE);
    work = ap_work;
    if (work)
        work(index);
    __atomic_store_n(&cpu_done[index], 1, __ATOMIC_RELEASE);
    probe_halt();
}

/* BSP: wait for the other CPUs' work; returns how many finished. */
static unsigned wait_done(void)
{
    unsigned i, done = 1;

    for (i = 1; i < ncpus; i++)
        if (wait_flag(&cpu_done[i], WORK_TIMEOUT_US))
            done++;
    return done;
}

/* Common start of the smp and timer workloads, on the BSP. */
static void setup_bsp(uint32_t kind, uint64_t info)
{
    acpi_scan(kind, info, 0);
    if (acpi.have_madt)
        lapic = acpi.lapic_addr;
    lapic_eoi_addr = lapic + LAPIC_EOI;
    lapic_enable();
    calibrate();
}

/* For other workloads: the LAPIC as the ACPI MADT (if any) places it. */
static void use_madt_lapic(void)
{
    if (acpi.have_madt)
        lapic = acpi.lapic_addr;
    lapic_eoi_addr = lapic + LAPIC_EOI;
}

uint64_t tsc_calibrate(const char **source)
{
    use_madt_lapic();
    lapic_enable();
    calibrate();
    if (source)
        *source = tsc_source;
    return tsc_rate;
}

uint64_t lapic_timer_hz(void)
{
    return apic_hz;
}

uint64_t lapic_base(void)
{
    return lapic;
}

uint32_t lapic_setup_for_msi(void)
{
    use_madt_lapic();
    lapic_enable();
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
    port_outb(PIC1_DATA, 0xff);
    port_outb(PIC2_DATA, 0xff);
    return lapic_id();
}

/* ------------------------------------------------------------------ */
/* smp workload.                                                        */

static uint64_t checksum(uint64_t n)
{
    uint64_t x = 0x9E3779B97F4A7C15ULL, sum = 0, i;

    for (i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum += x;
    }
    return sum;
}

static void smp_work(unsigned idx)
{
    uint64_t n = 100000 * (uint64_t)(idx + 1);
    uint64_t t0 = rdtsc(), sum = checksum(n), t1 = rdtsc();

    line_begin("smp");
    kv_dec("cpu", idx);
    kv_dec("apic_id", cpu_apic_id[idx]);
    put_str(" checksum=");
    put_hex16(sum);
    kv_dec("n", n);
    kv_dec("cycles", t1 - t0);
    line_end();
    cpu_ok[idx] = cpu_apic_id[idx] == madt_apic_id[idx];
}

NORETURN void test_smp(uint32_t kind, uint64_t info)
{
    int all_started;
    unsigned done, i;
    uint64_t t0, t1;

    setup_bsp(kind, info);
    if (!acpi.have_madt)
        fail("no MADT", "", 0);
    t0 = rdtsc();
    all_started = start_cpus(smp_work);
    t1 = rdtsc();
    smp_work(0);
    done = wait_done();

    for (i = 0; i < ncpus; i++) {
        if (cpu_done[i] || i == 0) {
            if (!cpu_ok[i]) {
                line_begin(NULL);
                put_str(" error=\"cpu ");
                put_dec(i);
                put_str(" has apic_id ");
                put_dec(cpu_apic_id[i]);
                put_str(", the MADT said ");
                put_dec(madt_apic_id[i]);
                put_str("\"");
                line_end();
                all_started = 0;
            }
        }
    }
    line_begin("smp");
    kv_dec("cpus_online", ncpus);
    kv_dec("expected", expected_cpus);
    kv_dec("startup_cycles", t1 - t0);
    kv_dec("tsc_hz", tsc_rate);
    line_end();
    if (!all_started || done != ncpus || ncpus != expected_cpus)
        fail("not all CPUs came up and finished", "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* timer workload.                                                      */

static uint64_t timer_ticks_wanted;
static uint32_t timer_init_count;

static void timer_work(unsigned idx)
{
    struct percpu *pc = percpu_of(idx);
    uint64_t n = timer_ticks_wanted, limit, start, t_first = 0, t_last = 0;
    uint64_t first = 0, last = 0, seen = 0, period = 0;

    /*
     * Only the LAPIC timer may interrupt: firmware may have left the 8259
     * running with its BIOS vectors (IRQ0 on vector 8 would look like #DF),
     * so external interrupts through LINT0 stay masked (the 8259 itself
     * is masked by the BSP in test_timer).
     */
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    pc->ticks = 0;
    limit = us_to_tsc(2000000) + n * us_to_tsc(50000);   /* 5x the period, + 2 s */
    lapic_write(LAPIC_TIMER_DCR, DCR_DIV_16);
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
    lapic_write(LAPIC_TIMER_ICR, timer_init_count);
    user_sti();
    start = rdtsc();
    while (seen < n) {
        uint64_t t = rdtsc(), now = pc->ticks;

        if (now != seen) {
            if (!t_first) {
                t_first = t;
                first = now;
            }
            t_last = t;
            last = now;
            seen = now;
        }
        if (t - start > limit)
            break;
        cpu_relax();
    }
    user_cli();
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
    lapic_write(LAPIC_TIMER_ICR, 0);
    if (last > first)
        period = (t_last - t_first) / (last - first);

    line_begin("timer");
    kv_dec("cpu", idx);
    kv_dec("ticks", pc->ticks);
    kv_dec("period_tsc", period);
    line_end();
    cpu_ok[idx] = seen >= n;
}

NORETURN void test_timer(uint32_t kind, uint64_t info, uint64_t n)
{
    int all_started;
    unsigned done, i, ok = 1;

    setup_bsp(kind, info);
    port_outb(PIC1_DATA, 0xff);
    port_outb(PIC2_DATA, 0xff);
    timer_ticks_wanted = n;
    timer_init_count = (uint32_t)(apic_hz / TIMER_DIVIDE / 100);      /* 10 ms */
    line_begin("timer");
    kv_dec("tsc_hz", tsc_rate);
    kv_str("tsc_source", tsc_source);
    kv_dec("apic_hz", apic_hz);
    kv_str("apic_source", apic_source);
    kv_dec("divide", TIMER_DIVIDE);
    kv_dec("init_count", timer_init_count);
    kv_dec("period_tsc_expected", tsc_rate / 100);
    kv_hex("vector", TIMER_VECTOR);
    kv_dec("madt_cpus", acpi.have_madt ? acpi.ncpus : 0);
    line_end();

    all_started = start_cpus(timer_work);
    timer_work(0);
    done = wait_done();
    for (i = 0; i < ncpus; i++)
        if (!cpu_ok[i] || (i && !cpu_done[i]))
            ok = 0;
    line_begin("timer");
    kv_dec("cpus_online", ncpus);
    kv_dec("expected", expected_cpus);
    line_end();
    if (!all_started || done != ncpus)
        fail("not all CPUs came up and finished", "", 0);
    if (!ok)
        fail("not every CPU got its timer ticks", "", 0);
    pass();
}
