/*
 * Output on COM1 and the debug-exit device.  Used from ring 3 and from the
 * ring-0 exception handler alike, on any CPU.
 */
#include "probe.h"

#define UART_THR        0               /* transmit holding register */
#define UART_LSR        5               /* line status register */
#define UART_LSR_THRE   0x20

/*
 * Bounded wait for THRE.  If it ever times out, the device is taken to
 * never report THRE and polling stops for the rest of the run, so a
 * missing or incomplete UART costs one timeout, not one per byte.
 */
#define THRE_POLL_LIMIT 10000

int io_use_gate;
static int thre_broken;

/*
 * Output lock, so that lines from several CPUs do not mix: line_begin()
 * takes it and line_end() drops it.  It records its owner (CPU index + 1)
 * and nests, so the exception handler can still print when its CPU
 * faulted in the middle of a line.  Ring 3 waits for it as long as it
 * takes; ring 0 (the exception handler) only for a while and then takes
 * it over, since the owner may be stuck.
 */
#define PRINT_LOCK_RING0_SPINS 100000

static uint32_t print_owner;
static unsigned print_depth;

void print_lock(void)
{
    uint32_t me = this_cpu() + 1;
    unsigned long spins = 0;
    int ring0 = in_ring0();

    if (__atomic_load_n(&print_owner, __ATOMIC_ACQUIRE) == me) {
        print_depth++;
        return;
    }
    for (;;) {
        uint32_t expected = 0;

        if (__atomic_compare_exchange_n(&print_owner, &expected, me, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            break;
        if (ring0 && ++spins >= PRINT_LOCK_RING0_SPINS) {
            __atomic_store_n(&print_owner, me, __ATOMIC_SEQ_CST);
            break;
        }
        cpu_relax();
    }
    print_depth = 1;
}

void print_unlock(void)
{
    if (__atomic_load_n(&print_owner, __ATOMIC_RELAXED) != this_cpu() + 1)
        return;
    if (--print_depth == 0)
        __atomic_store_n(&print_owner, 0, __ATOMIC_RELEASE);
}

void put_char(char c)
{
    if (!thre_broken) {
        unsigned tries = 0;

        while (!(port_inb(COM1_PORT + UART_LSR) & UART_LSR_THRE)) {
            if (++tries >= THRE_POLL_LIMIT) {
                thre_broken = 1;
                break;
            }
        }
    }
    port_outb(COM1_PORT + UART_THR, (uint8_t)c);
}

void put_str(const char *s)
{
    while (*s)
        put_char(*s++);
}

void put_dec(uint64_t v)
{
    char buf[20];
    int i = 0;

    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        put_char(buf[--i]);
}

static const char hex_digits[] = "0123456789abcdef";

void put_hex(uint64_t v)
{
    int shift = 60;

    put_str("0x");
    while (shift > 0 && !((v >> shift) & 0xf))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        put_char(hex_digits[(v >> shift) & 0xf]);
}

void put_hex16(uint64_t v)
{
    int shift;

    put_str("0x");
    for (shift = 60; shift >= 0; shift -= 4)
        put_char(hex_digits[(v >> shift) & 0xf]);
}

void put_ipv4(uint32_t ip)
{
    int shift;

    for (shift = 24; shift >= 0; shift -= 8) {
        put_dec((ip >> shift) & 0xff);
        if (shift)
            put_char('.');
    }
}

void put_mac(const uint8_t *mac)
{
    int i;

    for (i = 0; i < 6; i++) {
        if (i)
            put_char(':');
        put_char(hex_digits[mac[i] >> 4]);
        put_char(hex_digits[mac[i] & 0xf]);
    }
}

/*
 * Printable ASCII goes out as is; '"', '\\' and anything outside
 * 0x20..0x7e are written as \xHH so a quoted value stays one token.
 */
void put_escaped(const char *s, size_t len)
{
    while (len--) {
        unsigned char c = (unsigned char)*s++;

        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') {
            put_str("\\x");
            put_char(hex_digits[c >> 4]);
            put_char(hex_digits[c & 0xf]);
        } else {
            put_char((char)c);
        }
    }
}

void line_begin(const char *tag)
{
    print_lock();
    put_str("probe:");
    if (tag) {
        put_char(' ');
        put_str(tag);
    }
}

static void key(const char *k)
{
    put_char(' ');
    put_str(k);
    put_char('=');
}

void kv_dec(const char *k, uint64_t v)
{
    key(k);
    put_dec(v);
}

void kv_hex(const char *k, uint64_t v)
{
    key(k);
    put_hex(v);
}

void kv_str(const char *k, const char *v)
{
    key(k);
    put_str(v);
}

void line_end(void)
{
    put_char('\n');
    print_unlock();
}

void probe_exit(uint32_t status)
{
    port_outl(DEBUG_EXIT_PORT, status);
    probe_halt();
}

/* The compiler may emit calls to these. */
void *memset(void *d, int c, size_t n)
{
    unsigned char *p = d;

    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    unsigned char *p = d;
    const unsigned char *q = s;

    while (n--)
        *p++ = *q++;
    return d;
}

/* Shell sort with Knuth's gaps (1, 4, 13, 40, ...). */
void sort_u64(uint64_t *a, uint64_t n)
{
    uint64_t g = 1, i, j;

    while (g < n / 3)
        g = 3 * g + 1;
    for (; g > 0; g /= 3) {
        for (i = g; i < n; i++) {
            uint64_t x = a[i];

            for (j = i; j >= g && a[j - g] > x; j -= g)
                a[j] = a[j - g];
            a[j] = x;
        }
    }
}

uint64_t percentile_u64(const uint64_t *sorted, uint64_t n, unsigned p)
{
    uint64_t r = (p * n + 99) / 100;

    if (!n)
        return 0;
    return sorted[r ? r - 1 : 0];
}
