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
#define KERNEL_CS32 0x28        /* 32-bit code: AP start-up only */
#define TSS_SEL0    0x30        /* CPU i: TSS_SEL0 + 16 * i (16-byte descriptors) */
#define TSS_SEL(i)  (TSS_SEL0 + 16 * (i))

/* Most CPUs the probe brings up (GDT slots and per-CPU areas). */
#define MAX_CPUS    64

/* The probe's identity map covers 0..4 GiB (entry.S). */
#define MAPPED_LIMIT 0x100000000ULL

/* How the probe was entered. */
#define BOOT_ELF64  0
#define BOOT_PVH    1

/* Control register / MSR bits. */
#define CR0_PE      0x00000001
#define CR0_NW      0x20000000
#define CR0_CD      0x40000000
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
#define RFLAGS_IF    0x200
#define RFLAGS_IOPL3 0x3000

/*
 * I/O gate: "int3" from ring 3 (vector 3, DPL 3) with ECX = one of the
 * IO_GATE_* codes, EDX = port, EAX = value/result.  Used for port I/O when
 * ring 3 does not actually get IOPL=3 (see README), to halt, to switch
 * interrupts on or off for ring 3, and to run the ring-0 exit loops.  An
 * int3 with any other ECX is reported as a breakpoint exception.
 */
#define IO_GATE_VECTOR  3
#define IO_GATE_MAGIC   0x70726f00
#define IO_GATE_OUTB    (IO_GATE_MAGIC + 1)
#define IO_GATE_INB     (IO_GATE_MAGIC + 2)
#define IO_GATE_OUTL    (IO_GATE_MAGIC + 3)
#define IO_GATE_HALT    (IO_GATE_MAGIC + 4)
#define IO_GATE_OUTW    (IO_GATE_MAGIC + 5)   /* EDX port, AX value */
#define IO_GATE_INW     (IO_GATE_MAGIC + 6)   /* EDX port, AX result */
#define IO_GATE_STI     (IO_GATE_MAGIC + 7)   /* return to ring 3 with IF=1 */
#define IO_GATE_CLI     (IO_GATE_MAGIC + 8)   /* return to ring 3 with IF=0 */
#define IO_GATE_PIO_LOOP  (IO_GATE_MAGIC + 9)  /* RSI times outb, EDX port */
#define IO_GATE_MMIO_LOOP (IO_GATE_MAGIC + 10) /* RSI times movl to (RDI) */
#define IO_GATE_INL     (IO_GATE_MAGIC + 11)  /* EDX port, EAX result */
#define IO_GATE_WAIT    (IO_GATE_MAGIC + 12)  /* sti; hlt; cli: sleep until an interrupt */

/* IST slot used for #NMI, #DF and #MC. */
#define IST_CRITICAL 1

/*
 * Per-CPU areas: CPU i owns CPU_AREA_SIZE bytes at CPU_AREAS + i *
 * CPU_AREA_SIZE (neither loaded nor zeroed).  From the bottom up: kernel
 * stack (TSS.RSP0), IST stack, user stack, then one page of per-CPU data
 * with the CPU's TSS (the BSP uses the static TSS in entry.S).  Any stack
 * pointer of a CPU therefore tells which CPU it is.
 */
#define CPU_AREAS         0x200000
#define CPU_AREA_SHIFT    15
#define CPU_AREA_SIZE     (1 << CPU_AREA_SHIFT)
#define KERNEL_STACK_SIZE 8192
#define IST_STACK_SIZE    4096
#define USER_STACK_SIZE   16384
#define KSTACK_TOP_OFF    KERNEL_STACK_SIZE
#define IST_TOP_OFF       (KSTACK_TOP_OFF + IST_STACK_SIZE)
#define USTACK_TOP_OFF    (IST_TOP_OFF + USER_STACK_SIZE)
#define PERCPU_OFF        USTACK_TOP_OFF          /* struct percpu */
#define PERCPU_TICKS      0                       /* offset of percpu.ticks */
#define PERCPU_TSS        0x100                   /* offset of percpu.tss */

/* The counter workload's 64-bit counter: alone in its page. */
#define COUNTER_ADDR      0x1ff000

