/*
 * floor: the smallest useful /dev/kvm driver, used as the per-exit baseline
 * for pyhv.
 *
 *   floor [-m MiB] KERNEL CMDLINE
 *
 * Loads an ELF64 kernel's PT_LOAD segments at their physical addresses,
 * builds the state the Linux 64-bit boot protocol expects (long mode,
 * identity-mapped paging, RSI = zero page) and runs one vCPU.  Device model:
 *
 *   port 0x3f8 (COM1 THR) write   -> stdout, buffered until newline
 *   port 0x3fd (COM1 LSR) read    -> 0x60 (transmitter empty)
 *   other COM1 reads              -> 0
 *   other port reads              -> 0xff
 *   port 0xf4 write               -> exit with the written value as status
 *   any other port write          -> ignored
 *   MMIO write                    -> ignored
 *   MMIO read                     -> zeros
 *
 * HLT, shutdown, failed entry and internal errors end the run with status 1.
 * Every error is reported as one line on stderr with a nonzero status.
 *
 * Guest physical layout:
 *   0x00500  GDT (0x10 = 64-bit code, 0x18 = data)
 *   0x07000  zero page (boot_params)
 *   0x09000  PML4
 *   0x0a000  PDPT
 *   0x0b000  4 page directories of 2 MiB pages, identity map of 0..4 GiB
 *   0x20000  kernel command line
 *   p_paddr  kernel segments (normally from 1 MiB)
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GDT_ADDR      0x500ULL
#define ZERO_PAGE     0x7000ULL
#define PML4_ADDR     0x9000ULL
#define PDPT_ADDR     0xa000ULL
#define PD_ADDR       0xb000ULL
#define CMDLINE_ADDR  0x20000ULL
#define CMDLINE_MAX   0x10000ULL        /* bytes available, including NUL */
#define LOW_RESERVED  (CMDLINE_ADDR + CMDLINE_MAX)
#define TSS_ADDR      0xfffbd000ULL
#define STACK_TOP     ZERO_PAGE         /* grows down into free low memory */

#define MMIO_HOLE     0xd0000000ULL     /* RAM must stay below the probe's MMIO target */
#define MAX_MIB       (MMIO_HOLE >> 20)
#define DEFAULT_MIB   128

#define COM1          0x3f8
#define COM1_LSR      (COM1 + 5)
#define EXIT_PORT     0xf4

#define CR0_PE  (1ULL << 0)
#define CR0_MP  (1ULL << 1)
#define CR0_ET  (1ULL << 4)
#define CR0_NE  (1ULL << 5)
#define CR0_WP  (1ULL << 16)
#define CR0_AM  (1ULL << 18)
#define CR0_PG  (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)

#define PTE_P   (1ULL << 0)
#define PTE_W   (1ULL << 1)
#define PTE_PS  (1ULL << 7)

static const char *prog = "floor";

static char outbuf[4096];
static size_t outlen;

static void out_flush(void)
{
	size_t off = 0;

	while (off < outlen) {
		ssize_t n = write(STDOUT_FILENO, outbuf + off, outlen - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;          /* stdout gone: drop the output */
		}
		off += (size_t)n;
	}
	outlen = 0;
}

static void out_byte(uint8_t c)
{
	outbuf[outlen++] = (char)c;
	if (c == '\n' || outlen == sizeof(outbuf))
		out_flush();
}

static void __attribute__((noreturn, format(printf, 1, 2))) die(const char *fmt, ...)
{
	va_list ap;

	out_flush();
	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *what)
{
	int r = ioctl(fd, req, arg);
	if (r < 0)
		die("%s: %s", what, strerror(errno));
	return r;
}

static void usage(void)
{
	fprintf(stderr, "usage: %s [-m MiB] KERNEL CMDLINE\n", prog);
	exit(2);
}

/* ---- kernel loading ---------------------------------------------------- */

static uint8_t *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	uint8_t *buf;
	size_t off = 0;

	if (fd < 0)
		die("%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0)
		die("%s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		die("%s: not a regular file", path);
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf)
		die("%s: out of memory", path);
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("%s: %s", path, strerror(errno));
		if (n == 0)
			die("%s: file shrank while reading", path);
		off += (size_t)n;
	}
	close(fd);
	*len = off;
	return buf;
}

