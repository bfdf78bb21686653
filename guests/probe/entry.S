/*
 * probe entry code, descriptor tables and page tables.
 *
 * Two ways in:
 *   _start     64-bit entry (ELF e_entry, Linux x86 64-bit boot protocol):
 *              long mode, paging on, RSI = zero page.
 *   pvh_entry  PVH entry (Xen ELF note PHYS32_ENTRY): 32-bit protected mode,
 *              paging off, EBX = struct hvm_start_info.
 * Both switch to the probe's own GDT and page tables and meet in
 * long_common, which loads TR and the IDT and drops to user_main() in
 * ring 3.
 *
 * Application processors start in ap_trampoline (real mode, copied below
 * 1 MiB by ring 3), go through ap_entry32 to ap_long and drop to
 * ap_user_main() in ring 3 with the stacks and TSS the BSP prepared in
 * ap_boot.
 *
 * Ring-0 code may run very slowly (some hypervisors emulate it), so the
 * GDT, TSS, IDT and page tables are all built at assembly/link time; at run
 * time ring 0 only executes a few dozen instructions.  The link-time pieces
 * that x86 splits into bit fields come from symbols defined in linker.ld
 * (isr_stubs_lo16 etc.).
 */
#include "probe.h"

#define PTE_P   0x001
#define PTE_W   0x002
#define PTE_U   0x004
#define PTE_PWT 0x008
#define PTE_PCD 0x010
#define PTE_A   0x020
#define PTE_D   0x040
#define PTE_PS  0x080
#define PTE_TABLE  (PTE_P | PTE_W | PTE_U | PTE_A)
#define PTE_LARGE  (PTE_P | PTE_W | PTE_U | PTE_A | PTE_D | PTE_PS)

#define GATE_INTR_DPL0 0x8e     /* present, 64-bit interrupt gate, DPL 0 */
#define GATE_INTR_DPL3 0xee     /* present, 64-bit interrupt gate, DPL 3 */

/* ------------------------------------------------------------------ */
/* PVH ELF note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY).        */

        .section .note.Xen, "a", @note
        .balign 4
        .long   2f - 1f                 /* namesz */
        .long   4f - 3f                 /* descsz */
        .long   18                      /* XEN_ELFNOTE_PHYS32_ENTRY */
1:      .asciz  "Xen"
2:      .balign 4
3:      .long   pvh_entry
4:      .balign 4

/* ------------------------------------------------------------------ */
/* Interrupt stubs: 256 of them, 16 bytes apart, page aligned (the IDT  */
/* below relies on both), followed by the I/O gate.                     */

        .section .text.isr, "ax"
        .code64
        .balign 4096
        .globl  isr_stubs
isr_stubs:
        .set    vec, 0
        .rept   256
        .balign 16
        /* The CPU pushes an error code only for these vectors. */
        .if (vec == 8) | (vec == 10) | (vec == 11) | (vec == 12) | (vec == 13) | (vec == 14) | (vec == 17) | (vec == 21) | (vec == 29) | (vec == 30)
        .else
        pushq   $0
        .endif
        pushq   $vec
        jmp     isr_common
        .set    vec, vec + 1
        .endr

/*
 * I/O gate, IDT vector 3 (DPL 3), reached with int3 from ring 3.  ECX
 * selects the operation, EDX is the port, EAX the value or result.
 * A handful of instructions: this is the hot path of the pio workload
 * when ring 3 has no I/O privilege, so outb comes first and the rarer
 * operations last.
 */
        .balign 16
        .globl  io_gate
io_gate:
        cmpl    $IO_GATE_OUTB, %ecx
        jne     1f
        outb    %al, %dx
        iretq
1:      cmpl    $IO_GATE_INB, %ecx
        jne     2f
        inb     %dx, %al
        iretq
2:      cmpl    $IO_GATE_OUTL, %ecx
        jne     3f
        outl    %eax, %dx
        iretq
3:      cmpl    $IO_GATE_HALT, %ecx
        je      halt_forever
        cmpl    $IO_GATE_OUTW, %ecx
        jne     4f
        outw    %ax, %dx
        iretq
