/*
 * mbstub: the smallest Multiboot (0.6.96) kernel that reports what its
 * loader gave it.  A flat binary with the a.out kludge (header flag bit 16),
 * loaded at 0x10000, below 1 MiB.  Entered in 32-bit protected mode, paging
 * off, it prints on COM1
 *
 *     mbstub: magic=ok|bad entry=0x... flags=0x... cmdline="..."
 *
 * (the command line from the information structure's cmdline field, bytes
 * outside 0x20..0x7e and '"' and '\' as \xHH) and ends through the debug-exit
 * port (0xf4) with 0, or 1 when EAX did not hold the loader magic.
 */

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4
#define LOAD_ADDR 0x10000
#define MB_MAGIC 0x1badb002
#define MB_FLAGS 0x00010002 /* memory information, address fields */
#define MB_LOADER_MAGIC 0x2badb002

    .code32
    .text
    .globl _start
header:
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)
    .long LOAD_ADDR + (header - header)         /* header_addr */
    .long LOAD_ADDR                             /* load_addr */
    .long 0, 0                                  /* load_end_addr, bss_end_addr: the whole file */
    .long LOAD_ADDR + (_start - header)         /* entry_addr */

_start:
    mov $0x9000 + LOAD_ADDR, %esp               /* a stack inside our own 64 KiB */
    xor %edi, %edi                              /* exit status */
    mov %eax, %ebp                              /* the loader's magic, before puts uses %eax */
    mov $str_magic, %esi
    call puts
    mov $str_ok, %esi
    cmp $MB_LOADER_MAGIC, %ebp
    je 1f
    mov $str_bad, %esi
    mov $1, %edi
1:  call puts
    mov $str_entry, %esi
    call puts
    mov $(LOAD_ADDR + (_start - header)), %eax
    call puthex
    mov $str_flags, %esi
    call puts
    mov (%ebx), %eax
    call puthex
    mov $str_cmdline, %esi
    call puts
    testl $4, (%ebx)                            /* MULTIBOOT_INFO_CMDLINE */
    jz 3f
    mov 16(%ebx), %esi
2:  movzbl (%esi), %eax
    test %eax, %eax
    jz 3f
    call putesc
    inc %esi
    jmp 2b
3:  mov $'"', %al
    call putc
    mov $'\n', %al
    call putc
    mov %edi, %eax
    mov $DEBUG_EXIT, %dx
    outl %eax, %dx
4:  cli
    hlt
    jmp 4b

/* putc: %al to COM1, after waiting (bounded) for the transmitter. */
putc:
    push %ecx
    push %edx
    push %eax
    mov $10000, %ecx
    mov $COM1 + 5, %dx
1:  in %dx, %al
    test $0x20, %al
    jnz 2f
    loop 1b
2:  pop %eax
    mov $COM1, %dx
    out %al, %dx
    pop %edx
    pop %ecx
    ret

/* puts: the NUL-terminated string at %esi (in this image, linked at its load address). */
puts:
    push %esi
1:  mov (%esi), %al
    test %al, %al
    jz 2f
    call putc
    inc %esi
    jmp 1b
2:  pop %esi
    ret

/* puthex: %eax as 0x and eight hex digits. */
puthex:
    push %ecx
    push %edx
    mov %eax, %edx
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    mov $8, %ecx
1:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    mov hexdigits(%eax), %al
    call putc
    loop 1b
    pop %edx
    pop %ecx
    ret

/* putesc: the byte in %al, escaped as \xHH unless printable and not '"' or '\'. */
putesc:
    cmp $0x20, %al
    jb 1f
    cmp $0x7e, %al
    ja 1f
    cmp $'"', %al
    je 1f
    cmp $'\\', %al
    je 1f
    jmp putc
1:  push %edx
    mov %eax, %edx
    mov $'\\', %al
    call putc
    mov $'x', %al
    call putc
    mov %edx, %eax
    shr $4, %eax
    and $0xf, %eax
    mov hexdigits(%eax), %al
    call putc
    mov %edx, %eax
    and $0xf, %eax
    mov hexdigits(%eax), %al
    call putc
    pop %edx
    ret

hexdigits: .ascii "0123456789abcdef"
str_magic: .asciz "mbstub: magic="
str_ok: .asciz "ok"
str_bad: .asciz "bad"
str_entry: .asciz " entry="
str_flags: .asciz " flags="
str_cmdline: .asciz " cmdline=\""
