/*
 * fwcfg: QEMU's firmware configuration device (docs/specs/fw_cfg.rst in
 * QEMU), from ring 3.  Reads the signature, the feature bits, the CPU
 * counts, RAM size and the file directory through the port interface
 * (selector 0x510, data 0x511), reads every opt/ file through both the
 * ports and DMA (0x514, a big-endian FWCfgDmaAccess address written high
 * half first) and compares them, then makes hostile DMA requests and checks
 * that each fails with the ERROR bit and the device still serves the next.
 */
#include "probe.h"

#define FW_CFG_SELECTOR   0x510
#define FW_CFG_DATA       0x511
#define FW_CFG_DMA_HIGH   0x514
#define FW_CFG_DMA_LOW    0x518

#define KEY_SIGNATURE     0x0000
#define KEY_ID            0x0001
#define KEY_RAM_SIZE      0x0003
#define KEY_NB_CPUS       0x0005
#define KEY_MAX_CPUS      0x000f
#define KEY_CMDLINE_ADDR  0x0013
#define KEY_CMDLINE_SIZE  0x0014
#define KEY_CMDLINE_DATA  0x0015
#define KEY_FILE_DIR      0x0019
#define KEY_NOTHING       0x3fff        /* a generic key no item has */

#define ID_DMA            0x2

#define CTL_ERROR         0x01
#define CTL_READ          0x02
#define CTL_SKIP          0x04
#define CTL_SELECT        0x08
#define CTL_WRITE         0x10
#define CTL_KEY(k)        ((uint32_t)(k) << 16 | CTL_SELECT)

#define LOW_RAM_LIMIT     0xc0000000ULL /* RAM below the MMIO hole ends here at the latest */
#define FAR_AWAY          (1ULL << 52)  /* beyond any guest's RAM */

#define MAX_FILES         32
#define FILE_BYTES        4096          /* what is read of each opt/ file */
#define NAME_SIZE         56

struct dma_access {                     /* FWCfgDmaAccess, all fields big-endian */
    uint32_t control;
    uint32_t length;
    uint64_t address;
};

struct file {
    uint32_t size;
    uint16_t select;
    char name[NAME_SIZE + 1];
};

static struct file files[MAX_FILES];
static unsigned nfiles;

static uint32_t be32(uint32_t v) { return __builtin_bswap32(v); }
static uint64_t be64(uint64_t v) { return __builtin_bswap64(v); }

static void fw_select(uint16_t key)
{
    port_outw(FW_CFG_SELECTOR, key);
}

static void fw_read(void *buf, uint64_t n)
{
    uint8_t *p = buf;

    while (n--)
        *p++ = port_inb(FW_CFG_DATA);
}

static uint64_t fw_read_le(uint16_t key, unsigned n)
{
    uint8_t b[8] = { 0 };
    uint64_t v = 0;

    fw_select(key);
    fw_read(b, n);
    while (n--)
        v = v << 8 | b[n];
    return v;
}

/*
 * The file called name in fw_cfg's directory (read through the ports, nothing
 * printed): 1 and its selector and size if there is one, else 0.
 */
int fw_cfg_find(const char *name, uint16_t *select, uint32_t *size)
{
    uint8_t entry[64];
    uint32_t count, i;
    int found = 0;

    fw_select(KEY_FILE_DIR);
    fw_read(&count, 4);
    count = be32(count);
    for (i = 0; i < count; i++) {
        const char *n = (const char *)entry + 8, *w = name;

        fw_read(entry, sizeof(entry));
        while (*w && *w == *n && n < (const char *)entry + sizeof(entry) - 1) {
            w++;
            n++;
        }
        if (!found && !*w && !*n) {
            *size = be32(*(uint32_t *)entry);
            *select = __builtin_bswap16(*(uint16_t *)(entry + 4));
            found = 1;
        }
    }
    return found;
}

/* The first n bytes of the item at select (zeros past its end). */
void fw_cfg_read(uint16_t select, void *buf, uint64_t n)
{
    fw_select(select);
    fw_read(buf, n);
}

/*
 * One DMA request with the descriptor at desc_addr (which may be anywhere:
 * the hostile cases put it outside RAM).  Returns the control word the
 * device wrote back, or ~0 if the descriptor is not where ring 3 can read it.
 */