4:      cmpl    $IO_GATE_INW, %ecx
        jne     5f
        inw     %dx, %ax
        iretq
5:      cmpl    $IO_GATE_STI, %ecx          /* IF=1 in the RFLAGS iretq restores */
        jne     6f
        orq     $RFLAGS_IF, 16(%rsp)
        iretq
6:      cmpl    $IO_GATE_CLI, %ecx
        jne     7f
        andq    $~RFLAGS_IF, 16(%rsp)
        iretq
        /*
         * Ring-0 exit loops: RSI iterations of one port write (EDX) or
         * one 32-bit store (to RDI) of the loop counter, three more
         * instructions each.  Returns with RAX = RSI.
         */
7:      cmpl    $IO_GATE_PIO_LOOP, %ecx
        jne     8f
        xorl    %eax, %eax
        testq   %rsi, %rsi
        jz      72f
71:     outb    %al, %dx
        incq    %rax
        cmpq    %rsi, %rax
        jne     71b
72:     iretq
8:      cmpl    $IO_GATE_MMIO_LOOP, %ecx
        jne     9f
        xorl    %eax, %eax
        testq   %rsi, %rsi
        jz      82f
81:     movl    %eax, (%rdi)
        incq    %rax
        cmpq    %rsi, %rax
        jne     81b
82:     iretq
9:      cmpl    $IO_GATE_INL, %ecx
        jne     10f
        inl     %dx, %eax
        iretq
        /*
         * Wait for an interrupt: halt with interrupts on (the sti shadow
         * covers the hlt, so no interrupt slips in between), let the
         * handler run, and return to ring 3 with its own IF.
         */
10:     cmpl    $IO_GATE_WAIT, %ecx
        jne     11f
        sti
        hlt
        cli
        iretq
11:     jmp     isr_stubs + 16 * IO_GATE_VECTOR    /* a plain breakpoint */

/*
 * LAPIC timer interrupt (TIMER_VECTOR), taken in ring 3 with IF=1: count
 * the tick in this CPU's percpu.ticks (the CPU area is found from the
 * stack pointer), EOI, return.
 */
        .balign 16
        .globl  timer_isr
timer_isr:
        pushq   %rax
        movq    %rsp, %rax
        andq    $-CPU_AREA_SIZE, %rax
        incq    PERCPU_OFF + PERCPU_TICKS(%rax)
        movq    lapic_eoi_addr(%rip), %rax
        movl    $0, (%rax)
        popq    %rax
        iretq

/*
 * MSI-X interrupts (IRQ_VECTOR_BASE + i, taken in ring 3 with IF=1):
 * count in irq_count[i], EOI, return.  One 16-byte entry per vector,
 * 64-byte aligned so that the IDT can add 16 * i to the low 16 bits of
 * irq_isrs.
 */
        .balign 64
        .globl  irq_isrs
irq_isrs:
        .set    i, 0
        .rept   IRQ_VECTORS
        .balign 16
        incq    irq_count + 8 * i(%rip)
        jmp     irq_common
        .set    i, i + 1
        .endr
irq_common:
        pushq   %rax
        movq    lapic_eoi_addr(%rip), %rax
        movl    $0, (%rax)
        popq    %rax
        iretq

/* Spurious LAPIC interrupt: no EOI, nothing to do. */
        .balign 16
        .globl  spurious_isr
spurious_isr:
        iretq

isr_common:
        pushq   %rax
        pushq   %rbx
        pushq   %rcx
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        pushq   %rbp
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        cld
        movq    %rsp, %rdi
        andq    $-16, %rsp
        call    exception_handler
        /* fall through: it does not return */

halt_forever:
        cli
1:      hlt
        jmp     1b

/*
 * probe_halt: stop for good.  In ring 0: cli; hlt forever.  In ring 3:
 * ask the I/O gate to do that.
 */
        .globl  probe_halt
probe_halt:
        movl    %cs, %eax
        testb   $3, %al
        jz      halt_forever
        movl    $IO_GATE_HALT, %ecx