/* AP start-up trampoline: copied here, SIPI vector = page number. */
#define AP_TRAMPOLINE     0x8000

/* Offsets in ap_boot (entry.S), the start-up parameters of one AP. */
#define AP_BOOT_INDEX      0
#define AP_BOOT_KERNEL_RSP 8
#define AP_BOOT_USER_RSP   16
#define AP_BOOT_TSS_SEL    24

/* Timer workload: LAPIC timer vector; spurious-interrupt vector. */
#define TIMER_VECTOR      0x40
#define SPURIOUS_VECTOR   0xff

/*
 * MSI-X vectors of the virtio workloads: IRQ_VECTOR_BASE + i for MSI-X
 * table entry i (0 = configuration change, 1 + q = queue q).  The ring-0
 * handler counts each in irq_count[i] and sends an EOI.
 */
#define IRQ_POLL          0       /* probe.irq=poll */
#define IRQ_MSIX          1       /* probe.irq=msix: virtio-PCI */
#define IRQ_IOAPIC        2       /* probe.irq=ioapic: virtio-MMIO, one IOAPIC line per device */
#define IRQ_VECTOR_BASE   0x50
#define IRQ_VECTORS       4

#define LAPIC_DEFAULT_BASE 0xfee00000
#define LAPIC_EOI          0x0b0

/*
 * RAM for the virtio workloads' rings, request headers and data buffers,
 * handed out by dma_alloc() (pci.c); neither loaded nor zeroed.
 */
#define DMA_ARENA        0x400000
#define DMA_ARENA_END    0x2000000

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

static inline void gate_outw(uint16_t port, uint16_t v)
{
    __asm__ volatile("int3" : : "a"(v), "c"(IO_GATE_OUTW), "d"(port) : "memory");
}

static inline uint16_t gate_inw(uint16_t port)
{
    uint32_t v = 0;

    __asm__ volatile("int3" : "+a"(v) : "c"(IO_GATE_INW), "d"(port) : "memory");
    return (uint16_t)v;
}

static inline uint32_t gate_inl(uint16_t port)
{
    uint32_t v = 0;

    __asm__ volatile("int3" : "+a"(v) : "c"(IO_GATE_INL), "d"(port) : "memory");
    return v;
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outw(uint16_t port, uint16_t v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint16_t inw(uint16_t port)
{
    uint16_t v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* Ring 3: let interrupts in (or keep them out) from now on. */
static inline void user_sti(void)
{
    __asm__ volatile("int3" : : "c"(IO_GATE_STI) : "memory");
}

static inline void user_cli(void)
{
    __asm__ volatile("int3" : : "c"(IO_GATE_CLI) : "memory");
}

/* Ring 3: sleep (hlt in ring 0) until an interrupt has been handled. */
static inline void user_wait_irq(void)
{
    __asm__ volatile("int3" : : "c"(IO_GATE_WAIT) : "memory");
}

/*
 * Nonzero when ring 3 has no I/O privilege and port I/O from ring 3 has
 * to go through the gate (set once by ring 3 when it finds
 * RFLAGS.IOPL < 3).  Ring 0 always uses in/out directly.
 */
extern int io_use_gate;

static inline int in_ring0(void)
{
    uint16_t cs;

    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    return (cs & 3) == 0;
}

static inline int need_gate(void)
{
    return io_use_gate && !in_ring0();
}

static inline void port_outb(uint16_t port, uint8_t v)
{
    if (need_gate())
        gate_outb(port, v);
    else
        outb(port, v);
}

static inline void port_outl(uint16_t port, uint32_t v)
{
    if (need_gate())
        gate_outl(port, v);
    else
        outl(port, v);
}

static inline uint8_t port_inb(uint16_t port)
{
    return need_gate() ? gate_inb(port) : inb(port);
}

static inline void port_outw(uint16_t port, uint16_t v)
{
    if (need_gate())
        gate_outw(port, v);
    else
        outw(port, v);
}

static inline uint16_t port_inw(uint16_t port)
{
    return need_gate() ? gate_inw(port) : inw(port);
}

static inline uint32_t port_inl(uint16_t port)
{
    return need_gate() ? gate_inl(port) : inl(port);
}

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" : : : "memory");
}

static inline void barrier(void)
{
    __asm__ volatile("" : : : "memory");
}

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(leaf), "c"(sub));
}