static uint32_t dma_at(uint64_t desc_addr, int readable)
{
    volatile struct dma_access *d = (volatile struct dma_access *)desc_addr;

    barrier();
    port_outl(FW_CFG_DMA_HIGH, be32((uint32_t)(desc_addr >> 32)));
    port_outl(FW_CFG_DMA_LOW, be32((uint32_t)desc_addr));
    barrier();
    return readable ? be32(d->control) : ~0u;
}

static struct dma_access *desc;         /* in the DMA arena */

static uint32_t dma(uint32_t control, uint32_t length, uint64_t address)
{
    desc->control = be32(control);
    desc->length = be32(length);
    desc->address = be64(address);
    return dma_at((uint64_t)desc, 1);
}

static int mem_equal(const void *a, const void *b, uint64_t n)
{
    const uint8_t *x = a, *y = b;

    while (n--)
        if (*x++ != *y++)
            return 0;
    return 1;
}

static int all_bytes(const uint8_t *p, uint64_t n, uint8_t v)
{
    while (n--)
        if (*p++ != v)
            return 0;
    return 1;
}

static int starts_with(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return 0;
    return 1;
}

static unsigned cases, cases_ok;

static void report(const char *name, uint32_t control, int ok)
{
    cases++;
    cases_ok += ok ? 1 : 0;
    line_begin("fwcfg");
    kv_str("case", name);
    kv_hex("control", control);
    kv_dec("error", control == ~0u ? 0 : control & CTL_ERROR);
    kv_dec("ok", ok ? 1 : 0);
    line_end();
}

static void read_directory(void)
{
    uint8_t entry[64];
    uint32_t count, i;

    fw_select(KEY_FILE_DIR);
    fw_read(&count, 4);
    count = be32(count);
    line_begin("fwcfg");
    kv_dec("files", count);
    line_end();
    for (i = 0; i < count; i++) {
        fw_read(entry, sizeof(entry));
        if (i >= MAX_FILES)
            continue;
        files[i].size = be32(*(uint32_t *)entry);
        files[i].select = __builtin_bswap16(*(uint16_t *)(entry + 4));
        memcpy(files[i].name, entry + 8, NAME_SIZE);
        files[i].name[NAME_SIZE] = 0;
        nfiles = i + 1;
        line_begin("fwcfg");
        put_quoted("file", files[i].name);
        kv_dec("size", files[i].size);
        kv_hex("select", files[i].select);
        line_end();
    }
}

/* Every opt/ file by port and by DMA; returns how many read back the same. */
static unsigned read_user_files(uint8_t *by_port, uint8_t *by_dma)
{
    unsigned i, same = 0;

    for (i = 0; i < nfiles; i++) {
        uint32_t n = files[i].size < FILE_BYTES ? files[i].size : FILE_BYTES;
        uint32_t control;
        int match;

        if (!starts_with(files[i].name, "opt/"))
            continue;
        fw_select(files[i].select);
        fw_read(by_port, n);
        memset(by_dma, 0xaa, n);
        control = dma(CTL_KEY(files[i].select) | CTL_READ, n, (uint64_t)by_dma);
        match = control == 0 && mem_equal(by_port, by_dma, n);
        same += match;
        line_begin("fwcfg");
        put_quoted("read", files[i].name);
        kv_dec("size", files[i].size);
        kv_hex("control", control);
        kv_dec("dma_match", match);
        put_str(" text=\"");
        put_escaped((const char *)by_dma, n);
        put_str("\"");
        line_end();
    }
    return same;
}

/* FW_CFG_CMDLINE_*: the command line the probe booted with, NUL included. */
static int check_cmdline_key(const struct options *o, uint8_t *buf)
{
    uint64_t addr = fw_read_le(KEY_CMDLINE_ADDR, 4), size = fw_read_le(KEY_CMDLINE_SIZE, 4);
    int match = size == o->cmdline_len + 1 && size <= FILE_BYTES;

    if (match) {
        fw_select(KEY_CMDLINE_DATA);
        fw_read(buf, size);
        match = mem_equal(buf, (const void *)o->cmdline, o->cmdline_len) && buf[o->cmdline_len] == 0;
    }
    line_begin("fwcfg");
    kv_hex("cmdline_addr", addr);
    kv_dec("cmdline_size", size);
    kv_dec("cmdline_match", match);
    line_end();
    return match;
}

