/*
 * virtio 1.x over PCI (modern transport only) or MMIO (version 2) with
 * split virtqueues: shared by virtio.c (transports, queues, the rng
 * workload) and the device workloads (blk.c, net.c, vsock.c, balloon.c),
 * which see the same calls whatever the transport.
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "probe.h"

#define VIRTIO_VENDOR       0x1af4
#define VIRTIO_ID_BLK       0x1042      /* 0x1040 + device type 2 */
#define VIRTIO_ID_NET       0x1041      /* 0x1040 + device type 1 */
#define VIRTIO_ID_RNG       0x1044      /* 0x1040 + device type 4 */
#define VIRTIO_ID_BALLOON   0x1045      /* 0x1040 + device type 5 */
#define VIRTIO_ID_VSOCK     0x1053      /* 0x1040 + device type 19 */

/* Most virtqueues a workload sets up (vsock: rx, tx, event). */
#define VIRTIO_MAX_QUEUES   3

/* device_status bits */
#define VS_ACKNOWLEDGE      0x01
#define VS_DRIVER           0x02
#define VS_DRIVER_OK        0x04
#define VS_FEATURES_OK      0x08
#define VS_NEEDS_RESET      0x40
#define VS_FAILED           0x80

/* Transport feature bits */
#define VF_INDIRECT_DESC    (1ULL << 28)
#define VF_EVENT_IDX        (1ULL << 29)
#define VF_VERSION_1        (1ULL << 32)

/* Split virtqueue descriptor */
struct vq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
#define VD_NEXT             1
#define VD_WRITE            2
#define VD_INDIRECT         4

#define VQ_AVAIL_NO_INTERRUPT 1
#define VQ_USED_NO_NOTIFY     1

/* Most entries in one request's indirect table (blk: header + 128 + status). */
#define VQ_INDIRECT_MAX     130

/* One buffer of a request: guest-physical address, length, device writes it? */
struct vbuf {
    uint64_t addr;
    uint32_t len;
    uint32_t write;
};

struct virtq {
    uint16_t size;                      /* power of 2 */
    uint16_t index;
    volatile struct vq_desc *desc;
    volatile uint16_t *avail;           /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;             /* flags, idx, ring[size] {id, len}, avail_event */
    uint64_t notify_addr;
    int notify32;                       /* notify with a 32-bit write (MMIO), else 16-bit (PCI) */
    uint16_t free_head, num_free;
    uint16_t avail_idx;                 /* next free avail slot (published) */
    uint16_t kicked_idx;                /* avail_idx at the last notify decision */
    uint16_t last_used;                 /* next used element to look at */
    int event_idx, indirect, msix;      /* msix: interrupts (MSI-X or IOAPIC), else polling */
    unsigned irq_slot;                  /* irq_count[] index (MSI-X entry, or the IOAPIC line's) */
    uint64_t irq_ack;                   /* MMIO with interrupts: the window, acknowledged on each one */
    uint64_t irq_seen;
    int need_check;
    uint32_t *token;                    /* per head */
    uint16_t *ndesc;                    /* descriptors per head, 0 = free */
    volatile struct vq_desc *indir;     /* per head: VQ_INDIRECT_MAX entries */
    uint64_t notifies, kicks, completed, bad_used;
};

struct virtio_ops;                      /* a transport's register operations (virtio.c) */