static inline uint32_t mmio_read32(uint64_t addr)
{
    return *(volatile uint32_t *)addr;
}

static inline void mmio_write32(uint64_t addr, uint32_t v)
{
    *(volatile uint32_t *)addr = v;
}

static inline uint16_t mmio_read16(uint64_t addr)
{
    return *(volatile uint16_t *)addr;
}

static inline uint8_t mmio_read8(uint64_t addr)
{
    return *(volatile uint8_t *)addr;
}

static inline void mmio_write8(uint64_t addr, uint8_t v)
{
    *(volatile uint8_t *)addr = v;
}

static inline void mmio_write16(uint64_t addr, uint16_t v)
{
    *(volatile uint16_t *)addr = v;
}

/* Which CPU this is (0 = BSP), from the stack pointer: see CPU_AREAS. */
static inline unsigned this_cpu(void)
{
    uint64_t sp = (uint64_t)__builtin_frame_address(0);

    return (unsigned)((sp - CPU_AREAS) >> CPU_AREA_SHIFT);
}

/* Per-CPU data, at PERCPU_OFF in each CPU area. */
struct percpu {
    volatile uint64_t ticks;            /* timer interrupts (ring 0 counts) */
    uint8_t pad[PERCPU_TSS - 8];
    uint8_t tss[104];                   /* 64-bit TSS (APs only) */
};

static inline struct percpu *percpu_of(unsigned cpu)
{
    return (struct percpu *)(uint64_t)(CPU_AREAS + (uint64_t)cpu * CPU_AREA_SIZE + PERCPU_OFF);
}

static inline uint64_t cpu_area_of(unsigned cpu)
{
    return CPU_AREAS + (uint64_t)cpu * CPU_AREA_SIZE;
}