/* Returns the entry point. */
static uint64_t load_elf(const char *path, uint8_t *mem, uint64_t memsize)
{
	size_t len;
	uint8_t *img = read_file(path, &len);
	Elf64_Ehdr eh;
	unsigned loaded = 0;

	if (len < sizeof(eh))
		die("%s: too short for an ELF header", path);
	memcpy(&eh, img, sizeof(eh));
	if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0)
		die("%s: not an ELF file", path);
	if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
		die("%s: not a little-endian ELF64 file", path);
	if (eh.e_machine != EM_X86_64)
		die("%s: not an x86-64 ELF file", path);
	if (eh.e_phentsize != sizeof(Elf64_Phdr))
		die("%s: unexpected program header size %u", path, eh.e_phentsize);
	if (eh.e_phoff > len || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > len - eh.e_phoff)
		die("%s: program headers outside the file", path);

	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		memcpy(&ph, img + eh.e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
			continue;
		if (ph.p_filesz > ph.p_memsz)
			die("%s: segment %u: file size exceeds memory size", path, i);
		if (ph.p_offset > len || ph.p_filesz > len - ph.p_offset)
			die("%s: segment %u: data outside the file", path, i);
		if (ph.p_paddr < LOW_RESERVED)
			die("%s: segment %u: paddr 0x%llx overlaps boot structures below 0x%llx",
			    path, i, (unsigned long long)ph.p_paddr,
			    (unsigned long long)LOW_RESERVED);
		if (ph.p_paddr > memsize || ph.p_memsz > memsize - ph.p_paddr)
			die("%s: segment %u: 0x%llx+0x%llx does not fit in %llu MiB of RAM",
			    path, i, (unsigned long long)ph.p_paddr,
			    (unsigned long long)ph.p_memsz,
			    (unsigned long long)(memsize >> 20));
		memcpy(mem + ph.p_paddr, img + ph.p_offset, ph.p_filesz);
		memset(mem + ph.p_paddr + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
		loaded++;
	}
	if (!loaded)
		die("%s: no loadable segments", path);
	if (eh.e_entry >= memsize)
		die("%s: entry point 0x%llx outside RAM", path, (unsigned long long)eh.e_entry);
	free(img);
	return eh.e_entry;
}

/* ---- boot structures --------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, sizeof(v)); }
static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, sizeof(v)); }
static void put_u64(uint8_t *p, uint64_t v) { memcpy(p, &v, sizeof(v)); }

static void setup_boot(uint8_t *mem, const char *cmdline)
{
	size_t clen = strlen(cmdline);
	uint8_t *zp = mem + ZERO_PAGE;
	uint64_t *pml4 = (uint64_t *)(mem + PML4_ADDR);
	uint64_t *pdpt = (uint64_t *)(mem + PDPT_ADDR);
	uint64_t *pd = (uint64_t *)(mem + PD_ADDR);

	if (clen + 1 > CMDLINE_MAX)
		die("command line too long (%zu bytes, max %llu)", clen,
		    (unsigned long long)CMDLINE_MAX - 1);

	/* GDT: null, unused, 64-bit code, data. */
	put_u64(mem + GDT_ADDR + 0x00, 0);
	put_u64(mem + GDT_ADDR + 0x08, 0);
	put_u64(mem + GDT_ADDR + 0x10, 0x00af9b000000ffffULL);
	put_u64(mem + GDT_ADDR + 0x18, 0x00cf93000000ffffULL);

	/* Zero page: the fields the 64-bit boot protocol relies on. */
	memset(zp, 0, 4096);
	put_u16(zp + 0x1fe, 0xaa55);                 /* boot_flag */
	put_u32(zp + 0x202, 0x53726448);             /* "HdrS" */
	put_u16(zp + 0x206, 0x020f);                 /* protocol version */
	zp[0x210] = 0xff;                            /* type_of_loader: undefined */
	put_u32(zp + 0x228, (uint32_t)CMDLINE_ADDR); /* cmd_line_ptr */
	put_u32(zp + 0x0c8, (uint32_t)(CMDLINE_ADDR >> 32)); /* ext_cmd_line_ptr */
	put_u32(zp + 0x238, (uint32_t)(CMDLINE_MAX - 1)); /* cmdline_size */

	memcpy(mem + CMDLINE_ADDR, cmdline, clen + 1);

	/* Identity map 0..4 GiB with 2 MiB pages. */
	memset(pml4, 0, 4096);
	memset(pdpt, 0, 4096);
	pml4[0] = PDPT_ADDR | PTE_P | PTE_W;
	for (uint64_t i = 0; i < 4; i++) {
		pdpt[i] = (PD_ADDR + i * 4096) | PTE_P | PTE_W;
		for (uint64_t j = 0; j < 512; j++)
			pd[i * 512 + j] = ((i * 512 + j) << 21) | PTE_P | PTE_W | PTE_PS;
	}
}

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, int code)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = 0;
	s->s = 1;
	s->g = 1;
	s->l = code ? 1 : 0;
	s->db = code ? 0 : 1;
}