struct virtio {
    const struct virtio_ops *ops;
    struct pci_dev *pci;                /* PCI: the function */
    uint64_t mmio;                      /* MMIO: the register window */
    uint32_t mmio_irq;                  /* MMIO: its interrupt line, as the command line says */
    uint64_t common, notify, isr, devcfg;
    uint32_t notify_mult, notify_len, devcfg_len;
    unsigned msix_cap, msix_size;
    uint64_t msix_table;
    uint64_t dev_features, features;
    uint16_t queue_max;                 /* queue 0's maximum size */
    int msix;
    uint32_t apic_id;
    unsigned nqueues;                   /* queues set up: vq[0 .. nqueues) */
    struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* Per-wait timeout for a request (generous: ring 0 may be emulated). */
#define VQ_TIMEOUT_US       10000000

/* Find the transport: the virtio_mmio.device=SIZE@BASE:IRQ[:ID] entries
 * of the probe's command line (printed as "virtio-mmio" lines when
 * verbose), or, without any, PCI (pci_init).  NULL or an error message. */
const char *virtio_init(const struct options *o, int verbose);
/* Locate device_id (the PCI id: 0x1040 + the device type) after
 * virtio_init(): on PCI read its virtio capabilities and enable it on the
 * bus; on MMIO check each window's magic and version (2) and match the
 * device type.  NULL or an error message. */
const char *virtio_find(struct virtio *v, uint16_t device_id);
/* The same for the nth device of that kind (0: the first). */
const char *virtio_find_nth(struct virtio *v, uint16_t device_id, unsigned nth);
/* Reset, negotiate VERSION_1 plus (want & offered), set up queue 0 with
 * at most max_qsize entries, MSI-X or polling, DRIVER_OK. */
const char *virtio_start(struct virtio *v, uint64_t want, int msix, unsigned max_qsize);
/* The same in two steps, for devices whose queues depend on the
 * features: reset and negotiate (up to FEATURES_OK) ... */
const char *virtio_negotiate(struct virtio *v, uint64_t want, int msix);
/* ... then queues 0 .. nq-1 (each at most max_qsize entries), MSI-X or
 * polling, DRIVER_OK.  With MSI-X, entry 0 is the configuration vector
 * and queue i uses entry 1 + i (queues share the last entry when the
 * table or IRQ_VECTORS is too small). */
const char *virtio_setup(struct virtio *v, unsigned nq, unsigned max_qsize);
/* Write 0 to device_status and wait until it reads 0.  1 if it did. */
int virtio_reset(struct virtio *v);
uint8_t virtio_status(struct virtio *v);
void virtio_set_status(struct virtio *v, uint8_t s);
void virtio_print(const struct virtio *v, const char *what);
/* "poll", "msix" or "ioapic". */
const char *virtio_irq_name(const struct virtio *v);
uint64_t virtio_irqs(const struct virtio *v);
/* Transport features asked for by probe.features. */
uint64_t virtio_want(const struct options *o);

/* Device-specific configuration. */
uint8_t vcfg8(struct virtio *v, unsigned off);
uint16_t vcfg16(struct virtio *v, unsigned off);
uint32_t vcfg32(struct virtio *v, unsigned off);
uint64_t vcfg64(struct virtio *v, unsigned off);
void vcfg_w32(struct virtio *v, unsigned off, uint32_t x);
uint8_t vcfg_generation(struct virtio *v);

/* Descriptors one request of n buffers takes from the ring. */
unsigned vq_descs_for(const struct virtq *q, unsigned n);
/* Add a request (not yet notified).  0, or -1 if the ring is full. */
int vq_add(struct virtq *q, const struct vbuf *b, unsigned n, uint32_t token);
/* Write the queue's index to its notify register (no questions asked). */
void vq_notify(struct virtq *q);
/* Notify the device of everything added since the last kick, if it
 * asked to be notified. */
void vq_kick(struct virtq *q);
/* Take one completed request: 1 and its token and written length, 0
 * if there is none, -1 if the device returned a bad id. */
int vq_get(struct virtq *q, uint32_t *token, uint32_t *len);
/* Wait (polling or for an MSI-X interrupt) until vq_get() has something;
 * 0 on timeout. */
int vq_wait(struct virtq *q, uint64_t timeout_tsc);
/* Nonzero if the used ring holds something vq_get() has not taken yet
 * (a look at RAM only, whatever the interrupt mode). */
static inline int vq_pending(const struct virtq *q)
{
    return *(volatile const uint16_t *)(q->used + 2) != q->last_used;
}

/* Device names for messages: "virtio-net" and so on. */
const char *virtio_name(uint16_t device_id);

static inline uint64_t us_tsc(uint64_t us)
{
    return muldiv64(tsc_hz(), us, 1000000);
}

#endif /* VIRTIO_H */