/* a * b / c without overflow in the product (the quotient must fit). */
static inline uint64_t muldiv64(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t lo, hi, q, r;

    if (c == 0)
        return 0;
    __asm__("mulq %3" : "=a"(lo), "=d"(hi) : "a"(a), "rm"(b) : "cc");
    if (hi >= c)
        return UINT64_MAX;
    __asm__("divq %4" : "=a"(q), "=d"(r) : "a"(lo), "d"(hi), "rm"(c) : "cc");
    return q;
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* io.c: output lines and the exit device. */
void print_lock(void);                  /* one line at a time across CPUs */
void print_unlock(void);
void put_char(char c);
void put_str(const char *s);
void put_dec(uint64_t v);
void put_hex(uint64_t v);               /* 0x..., no leading zeros */
void put_hex16(uint64_t v);             /* 0x + exactly 16 digits */
void put_escaped(const char *s, size_t len);
void put_ipv4(uint32_t ip);             /* dotted quad, ip in host order */
void put_mac(const uint8_t *mac);       /* 6 bytes as aa:bb:cc:dd:ee:ff */
void line_begin(const char *tag);       /* print_lock(), "probe:" [" " tag] */
void kv_dec(const char *key, uint64_t v);
void kv_hex(const char *key, uint64_t v);
void kv_str(const char *key, const char *v);
void line_end(void);                    /* "\n", print_unlock() */
NORETURN void probe_exit(uint32_t status);

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void sort_u64(uint64_t *a, uint64_t n);                 /* ascending */
/* Nearest-rank p-th percentile of n sorted values (0 if n is 0). */
uint64_t percentile_u64(const uint64_t *sorted, uint64_t n, unsigned p);

/* trap.c (ring 0) */
NORETURN void exception_handler(struct trap_frame *f);

/* main.c (ring 3) */
#define FEAT_EVENT_IDX  1               /* probe.features=eventidx */
#define FEAT_INDIRECT   2               /* probe.features=indirect */
#define FEAT_OFFLOAD    4               /* probe.features=offload (virtio-net) */
struct options {
    const char *test;
    size_t test_len;
    uint64_t n;
    int have_n;
    uint64_t port;
    int have_port;
    uint64_t addr;
    unsigned ring;              /* pio/mmio: loop in ring 3 or ring 0 */
    int msix;                   /* probe.irq: IRQ_POLL, IRQ_MSIX or IRQ_IOAPIC (nonzero: interrupts) */
    uint64_t qd;                /* probe.qd: requests in flight */
    int have_qd;
    uint64_t mb;                /* probe.mb: MiB for blkbench */
    int have_mb;
    unsigned features;          /* FEAT_* from probe.features */
    uint32_t ip;                /* probe.ip: the guest's IPv4 address */
    uint32_t peer;              /* probe.peer: the host's IPv4 address */
    uint64_t secs;              /* probe.secs: how long to run */
    int have_secs;
    uint64_t size;              /* probe.size: bytes per frame or message */
    int have_size;
    uint64_t conns;             /* probe.conns: vsockclient connections */
    unsigned dev;               /* probe.dev: which device of its kind (blkswap) */
    const char *path;           /* probe.path: fs reads this file */
    size_t path_len;
    const char *out;            /* probe.out: fs writes this file ... */
    size_t out_len;
    const char *text;           /* probe.text: ... with this content */
    size_t text_len;
    uint32_t boot_kind;         /* how the probe was entered */
    uint64_t boot_info;         /* zero page or hvm_start_info */
    uint64_t cmdline;           /* where the command line is (0: none) */
    uint64_t cmdline_len;
};
NORETURN void user_main(uint32_t kind, uint64_t info);
/* An unsigned number: decimal, or hex with a 0x prefix when allow_hex is
 * set.  Returns 0 on a syntax error or overflow. */
int parse_u64(const char *s, size_t len, int allow_hex, uint64_t *out);
void print_result(int pass);
NORETURN void fail(const char *msg, const char *arg, size_t arg_len);
NORETURN void pass(void);
void put_quoted(const char *key, const char *s);

/* acpi.c (ring 3) */
#define ACPI_MAX_CPUS 256
struct gas {                            /* ACPI Generic Address Structure */
    uint8_t space;                      /* 0 memory, 1 I/O */
    uint8_t bit_width;
    uint64_t addr;
};
struct acpi_info {
    uint64_t rsdp;
    const char *rsdp_source;            /* "zeropage", "pvh", "scan" */
    int have_madt;
    uint64_t madt;
    uint32_t madt_len;
    uint64_t lapic_addr;
    unsigned ncpus;                     /* enabled CPUs in the MADT */
    uint32_t apic_ids[ACPI_MAX_CPUS];
    int have_ioapic;
    uint64_t ioapic_addr;
    uint32_t ioapic_gsi_base;
    int have_fadt;
    uint32_t fadt_flags;
    struct gas sleep_control;
    struct gas reset_reg;
    uint8_t reset_value;
    int have_reset;
    struct gas pm1a_cnt;
    uint32_t smi_cmd;
    uint8_t acpi_enable;
    uint64_t dsdt;
    uint64_t mcfg;                      /* MCFG table, 0 if none */
    uint32_t mcfg_len;
};
extern struct acpi_info acpi;
/* Parse what is there; verbose=1 prints the acpi workload's lines.
 * Returns 1 if all checksums were fine. */
int acpi_scan(uint32_t kind, uint64_t info, int verbose);
NORETURN void test_acpi(uint32_t kind, uint64_t info);
NORETURN void test_poweroff(uint32_t kind, uint64_t info);

/* smp.c (ring 3) */
uint64_t tsc_hz(void);
void tsc_delay_us(uint64_t us);
NORETURN void test_smp(uint32_t kind, uint64_t info);
NORETURN void test_timer(uint32_t kind, uint64_t info, uint64_t n);
NORETURN void ap_user_main(unsigned index);
/* Calibrate the TSC as the timer workload does (enables the LAPIC);
 * returns the rate and where it came from. */
uint64_t tsc_calibrate(const char **source);
/* Software-enable this CPU's LAPIC, mask LINT0 and the 8259, so that
 * only MSIs reach ring 3 once it turns interrupts on.  Returns the
 * LAPIC ID. */
uint32_t lapic_setup_for_msi(void);
/* After tsc_calibrate: the LAPIC timer's rate (divide by 1) and base. */
uint64_t lapic_timer_hz(void);
uint64_t lapic_base(void);

/* sched.c (ring 3) */
NORETURN void test_burn(const struct options *o);
NORETURN void test_latency(const struct options *o);

/* entry.S: MSI-X interrupts counted by the ring-0 handlers. */
extern volatile uint64_t irq_count[IRQ_VECTORS];

/* pci.c (ring 3) */
struct pci_bar {
    uint64_t addr;              /* 0: unassigned or not usable */
    uint64_t size;
    uint8_t io, is64, pref;
    const char *how;            /* "firmware", "probe" or why it is unusable */
};
struct pci_dev {
    uint8_t bus, dev, fn, hdr_type;
    uint16_t vendor, device;
    uint32_t class_code;        /* base class, subclass, prog-if */
    unsigned nbars;
    struct pci_bar bar[6];
};
#define PCI_MAX_DEVS 64
extern struct pci_dev pci_devs[PCI_MAX_DEVS];
extern unsigned pci_ndevs;
/* Find the configuration mechanism, enumerate, size and (if need be)
 * assign BARs.  verbose: 0 quiet, 1 one line per function, 2 also the
 * BARs.  Returns NULL or an error message. */
const char *pci_init(const struct options *o, int verbose);
uint32_t pci_read32(const struct pci_dev *d, unsigned off);
uint16_t pci_read16(const struct pci_dev *d, unsigned off);
uint8_t pci_read8(const struct pci_dev *d, unsigned off);
void pci_write32(const struct pci_dev *d, unsigned off, uint32_t v);
void pci_write16(const struct pci_dev *d, unsigned off, uint16_t v);
/* Next capability with this ID after offset 'after' (0: from the start). */
unsigned pci_find_cap(const struct pci_dev *d, uint8_t id, unsigned after);
struct pci_dev *pci_find(uint16_t vendor, uint16_t device);
struct pci_dev *pci_find_nth(uint16_t vendor, uint16_t device, unsigned nth);
/* Memory decoding and bus mastering on, INTx off. */
void pci_enable(const struct pci_dev *d);
void pci_put_bdf(const struct pci_dev *d);
NORETURN void test_pci(const struct options *o);

/* pci.c: DMA memory (identity mapped RAM in the DMA arena, zeroed). */
void *dma_alloc(uint64_t size, uint64_t align);
uint64_t dma_mark(void);
void dma_release(uint64_t mark);

/* virtio.c, blk.c, net.c, vsock.c, balloon.c (ring 3) */
NORETURN void test_rng(const struct options *o);
NORETURN void test_net(const struct options *o);
NORETURN void test_netping(const struct options *o);
NORETURN void test_netbench(const struct options *o);
NORETURN void test_nethostile(const struct options *o);
NORETURN void test_vsock(const struct options *o);
NORETURN void test_vsockclient(const struct options *o);
NORETURN void test_balloon(const struct options *o);
NORETURN void test_ticker(const struct options *o);
NORETURN void test_memsum(const struct options *o);
/* mptable.c (ring 3) */
NORETURN void test_mptable(const struct options *o);
NORETURN void test_blksnap(const struct options *o);
NORETURN void test_blkswap(const struct options *o);
NORETURN void test_kbd(const struct options *o);
NORETURN void test_fwcfg(const struct options *o);
NORETURN void test_fs(const struct options *o);
NORETURN void test_fsbench(const struct options *o);
int fw_cfg_find(const char *name, uint16_t *select, uint32_t *size);
void fw_cfg_read(uint16_t select, void *buf, uint64_t n);
NORETURN void test_vmgenid(const struct options *o);
NORETURN void test_blk(const struct options *o);
NORETURN void test_blkbench(const struct options *o);
NORETURN void test_blkflush(const struct options *o);
NORETURN void test_blksum(const struct options *o);
NORETURN void test_hostile(const struct options *o);

#endif /* __ASSEMBLER__ */
#endif /* PROBE_H */
