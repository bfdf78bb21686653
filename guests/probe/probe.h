/*
 * probe: a tiny freestanding x86-64 test guest.
 *
 * Shared definitions for the assembly entry code and the C parts.
 */
#ifndef PROBE_H
#define PROBE_H

/* GDT selectors (see the GDT in entry.S). */
#define KERNEL_CS   0x08
#define KERNEL_DS   0x10
#define USER_DS     0x18
#define USER_CS     0x20
#define TSS_SEL     0x28

/* How the probe was entered. */
#define BOOT_ELF64  0
#define BOOT_PVH    1

/* Control register / MSR bits. */
#define CR0_PE      0x00000001
#define CR0_PG      0x80000000
#define CR4_TSD     0x00000004
#define CR4_PAE     0x00000020
#define CR4_UMIP    0x00000800
#define CR4_SMEP    0x00100000
#define CR4_SMAP    0x00200000
#define CR4_PKE     0x00400000
#define CR4_CET     0x00800000
#define MSR_EFER    0xc0000080
#define EFER_LME    0x00000100

#define RFLAGS_FIXED 0x2         /* bit 1 always reads as one */
#define RFLAGS_IOPL3 0x3000

/*
 * I/O gate: "int3" from ring 3 (vector 3, DPL 3) with ECX = one of the
 * IO_GATE_* codes, EDX = port, EAX = value/result.  Used for port I/O when
 * ring 3 does not actually get IOPL=3 (see README), and to halt.  An int3
 * with any other ECX is reported as a breakpoint exception.
 */
#define IO_GATE_VECTOR  3
#define IO_GATE_MAGIC   0x70726f00
#define IO_GATE_OUTB    (IO_GATE_MAGIC + 1)
#define IO_GATE_INB     (IO_GATE_MAGIC + 2)
#define IO_GATE_OUTL    (IO_GATE_MAGIC + 3)
#define IO_GATE_HALT    (IO_GATE_MAGIC + 4)

/* IST slot used for #NMI, #DF and #MC. */
#define IST_CRITICAL 1

/* Sizes of the stacks (in the .stack section, neither loaded nor zeroed). */
#define KERNEL_STACK_SIZE 8192
#define IST_STACK_SIZE    4096
#define USER_STACK_SIZE   16384

/* Devices. */
#define COM1_PORT        0x3f8
#define DEBUG_EXIT_PORT  0xf4

/* Exit statuses written to the debug-exit port. */
#define EXIT_PASS       0
#define EXIT_FAIL       1
#define EXIT_EXCEPTION  3

#ifndef __ASSEMBLER__

#include <stdint.h>
#include <stddef.h>

#define NORETURN __attribute__((noreturn))

/* Saved state handed to the C exception handler by the assembly stubs. */
struct trap_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;
    uint64_t rip, cs, rflags, rsp, ss;     /* pushed by the CPU */
};

/* entry.S */
NORETURN void probe_halt(void);

/* Port I/O instructions: ring 0, or ring 3 with IOPL=3. */
static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* The same through the ring-0 I/O gate (ring 3 only). */
static inline void gate_outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("int3" : : "a"(v), "c"(IO_GATE_OUTB), "d"(port) : "memory");
}

static inline void gate_outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("int3" : : "a"(v), "c"(IO_GATE_OUTL), "d"(port) : "memory");
}

static inline uint8_t gate_inb(uint16_t port)
{
    uint32_t v = 0;

    __asm__ volatile("int3" : "+a"(v) : "c"(IO_GATE_INB), "d"(port) : "memory");
    return (uint8_t)v;
}

/*
 * Nonzero while port I/O has to go through the gate: set by ring 3 when
 * it finds RFLAGS.IOPL < 3, cleared by the ring-0 exception handler.
 */
extern int io_use_gate;

static inline void port_outb(uint16_t port, uint8_t v)
{
    if (io_use_gate)
        gate_outb(port, v);
    else
        outb(port, v);
}

static inline void port_outl(uint16_t port, uint32_t v)
{
    if (io_use_gate)
        gate_outl(port, v);
    else
        outl(port, v);
}

static inline uint8_t port_inb(uint16_t port)
{
    return io_use_gate ? gate_inb(port) : inb(port);
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* io.c: output lines and the exit device. */
void put_char(char c);
void put_str(const char *s);
void put_dec(uint64_t v);
void put_hex(uint64_t v);               /* 0x..., no leading zeros */
void put_hex16(uint64_t v);             /* 0x + exactly 16 digits */
void put_escaped(const char *s, size_t len);
void line_begin(const char *tag);       /* "probe: " [tag] */
void kv_dec(const char *key, uint64_t v);
void kv_hex(const char *key, uint64_t v);
void kv_str(const char *key, const char *v);
void line_end(void);
NORETURN void probe_exit(uint32_t status);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

/* trap.c (ring 0) */
NORETURN void exception_handler(struct trap_frame *f);

/* main.c (ring 3) */
NORETURN void user_main(uint32_t kind, uint64_t info);

#endif /* __ASSEMBLER__ */
#endif /* PROBE_H */