1:      int3
        jmp     1b

/* ------------------------------------------------------------------ */
/* 64-bit entry.                                                        */

        .section .text.entry, "ax"
        .globl  _start
_start:
        cli
        cld
        movl    $(CPU_AREAS + KSTACK_TOP_OFF), %esp
        movq    %rsi, boot_info(%rip)
        movl    $BOOT_ELF64, boot_kind(%rip)

        /* Own GDT, then reload CS through a far return. */
        lgdt    gdt_desc(%rip)
        pushq   $KERNEL_CS
        leaq    1f(%rip), %rax
        pushq   %rax
        lretq
1:
        /* Known CR4: keep PAE (and whatever else is harmless), drop
         * TSD (rdtsc in ring 3), SMEP/SMAP (all pages are user pages),
         * PKE, CET and UMIP. */
        movq    %cr4, %rax
        andq    $~(CR4_TSD | CR4_UMIP | CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_CET), %rax
        orq     $CR4_PAE, %rax
        movq    %rax, %cr4

        /* Own page tables. */
        leaq    pml4(%rip), %rax
        movq    %rax, %cr3
        jmp     long_common

/* ------------------------------------------------------------------ */
/* PVH entry: 32-bit protected mode, paging off.                        */

        .code32
        .globl  pvh_entry
pvh_entry:
        cli
        cld
        movl    $(CPU_AREAS + KSTACK_TOP_OFF), %esp
        movl    %ebx, boot_info
        movl    $0, boot_info + 4
        movl    $BOOT_PVH, boot_kind

        lgdt    gdt_desc
        movl    $KERNEL_DS, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    %eax, %fs
        movl    %eax, %gs

        movl    $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $EFER_LME, %eax
        wrmsr
        movl    %cr0, %eax
        orl     $(CR0_PG | CR0_PE), %eax
        movl    %eax, %cr0
        ljmp    $KERNEL_CS, $long_common

/* ------------------------------------------------------------------ */
/* Common 64-bit path.                                                  */

        .code64
long_common:
        movl    $KERNEL_DS, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        movl    $(CPU_AREAS + KSTACK_TOP_OFF), %esp

        /* Zero .bss (a few variables of the C code). */
        leaq    __bss_start(%rip), %rdi
        leaq    __bss_end(%rip), %rcx
        subq    %rdi, %rcx
        shrq    $3, %rcx
        xorl    %eax, %eax
        rep stosq

        movl    $TSS_SEL0, %eax
        ltr     %ax
        lidt    idt_desc(%rip)

        /* iretq to user_main(kind, info) in ring 3, IOPL=3, IF=0. */
        movl    boot_kind(%rip), %edi
        movq    boot_info(%rip), %rsi
        movl    $(CPU_AREAS + USTACK_TOP_OFF - 8), %eax  /* as if called: RSP+8 16-aligned */
        pushq   $(USER_DS | 3)
        pushq   %rax
        pushq   $(RFLAGS_IOPL3 | RFLAGS_FIXED)
        pushq   $(USER_CS | 3)
        leaq    user_main(%rip), %rax
        pushq   %rax
        xorl    %eax, %eax
        xorl    %ecx, %ecx
        xorl    %edx, %edx
        iretq

/* ------------------------------------------------------------------ */
/* Application processors.                                              */

/*
 * Real-mode trampoline, copied to AP_TRAMPOLINE (4 KiB aligned, below
 * 1 MiB) by ring 3; the SIPI vector is AP_TRAMPOLINE >> 12, so the AP
 * starts here with CS = AP_TRAMPOLINE >> 4, IP = 0.  Position independent:
 * it addresses its own data relative to CS and leaves through an
 * absolute far jump.
 */
        .code16
        .globl  ap_trampoline, ap_trampoline_end
ap_trampoline:
        cli
        movw    %cs, %ax
        movw    %ax, %ds
        lgdtl   ap_gdtr - ap_trampoline
        movl    %cr0, %eax
        orl     $CR0_PE, %eax
        movl    %eax, %cr0
        ljmpl   $KERNEL_CS32, $ap_entry32
        .balign 8