/*
 * etc/table-loader run as firmware runs it (QEMU's BIOS linker/loader):
 * ALLOCATE copies etc/acpi/rsdp or etc/acpi/tables into a buffer, ADD_POINTER
 * adds a buffer's address into a field of another, ADD_CHECKSUM fixes a
 * checksum byte.  Every value is checked before use.  Then the result is
 * walked as an OS would: RSDP, XSDT, each table and the FADT's DSDT, with
 * their checksums.
 */
#define LOADER_ENTRY 128
#define LOADER_MAX (LOADER_ENTRY * 64)
#define TABLES_MAX 65536
#define MAX_SIGS 16

struct blob {
    const char *name;
    uint8_t *data;
    uint32_t size;
};

/* Whether a NAME_SIZE-byte name field holds exactly ``name``. */
static int name_is(const void *field, const char *name)
{
    const char *f = field;
    unsigned i;

    for (i = 0; i < NAME_SIZE && name[i]; i++)
        if (f[i] != name[i])
            return 0;
    return i < NAME_SIZE && f[i] == 0;
}

static struct file *find_file(const char *name)
{
    unsigned i;

    for (i = 0; i < nfiles; i++)
        if (name_is(files[i].name, name))
            return &files[i];
    return NULL;
}

static struct blob *blob_named(struct blob *blobs, const uint8_t *name)
{
    unsigned i;

    for (i = 0; i < 2; i++)
        if (blobs[i].size && name_is(name, blobs[i].name))
            return &blobs[i];
    return NULL;
}

static uint8_t sum8(const uint8_t *p, uint64_t n)
{
    uint8_t s = 0;

    while (n--)
        s += *p++;
    return s;
}

/* A table inside the tables blob at a pointer's value: its length, or 0 if it is not all inside. */
static uint32_t table_at(const struct blob *t, uint64_t addr)
{
    uint64_t base = (uint64_t)t->data, len;

    if (addr < base || addr + 36 > base + t->size)
        return 0;
    len = *(const uint32_t *)(addr + 4);
    return len >= 36 && addr + len <= base + t->size ? (uint32_t)len : 0;
}

