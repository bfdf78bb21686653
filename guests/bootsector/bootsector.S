/*
 * bootsector: a 512-byte MBR boot sector for firmware tests.  A BIOS loads
 * it at 0000:7C00 and jumps there in real mode with DL = the boot drive; it
 * prints on COM1
 *
 *     bootsector: loaded drive=0xNN
 *
 * and ends through the debug-exit port (0xf4) with 0x21 (pyhv: status 0x21;
 * QEMU's mapping: 0x43), then halts.
 */

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4
#define EXIT_VALUE 0x21

    .code16
    .text
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    mov %dl, %bl                /* the boot drive, before anything uses DL */
    mov $msg, %si
    call puts
    mov %bl, %al
    shr $4, %al
    call puthexdigit
    mov %bl, %al
    call puthexdigit
    mov $'\n', %al
    call putc
    mov $EXIT_VALUE, %al
    mov $DEBUG_EXIT, %dx
    out %al, %dx
1:  hlt
    jmp 1b

puts:
    lodsb
    test %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret

puthexdigit:
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe putc
    add $('a' - '0' - 10), %al
putc:
    mov $COM1, %dx
    out %al, %dx
    ret

msg: .asciz "bootsector: loaded drive=0x"

    .org 510
    .word 0xaa55