static void setup_cpuid(int kvm, int vcpu)
{
	int nent = 64;

	for (;;) {
		size_t sz = sizeof(struct kvm_cpuid2) + nent * sizeof(struct kvm_cpuid_entry2);
		struct kvm_cpuid2 *cpuid = calloc(1, sz);

		if (!cpuid)
			die("out of memory");
		cpuid->nent = nent;
		if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
			int e = errno;
			free(cpuid);
			if (e == E2BIG && nent < 4096) {
				nent *= 2;
				continue;
			}
			die("KVM_GET_SUPPORTED_CPUID: %s", strerror(e));
		}
		xioctl(vcpu, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
		free(cpuid);
		return;
	}
}

static void setup_vcpu(int kvm, int vcpu, uint64_t entry)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	setup_cpuid(kvm, vcpu);

	xioctl(vcpu, KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	set_seg(&sregs.cs, 0x10, 0xb, 1);            /* execute/read, accessed */
	set_seg(&sregs.ds, 0x18, 0x3, 0);            /* read/write, accessed */
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.gdt.base = GDT_ADDR;
	sregs.gdt.limit = 4 * 8 - 1;
	sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
	sregs.cr3 = PML4_ADDR;
	sregs.cr4 = CR4_PAE;
	sregs.efer = EFER_LME | EFER_LMA;
	xioctl(vcpu, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");

	memset(&regs, 0, sizeof(regs));
	regs.rip = entry;
	regs.rsi = ZERO_PAGE;
	regs.rsp = STACK_TOP;
	regs.rflags = 2;
	xioctl(vcpu, KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

/* ---- run loop ---------------------------------------------------------- */

static uint32_t io_value(const uint8_t *p, unsigned size)
{
	switch (size) {
	case 1: return p[0];
	case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
	default: { uint32_t v; memcpy(&v, p, 4); return v; }
	}
}

static void handle_io(struct kvm_run *run)
{
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	unsigned size = run->io.size;
	uint16_t port = run->io.port;

	if (run->io.direction == KVM_EXIT_IO_OUT) {
		for (uint32_t i = 0; i < run->io.count; i++, data += size) {
			if (port == COM1) {
				out_byte(data[0]);
			} else if (port == EXIT_PORT) {
				out_flush();
				exit((int)(io_value(data, size) & 0xff));
			}
		}
	} else {
		uint8_t fill = 0xff;

		if (port == COM1_LSR)
			fill = 0x60;
		else if (port >= COM1 && port < COM1 + 8)
			fill = 0;
		memset(data, fill, (size_t)size * run->io.count);
	}
}

static void __attribute__((noreturn)) run_loop(int vcpu, struct kvm_run *run)
{
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN: %s", strerror(errno));
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			handle_io(run);
			break;
		case KVM_EXIT_MMIO:
			if (!run->mmio.is_write)
				memset(run->mmio.data, 0, sizeof(run->mmio.data));
			break;
		case KVM_EXIT_HLT:
			die("guest halted");
		case KVM_EXIT_SHUTDOWN:
			die("guest shutdown (triple fault)");
		case KVM_EXIT_FAIL_ENTRY:
			die("VM entry failed: hardware reason 0x%llx",
			    (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		case KVM_EXIT_INTERNAL_ERROR:
			die("KVM internal error: suberror %u", run->internal.suberror);
		default:
			die("unexpected exit reason %u", run->exit_reason);
		}
	}
}

/* ---- main -------------------------------------------------------------- */

int main(int argc, char **argv)
{
	unsigned long mib = DEFAULT_MIB;
	int opt;

	while ((opt = getopt(argc, argv, "m:h")) != -1) {
		switch (opt) {
		case 'm': {
			char *end;
			errno = 0;
			mib = strtoul(optarg, &end, 0);
			if (errno || end == optarg || *end || mib < 2 || mib > MAX_MIB)
				die("-m: expected MiB between 2 and %llu, got '%s'",
				    (unsigned long long)MAX_MIB, optarg);
			break;
		}
		default:
			usage();
		}
	}
	if (argc - optind != 2)
		usage();

	const char *kernel = argv[optind];
	const char *cmdline = argv[optind + 1];
	uint64_t memsize = (uint64_t)mib << 20;

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm: %s", strerror(errno));
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION)
		die("KVM API version %d, expected %d", api, KVM_API_VERSION);

	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM: %s", strerror(errno));
	if (ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR) < 0)
		die("KVM_SET_TSS_ADDR: %s", strerror(errno));

	uint8_t *mem = mmap(NULL, memsize, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap guest memory: %s", strerror(errno));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.flags = 0,
		.guest_phys_addr = 0,
		.memory_size = memsize,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	xioctl(vm, KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

	uint64_t entry = load_elf(kernel, mem, memsize);
	setup_boot(mem, cmdline);

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU: %s", strerror(errno));
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run))
		die("KVM_GET_VCPU_MMAP_SIZE: %s", run_size < 0 ? strerror(errno) : "too small");
	struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE,
				   MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run: %s", strerror(errno));

	setup_vcpu(kvm, vcpu, entry);
	run_loop(vcpu, run);
}