ap_gdtr:
        .word   gdt_end - gdt - 1
        .long   gdt
ap_trampoline_end:

/* 32-bit protected mode, paging off: as for PVH, into long mode. */
        .code32
ap_entry32:
        movl    $KERNEL_DS, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        movl    $CR4_PAE, %eax
        movl    %eax, %cr4
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $MSR_EFER, %ecx
        rdmsr
        orl     $EFER_LME, %eax
        wrmsr
        movl    %cr0, %eax
        andl    $~(CR0_CD | CR0_NW), %eax   /* INIT leaves caching off */
        orl     $(CR0_PG | CR0_PE), %eax
        movl    %eax, %cr0
        ljmp    $KERNEL_CS, $ap_long

/*
 * 64-bit, ring 0: this AP's stack and TSS from ap_boot (filled in by the
 * BSP for one AP at a time), the shared IDT, then ap_user_main(index) in
 * ring 3.
 */
        .code64
ap_long:
        movl    $KERNEL_DS, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        movq    ap_boot + AP_BOOT_KERNEL_RSP(%rip), %rsp
        movl    ap_boot + AP_BOOT_TSS_SEL(%rip), %eax
        ltr     %ax
        lidt    idt_desc(%rip)
        movl    ap_boot + AP_BOOT_INDEX(%rip), %edi
        pushq   $(USER_DS | 3)
        pushq   ap_boot + AP_BOOT_USER_RSP(%rip)
        pushq   $(RFLAGS_IOPL3 | RFLAGS_FIXED)
        pushq   $(USER_CS | 3)
        leaq    ap_user_main(%rip), %rax
        pushq   %rax
        iretq

/* ------------------------------------------------------------------ */
/* Descriptor tables.                                                   */

        .data
        .balign 8
boot_info:
        .quad   0
boot_kind:
        .long   0

/* One AP's start-up parameters (struct ap_boot in smp.c). */
        .balign 8
        .globl  ap_boot
ap_boot:
        .quad   0                       /* AP_BOOT_INDEX */
        .quad   0                       /* AP_BOOT_KERNEL_RSP */
        .quad   0                       /* AP_BOOT_USER_RSP */
        .quad   0                       /* AP_BOOT_TSS_SEL */

/* MSI-X interrupts per vector (IRQ_VECTOR_BASE + i), counted in ring 0. */
        .balign 8
        .globl  irq_count
irq_count:
        .fill   IRQ_VECTORS, 8, 0

/* Where the timer interrupt writes its EOI (ring 3 may move the LAPIC). */
        .balign 8
        .globl  lapic_eoi_addr
lapic_eoi_addr:
        .quad   LAPIC_DEFAULT_BASE + LAPIC_EOI

        .balign 16
        .globl  gdt
gdt:
        .quad   0                       /* 0x00 null */
        .quad   0x00af9b000000ffff      /* 0x08 ring-0 64-bit code */
        .quad   0x00cf93000000ffff      /* 0x10 ring-0 data (flat, also valid in 32-bit mode) */
        .quad   0x00cff3000000ffff      /* 0x18 ring-3 data */
        .quad   0x00affb000000ffff      /* 0x20 ring-3 64-bit code */
        .quad   0x00cf9b000000ffff      /* 0x28 ring-0 32-bit code (AP start-up) */
        /* 0x30 the BSP's 64-bit TSS descriptor: available, present, DPL 0 */
        .word   tss_end - tss - 1       /* limit 15:0 */
        .word   tss_lo16                /* base 15:0 */
        .byte   tss_byte2               /* base 23:16 */
        .byte   0x89                    /* P, DPL 0, type 9 */
        .byte   0                       /* limit 19:16, flags */
        .byte   tss_byte3               /* base 31:24 */
        .long   tss_hi32                /* base 63:32 */
        .long   0
        /* 0x40 + 16 * (i - 1): TSS of AP i, written by ring 3 (smp.c) */
        .fill   2 * (MAX_CPUS - 1), 8, 0