static int run_table_loader(uint8_t *loader, uint8_t *tables, uint8_t *rsdp)
{
    struct blob blobs[2] = { { "etc/acpi/tables", tables, 0 }, { "etc/acpi/rsdp", rsdp, 0 } };
    struct file *f = find_file("etc/table-loader");
    unsigned commands = 0, allocs = 0, pointers = 0, checksums = 0, bad = 0, ntables = 0, tables_ok = 0;
    int rsdp_ok = 0, xsdt_ok = 0, dsdt_ok = 0;
    char sigs[MAX_SIGS * 5 + 1];
    uint32_t at;

    sigs[0] = 0;
    if (!f || f->size > LOADER_MAX || f->size % LOADER_ENTRY)
        bad++;
    else {
        fw_select(f->select);
        fw_read(loader, f->size);
        for (at = 0; at < f->size; at += LOADER_ENTRY, commands++) {
            uint8_t *e = loader + at;
            uint32_t command = *(uint32_t *)e;
            struct blob *dst = blob_named(blobs, e + 4);

            if (command == 1) {             /* ALLOCATE file, align, zone */
                unsigned i;
                struct file *src = NULL;

                for (i = 0; i < 2; i++)
                    if (name_is(e + 4, blobs[i].name))
                        src = find_file(blobs[i].name), dst = &blobs[i];
                if (!src || src->size > (dst->data == rsdp ? 64u : TABLES_MAX) || dst->size) {
                    bad++;
                    continue;
                }
                fw_select(src->select);
                fw_read(dst->data, src->size);
                dst->size = src->size;
                allocs++;
            } else if (command == 2) {      /* ADD_POINTER dest, src, offset, size */
                struct blob *from = blob_named(blobs, e + 60);
                uint32_t offset = *(uint32_t *)(e + 116);
                uint8_t size = e[120];
                uint64_t v = 0;

                if (!dst || !from || (size != 1 && size != 2 && size != 4 && size != 8) ||
                    offset > dst->size || size > dst->size - offset) {
                    bad++;
                    continue;
                }
                memcpy(&v, dst->data + offset, size);
                v += (uint64_t)from->data;
                memcpy(dst->data + offset, &v, size);
                pointers++;
            } else if (command == 3) {      /* ADD_CHECKSUM file, offset, start, length */
                uint32_t offset = *(uint32_t *)(e + 60), start = *(uint32_t *)(e + 64);
                uint32_t length = *(uint32_t *)(e + 68);

                if (!dst || offset >= dst->size || start > dst->size || length > dst->size - start) {
                    bad++;
                    continue;
                }
                dst->data[offset] -= sum8(dst->data + start, length);
                checksums++;
            } else if (command != 0) {
                bad++;
            }
        }
    }
    if (blobs[1].size >= 36 && mem_equal(rsdp, "RSD PTR ", 8)) {
        uint64_t xsdt = *(uint64_t *)(rsdp + 24);
        uint32_t xlen = table_at(&blobs[0], xsdt);

        rsdp_ok = sum8(rsdp, 20) == 0 && sum8(rsdp, 36) == 0;
        xsdt_ok = xlen && mem_equal((const void *)xsdt, "XSDT", 4) && sum8((const void *)xsdt, xlen) == 0;
        for (at = 36; xsdt_ok && at + 8 <= xlen && ntables < MAX_SIGS; at += 8, ntables++) {
            uint64_t t = *(uint64_t *)(xsdt + at);
            uint32_t len = table_at(&blobs[0], t);

            if (!len)
                continue;
            tables_ok += sum8((const void *)t, len) == 0;
            memcpy(sigs + 5 * ntables, (const void *)t, 4);
            sigs[5 * ntables + 4] = ',';
            sigs[5 * ntables + 5] = 0;
            if (mem_equal((const void *)t, "FACP", 4) && len >= 0x94) {
                uint64_t d = *(uint64_t *)(t + 0x8c);
                uint32_t dlen = table_at(&blobs[0], d);

                dsdt_ok = dlen && mem_equal((const void *)d, "DSDT", 4) && sum8((const void *)d, dlen) == 0 &&
                          *(uint32_t *)(t + 0x28) == (uint32_t)d;
            }
        }
    }
    if (ntables)
        sigs[5 * ntables - 1] = 0;
    line_begin("fwcfg");
    kv_dec("loader_commands", commands);
    kv_dec("allocate", allocs);
    kv_dec("add_pointer", pointers);
    kv_dec("add_checksum", checksums);
    kv_dec("bad", bad);
    kv_dec("rsdp_ok", rsdp_ok);
    kv_dec("xsdt_ok", xsdt_ok);
    kv_dec("dsdt_ok", dsdt_ok);
    kv_str("tables", sigs);
    kv_dec("tables_ok", tables_ok);
    line_end();
    return !bad && allocs == 2 && rsdp_ok && xsdt_ok && dsdt_ok && ntables && tables_ok == ntables;
}

