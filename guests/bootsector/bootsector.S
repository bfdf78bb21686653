/*
 * bootsector: a 512-byte MBR boot sector for firmware tests.  A BIOS loads
 * it at 0000:7C00 and jumps there in real mode with DL = the boot drive.
 *
 * It prints on COM1
 *
 *     bootsector: loaded drive=0xNN
 *
 * then asks for a warm reset as a PC program would: CMOS shutdown status
 * byte (register 0x0F) = 0x0A ("jump through 40:67 without EOI"), the far
 * pointer at 0040:0067 = its own resume point, CMOS 0x7F = 0xA5 (a mark that
 * survives the reset), and a reset through 0xCF9:
 *
 *     bootsector: warm reset shutdown=0x0a
 *
 * A BIOS that honours the byte with RAM kept jumps back in:
 *
 *     bootsector: resumed
 *
 * and the sector ends through the debug-exit port (0xf4) with 0x21 (pyhv:
 * status 0x21; QEMU's mapping: 0x43).  Loaded again with the mark set (the
 * BIOS booted from scratch instead), it prints "bootsector: booted again"
 * and ends with 0x01.
 */

#define COM1 0x3f8
#define DEBUG_EXIT 0xf4
#define EXIT_VALUE 0x21
#define EXIT_BOOTED_AGAIN 0x01
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define CMOS_SHUTDOWN 0x0f
#define CMOS_MARK 0x7f
#define MARK 0xa5
#define WARM_RESUME_JUMP 0x0a
#define BDA_RESET_VECTOR 0x467      /* 0040:0067, offset then segment */

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
    mov $msg_loaded, %si
    call puts
    mov %bl, %al
    call puthex
    mov $'\n', %al
    call putc

    mov $CMOS_MARK, %al
    call cmos_read
    cmp $MARK, %al
    je booted_again

    mov $CMOS_MARK, %al
    mov $MARK, %ah
    call cmos_write
    mov $CMOS_SHUTDOWN, %al
    mov $WARM_RESUME_JUMP, %ah
    call cmos_write
    movw $resume, BDA_RESET_VECTOR
    movw $0, BDA_RESET_VECTOR + 2
    mov $msg_reset, %si
    call puts
    mov $CMOS_SHUTDOWN, %al
    call cmos_read
    call puthex
    mov $'\n', %al
    call putc
    mov $0xcf9, %dx
    mov $0x02, %al
    out %al, %dx
    mov $0x06, %al
    out %al, %dx
1:  hlt
    jmp 1b

resume:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    mov $msg_resumed, %si
    call puts
    mov $EXIT_VALUE, %al
    jmp exit

booted_again:
    mov $msg_again, %si
    call puts
    mov $EXIT_BOOTED_AGAIN, %al
exit:
    mov $DEBUG_EXIT, %dx
    out %al, %dx
1:  hlt
    jmp 1b

/* cmos_read: register %al -> %al.  cmos_write: register %al <- %ah. */
cmos_read:
    out %al, $CMOS_INDEX
    in $CMOS_DATA, %al
    ret
cmos_write:
    out %al, $CMOS_INDEX
    mov %ah, %al
    out %al, $CMOS_DATA
    ret

puts:
    lodsb
    test %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret

/* puthex: %al as two hex digits. */
puthex:
    push %ax
    shr $4, %al
    call puthexdigit
    pop %ax
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

msg_loaded: .asciz "bootsector: loaded drive=0x"
msg_reset: .asciz "bootsector: warm reset shutdown=0x"
msg_resumed: .asciz "bootsector: resumed\n"
msg_again: .asciz "bootsector: booted again\n"

    .org 510
    .word 0xaa55