gdt_end:

        .balign 8
        .word   0
gdt_desc:                               /* 6 bytes used in 32-bit mode, 10 in 64-bit */
        .word   gdt_end - gdt - 1
        .quad   gdt

        .balign 16
        .globl  tss
tss:
        .long   0
        .quad   CPU_AREAS + KSTACK_TOP_OFF  /* RSP0 */
        .quad   0, 0                    /* RSP1, RSP2 */
        .quad   0
        .quad   CPU_AREAS + IST_TOP_OFF /* IST1 */
        .quad   0, 0, 0, 0, 0, 0        /* IST2..7 */
        .quad   0
        .word   0
        .word   tss_end - tss           /* I/O bitmap base: none (IOPL rules) */
tss_end:

/*
 * IDT: every vector goes to its stub (vector 2, 8 and 18 on the IST1
 * stack), except vector 3, which is the DPL=3 I/O gate, the LAPIC
 * timer, the MSI-X and the spurious vectors.
 */
        .macro  IDT_GATE lo16, mid16, hi32, ist, attr
        .word   \lo16
        .word   KERNEL_CS
        .byte   \ist
        .byte   \attr
        .word   \mid16
        .long   \hi32
        .long   0
        .endm

        .balign 16
idt:
        .set    vec, 0
        .rept   256
        .if vec == IO_GATE_VECTOR
        IDT_GATE io_gate_lo16, io_gate_mid16, io_gate_hi32, 0, GATE_INTR_DPL3
        .elseif vec == TIMER_VECTOR
        IDT_GATE timer_isr_lo16, timer_isr_mid16, timer_isr_hi32, 0, GATE_INTR_DPL0
        .elseif (vec >= IRQ_VECTOR_BASE) & (vec < IRQ_VECTOR_BASE + IRQ_VECTORS)
        IDT_GATE irq_isrs_lo16+16*(vec-IRQ_VECTOR_BASE), irq_isrs_mid16, irq_isrs_hi32, 0, GATE_INTR_DPL0
        .elseif vec == SPURIOUS_VECTOR
        IDT_GATE spurious_isr_lo16, spurious_isr_mid16, spurious_isr_hi32, 0, GATE_INTR_DPL0
        .elseif (vec == 2) | (vec == 8) | (vec == 18)
        IDT_GATE isr_stubs_lo16+16*vec, isr_stubs_mid16, isr_stubs_hi32, IST_CRITICAL, GATE_INTR_DPL0
        .else
        IDT_GATE isr_stubs_lo16+16*vec, isr_stubs_mid16, isr_stubs_hi32, 0, GATE_INTR_DPL0
        .endif
        .set    vec, vec + 1
        .endr
idt_end:

        .balign 8
        .word   0, 0, 0
idt_desc:
        .word   idt_end - idt - 1
        .quad   idt

/*
 * Identity page tables for 0..4 GiB with 2 MiB pages, all user
 * accessible.  3..4 GiB (the MMIO hole) is uncached (PCD|PWT).
 */
        .section .data.pagetables, "aw"
        .balign 4096
pml4:
        .quad   pdpt + PTE_TABLE
        .fill   511, 8, 0
pdpt:
        .quad   pd + 0x0000 + PTE_TABLE
        .quad   pd + 0x1000 + PTE_TABLE
        .quad   pd + 0x2000 + PTE_TABLE
        .quad   pd + 0x3000 + PTE_TABLE
        .fill   508, 8, 0
pd:
        .set    page, 0
        .rept   1536                    /* 0..3 GiB: write-back */
        .quad   (page << 21) + PTE_LARGE
        .set    page, page + 1
        .endr
        .rept   512                     /* 3..4 GiB: uncached */
        .quad   (page << 21) + PTE_LARGE + PTE_PCD + PTE_PWT
        .set    page, page + 1
        .endr

/*
 * Stacks live in the per-CPU areas at CPU_AREAS (probe.h), RAM outside
 * the image that is neither loaded nor zeroed.
 */

        .section .note.GNU-stack, "", @progbits