NORETURN void test_fwcfg(const struct options *o)
{
    uint8_t *buf, *by_port, *by_dma;
    uint64_t ram_size, low_end, id, dma_sig;
    uint32_t control, nb_cpus, max_cpus, sig;
    uint16_t ro_key = KEY_SIGNATURE;
    unsigned i, user_same;
    int ok;

    fw_select(KEY_SIGNATURE);
    fw_read(&sig, 4);
    dma_sig = (uint64_t)port_inl(FW_CFG_DMA_HIGH) | (uint64_t)port_inl(FW_CFG_DMA_LOW) << 32;
    id = fw_read_le(KEY_ID, 4);
    nb_cpus = (uint32_t)fw_read_le(KEY_NB_CPUS, 2);
    max_cpus = (uint32_t)fw_read_le(KEY_MAX_CPUS, 2);
    ram_size = fw_read_le(KEY_RAM_SIZE, 8);

    line_begin("fwcfg");
    put_str(" signature=\"");
    put_escaped((const char *)&sig, 4);
    put_str("\" dma_signature=\"");
    put_escaped((const char *)&dma_sig, 8);
    put_str("\"");
    kv_hex("id", id);
    kv_dec("nb_cpus", nb_cpus);
    kv_dec("max_cpus", max_cpus);
    kv_dec("ram_size", ram_size);
    line_end();
    if (!mem_equal(&sig, "QEMU", 4))
        fail("no fw_cfg signature", "", 0);
    if (!(id & ID_DMA))
        fail("fw_cfg without DMA", "", 0);

    read_directory();
    for (i = 0; i < nfiles; i++)
        if (starts_with(files[i].name, "opt/"))
            ro_key = files[i].select;

    desc = dma_alloc(sizeof(*desc), 16);
    buf = dma_alloc(64, 16);
    by_port = dma_alloc(FILE_BYTES, 16);
    by_dma = dma_alloc(FILE_BYTES, 16);
    user_same = read_user_files(by_port, by_dma);
    if (!check_cmdline_key(o, by_port))
        fail("FW_CFG_CMDLINE_DATA is not the boot command line", "", 0);
    if (!run_table_loader(dma_alloc(LOADER_MAX, 16), dma_alloc(TABLES_MAX, 64), dma_alloc(64, 16)))
        fail("etc/table-loader did not give good ACPI tables", "", 0);

    /* Good requests at the edges first: they must succeed. */
    memset(buf, 0xaa, 16);
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_READ, 8, (uint64_t)buf);
    report("read_past_end", control, control == 0 && mem_equal(buf, "QEMU\0\0\0\0", 8) && buf[8] == 0xaa);
    memset(buf, 0xaa, 16);
    control = dma(CTL_KEY(KEY_NOTHING) | CTL_READ, 8, (uint64_t)buf);
    report("read_no_item", control, control == 0 && all_bytes(buf, 8, 0) && buf[8] == 0xaa);
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_SKIP, 2, 0);
    control |= dma(CTL_READ, 2, (uint64_t)buf);
    report("skip", control, control == 0 && mem_equal(buf, "MU", 2));

    /* Hostile ones: each fails with ERROR and changes nothing. */
    memset(buf, 0xaa, 16);
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_READ, 4, FAR_AWAY);
    report("buffer_outside_ram", control, control == CTL_ERROR);
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_READ, 0xffffffffu, (uint64_t)buf);
    report("huge_length", control, control == CTL_ERROR && all_bytes(buf, 16, 0xaa));
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_READ, 16, 0xfffffffffffffff8ULL);
    report("address_wraps", control, control == CTL_ERROR);
    fw_select(ro_key);
    fw_read(by_dma, 4);                 /* what the item holds before */
    control = dma(CTL_KEY(ro_key) | CTL_WRITE, 4, (uint64_t)buf);
    fw_select(ro_key);
    fw_read(by_port, 4);
    report("write_read_only", control, control == CTL_ERROR && mem_equal(by_port, by_dma, 4));
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_ERROR | CTL_READ, 4, (uint64_t)buf);
    report("error_bit_given", control, control == CTL_ERROR && all_bytes(buf, 4, 0xaa));

    /* A descriptor the device cannot read at all: nothing to check but that it carries on. */
    dma_at(FAR_AWAY, 0);
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_READ, 4, (uint64_t)buf);
    report("descriptor_outside_ram", control, control == 0 && mem_equal(buf, "QEMU", 4));

    /* One that runs off the end of RAM: only its control word is RAM, and gets ERROR. */
    low_end = ram_size < LOW_RAM_LIMIT ? ram_size : LOW_RAM_LIMIT;
    if (low_end >= DMA_ARENA_END + 4096) {
        volatile uint32_t *tail = (volatile uint32_t *)(low_end - 8);

        tail[0] = be32(CTL_KEY(KEY_SIGNATURE) | CTL_READ);
        tail[1] = be32(4);
        control = dma_at(low_end - 8, 1);
        report("descriptor_past_ram_end", control, control == CTL_ERROR);
        control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_READ, 4, low_end - 2);
        report("buffer_past_ram_end", control, control == CTL_ERROR);
    }

    memset(buf, 0, 16);
    control = dma(CTL_KEY(KEY_SIGNATURE) | CTL_READ, 4, (uint64_t)buf);
    ok = control == 0 && mem_equal(buf, "QEMU", 4);
    line_begin("fwcfg");
    kv_dec("cases", cases);
    kv_dec("cases_ok", cases_ok);
    kv_dec("user_files_same", user_same);
    kv_str("after", ok ? "ok" : "broken");
    line_end();
    if (!ok || cases_ok != cases)
        fail("fw_cfg misbehaved", "", 0);
    pass();
}
