/*
 * virtio-net (ring 3): a very small IPv4 host on one interface, and the
 * net, netping, netbench and nethostile workloads.
 *
 * Queue 0 receives, queue 1 transmits.  Every buffer is NET_BUF bytes in
 * the DMA arena: the 12-byte struct virtio_net_hdr (virtio 1.x layout,
 * num_buffers included), then the Ethernet frame.  Without
 * probe.features=offload no offloads are negotiated (no CSUM, GSO or
 * MRG_RXBUF), so every received frame is a plain, checksummed frame of at
 * most 1514 bytes in one buffer, and every transmitted one has an all-zero
 * header.  With it the probe accepts CSUM, GUEST_CSUM, HOST_UFO and
 * MRG_RXBUF where offered: netbench leaves its UDP checksums to the host
 * (VIRTIO_NET_HDR_F_NEEDS_CSUM) and, with HOST_UFO, sends datagrams of up
 * to 64 KiB as one frame (VIRTIO_NET_HDR_GSO_UDP) from transmit slots of
 * NET_BIG_BUF bytes; a received frame spanning several buffers
 * (num_buffers > 1) is counted and dropped.  Each buffer is one descriptor.
 *
 * The receive queue is kept full: a used buffer is handed straight back
 * once its frame has been looked at, and the device is notified once per
 * batch.  Transmit buffers ("slots", one per queue entry) come back
 * through the used ring and are reused.  The host answers ARP requests
 * for probe.ip and ICMP echo requests to it in every workload; IP
 * fragments, IP options in replies and everything else are ignored.
 */
#include "virtio.h"

/* virtio-net feature bits (5.1.3) */
#define NET_F_CSUM          (1ULL << 0)
#define NET_F_GUEST_CSUM    (1ULL << 1)
#define NET_F_MAC           (1ULL << 5)
#define NET_F_HOST_UFO      (1ULL << 14)
#define NET_F_MRG_RXBUF     (1ULL << 15)
#define NET_F_STATUS        (1ULL << 16)
#define NET_OFFLOADS        (NET_F_CSUM | NET_F_GUEST_CSUM | NET_F_HOST_UFO | NET_F_MRG_RXBUF)

/* struct virtio_net_hdr (5.1.6) */
#define HDR_F_NEEDS_CSUM    1
#define HDR_GSO_UDP         3

/* Device configuration (5.1.4) */
#define NET_CFG_MAC         0
#define NET_CFG_STATUS      6
#define NET_S_LINK_UP       1

#define NET_HDR_LEN         12
#define NET_BUF             2048
#define NET_BIG_BUF         (NET_HDR_LEN + 65536 + 64)  /* a 64 KiB UDP datagram and its headers */
#define NET_BIG_SLOTS       64
#define IP_MAX              65535
#define NET_QSIZE           256
#define RXQ                 0
#define TXQ                 1

#define ETH_ALEN            6
#define ETH_HLEN            14
#define ETH_MIN             60          /* without the FCS */
#define ETH_P_IP            0x0800
#define ETH_P_ARP           0x0806
#define ETH_P_LOCAL_EXP     0x88b5      /* IEEE 802 local experimental */
#define IP_HLEN             20
#define IP_PROTO_ICMP       1
#define IP_PROTO_UDP        17
#define ICMP_ECHO_REPLY     0
#define ICMP_ECHO_REQUEST   8
#define UDP_HLEN            8
#define UDP_MAX_PAYLOAD     (1500 - IP_HLEN - UDP_HLEN)

#define PING_IDENT          0x7072      /* "pr" */
#define PING_DATA           56
#define BENCH_SRC_PORT      9000        /* ours: the netbench receiver */
#define BENCH_DST_PORT      9           /* the peer's discard port */

#define NET_TIMEOUT_US      1000000
#define HOSTILE_TOKEN       0xffff      /* nethostile's malformed chain */

enum { MODE_NET, MODE_PING, MODE_BENCH };

struct net {
    struct virtio v;
    int mode;
    uint8_t mac[ETH_ALEN], peer_mac[ETH_ALEN];
    int have_peer_mac;
    const char *mac_source;
    uint32_t ip, peer;
    uint16_t ip_id;
    uint8_t *rxbuf, *txbuf;
    unsigned nrx, ntx;
    unsigned tx_buf;                    /* bytes per transmit slot */
    uint64_t rx_merged;                 /* frames that spanned several buffers (dropped) */
    unsigned rx_skip;                   /* buffers of such a frame still to come */
    uint16_t *tx_free;
    unsigned tx_nfree, tx_unkicked;
    int error;                          /* the device returned a bad used element */
    uint64_t rx_frames, tx_frames, rx_ignored, rx_bad;
    uint64_t arp_replies, icmp_replies, icmp_limit;
    /* netping: the echo request in flight */
    uint16_t ping_seq;
    int ping_waiting, ping_got;
    uint64_t ping_t1;
    /* netbench: UDP frames received on BENCH_SRC_PORT */
    uint64_t udp_frames, udp_bytes, udp_first, udp_last;
};

static struct net net_dev;

/* ------------------------------------------------------------------ */
/* Bytes on the wire (big endian) and the Internet checksum.           */

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put16le(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* One's complement sum of 16-bit big-endian words (RFC 1071). */
static uint32_t csum_add(uint32_t sum, const uint8_t *p, unsigned len)
{
    while (len > 1) {
        sum += (uint32_t)p[0] << 8 | p[1];
        p += 2;
        len -= 2;
    }
    if (len)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static const uint8_t eth_broadcast[ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* ------------------------------------------------------------------ */
/* Queues.                                                              */

static void rx_post(struct net *n, unsigned i)
{
    struct vbuf b = { (uint64_t)(n->rxbuf + (uint64_t)i * NET_BUF), NET_BUF, 1 };

    (void)vq_add(&n->v.vq[RXQ], &b, 1, i);     /* one slot per entry: always fits */
}

static void tx_kick(struct net *n)
{
    if (n->tx_unkicked) {
        vq_kick(&n->v.vq[TXQ]);
        n->tx_unkicked = 0;
    }
}

static void tx_reclaim(struct net *n)
{
    uint32_t tok, len;
    int r;

    while (!n->error && (r = vq_get(&n->v.vq[TXQ], &tok, &len)) != 0) {
        if (r < 0 || (tok >= n->ntx && tok != HOSTILE_TOKEN)) {
            n->error = 1;
            break;
        }
        if (tok != HOSTILE_TOKEN)
            n->tx_free[n->tx_nfree++] = (uint16_t)tok;
    }
}

/* A free transmit slot: its frame area (after the header), or NULL if
 * none came back within a second. */
static uint8_t *tx_alloc(struct net *n, unsigned *slot)
{
    uint64_t t0 = 0;
    uint8_t *p;

    while (!n->tx_nfree && !n->error) {
        tx_kick(n);
        tx_reclaim(n);
        if (n->tx_nfree)
            break;
        if (!t0)
            t0 = rdtsc();
        else if (rdtsc() - t0 > us_tsc(NET_TIMEOUT_US))
            return NULL;
        cpu_relax();
    }
    if (!n->tx_nfree)
        return NULL;
    *slot = n->tx_free[--n->tx_nfree];
    p = n->txbuf + (uint64_t)*slot * n->tx_buf;
    memset(p, 0, NET_HDR_LEN);
    return p + NET_HDR_LEN;
}

/* Queue the frame in a slot (padded to the Ethernet minimum); the
 * device hears of it at the next tx_kick(). */
static void tx_send(struct net *n, unsigned slot, unsigned len)
{
    uint8_t *p = n->txbuf + (uint64_t)slot * n->tx_buf;
    struct vbuf b;

    if (len < ETH_MIN) {
        memset(p + NET_HDR_LEN + len, 0, ETH_MIN - len);
        len = ETH_MIN;
    }
    b.addr = (uint64_t)p;
    b.len = NET_HDR_LEN + len;
    b.write = 0;
    (void)vq_add(&n->v.vq[TXQ], &b, 1, slot);  /* as many slots as entries */
    n->tx_frames++;
    n->tx_unkicked++;
}

/* Ethernet header; returns where the payload goes. */
static uint8_t *eth_put(const struct net *n, uint8_t *f, const uint8_t *dst, uint16_t type)
{
    memcpy(f, dst, ETH_ALEN);
    memcpy(f + ETH_ALEN, n->mac, ETH_ALEN);
    put16(f + 12, type);
    return f + ETH_HLEN;
}

/* IPv4 header without options, DF set, TTL 64, checksum filled in. */
static uint8_t *ip_put(struct net *n, uint8_t *ip, uint32_t dst, uint8_t proto, unsigned plen)
{
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(IP_HLEN + plen));
    put16(ip + 4, n->ip_id++);
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = proto;
    put16(ip + 10, 0);
    put32(ip + 12, n->ip);
    put32(ip + 16, dst);
    put16(ip + 10, csum_fold(csum_add(0, ip, IP_HLEN)));
    return ip + IP_HLEN;
}

/* ARP request (op 1) or reply (op 2). */
static int arp_send(struct net *n, uint16_t op, const uint8_t *dst_mac, const uint8_t *tha, uint32_t tpa)
{
    unsigned slot;
    uint8_t *f = tx_alloc(n, &slot), *a;

    if (!f)
        return 0;
    a = eth_put(n, f, dst_mac, ETH_P_ARP);
    put16(a, 1);                        /* Ethernet */
    put16(a + 2, ETH_P_IP);
    a[4] = ETH_ALEN;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, n->mac, ETH_ALEN);
    put32(a + 14, n->ip);
    memcpy(a + 18, tha, ETH_ALEN);
    put32(a + 24, tpa);
    tx_send(n, slot, ETH_HLEN + 28);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Receiving.                                                           */

static void rx_arp(struct net *n, const uint8_t *f, unsigned len)
{
    const uint8_t *a = f + ETH_HLEN;
    uint32_t spa, tpa;
    uint16_t op;

    if (len < ETH_HLEN + 28 || get16(a) != 1 || get16(a + 2) != ETH_P_IP || a[4] != ETH_ALEN ||
        a[5] != 4) {
        n->rx_ignored++;
        return;
    }
    op = get16(a + 6);
    spa = get32(a + 14);
    tpa = get32(a + 24);
    if (spa == n->peer && spa != 0 && (op == 2 || tpa == n->ip)) {
        memcpy(n->peer_mac, a + 8, ETH_ALEN);
        n->have_peer_mac = 1;
    }
    if (op == 1 && tpa == n->ip) {
        if (arp_send(n, 2, a + 8, a + 8, spa))
            n->arp_replies++;
    } else if (op != 2) {
        n->rx_ignored++;
    }
}

static void rx_icmp(struct net *n, const uint8_t *f, uint32_t src, const uint8_t *ic, unsigned len)
{
    unsigned slot;
    uint8_t *t, *r;

    if (len < 8 || csum_fold(csum_add(0, ic, len)) != 0) {
        n->rx_bad++;
        return;
    }
    if (ic[0] == ICMP_ECHO_REQUEST && ic[1] == 0) {
        if (n->icmp_limit && n->icmp_replies >= n->icmp_limit) {
            n->rx_ignored++;
            return;
        }
        if (!(t = tx_alloc(n, &slot)))
            return;
        r = ip_put(n, eth_put(n, t, f + ETH_ALEN, ETH_P_IP), src, IP_PROTO_ICMP, len);
        memcpy(r, ic, len);
        r[0] = ICMP_ECHO_REPLY;
        put16(r + 2, 0);
        put16(r + 2, csum_fold(csum_add(0, r, len)));
        tx_send(n, slot, ETH_HLEN + IP_HLEN + len);
        n->icmp_replies++;
    } else if (ic[0] == ICMP_ECHO_REPLY && n->mode == MODE_PING && n->ping_waiting &&
               src == n->peer && get16(ic + 4) == PING_IDENT && get16(ic + 6) == n->ping_seq &&
               len == 8 + PING_DATA) {
        n->ping_t1 = rdtsc();
        n->ping_got = 1;
        n->ping_waiting = 0;
    } else {
        n->rx_ignored++;
    }
}

static void rx_udp(struct net *n, const uint8_t *u, unsigned len)
{
    unsigned ulen;

    if (len < UDP_HLEN || (ulen = get16(u + 4)) < UDP_HLEN || ulen > len) {
        n->rx_bad++;
        return;
    }
    if (n->mode != MODE_BENCH || get16(u + 2) != BENCH_SRC_PORT) {
        n->rx_ignored++;
        return;
    }
    n->udp_last = rdtsc();
    if (!n->udp_frames++)
        n->udp_first = n->udp_last;
    n->udp_bytes += ulen - UDP_HLEN;
}

static void rx_ip(struct net *n, const uint8_t *f, unsigned len)
{
    const uint8_t *ip = f + ETH_HLEN;
    unsigned ihl, tot;

    if (len < ETH_HLEN + IP_HLEN || ip[0] >> 4 != 4) {
        n->rx_bad++;
        return;
    }
    ihl = (ip[0] & 15u) * 4;
    tot = get16(ip + 2);
    if (ihl < IP_HLEN || tot < ihl || ETH_HLEN + tot > len ||
        csum_fold(csum_add(0, ip, ihl)) != 0) {
        n->rx_bad++;
        return;
    }
    if (get32(ip + 16) != n->ip || (get16(ip + 6) & 0x3fff)) {  /* not ours, or a fragment */
        n->rx_ignored++;
        return;
    }
    if (ip[9] == IP_PROTO_ICMP)
        rx_icmp(n, f, get32(ip + 12), ip + ihl, tot - ihl);
    else if (ip[9] == IP_PROTO_UDP)
        rx_udp(n, ip + ihl, tot - ihl);
    else
        n->rx_ignored++;
}

static void rx_frame(struct net *n, const uint8_t *f, unsigned len)
{
    uint16_t type;

    if (len < ETH_HLEN) {
        n->rx_bad++;
        return;
    }
    type = get16(f + 12);
    if (type == ETH_P_ARP)
        rx_arp(n, f, len);
    else if (type == ETH_P_IP)
        rx_ip(n, f, len);
    else
        n->rx_ignored++;
}

/*
 * Handle everything received so far, give the buffers back (one notify),
 * send the replies (one notify) and take back transmitted slots.
 * Returns the number of frames handled.
 */
static unsigned net_poll(struct net *n)
{
    struct virtq *rq = &n->v.vq[RXQ];
    unsigned got = 0;
    uint32_t tok, len;
    int r;

    while (!n->error && (r = vq_get(rq, &tok, &len)) != 0) {
        if (r < 0 || tok >= n->nrx) {
            n->error = 1;
            break;
        }
        if (n->rx_skip) {               /* the rest of a frame spanning buffers */
            n->rx_skip--;
        } else {
            const uint8_t *buf = n->rxbuf + (uint64_t)tok * NET_BUF;
            unsigned nb = (n->v.features & NET_F_MRG_RXBUF) && len >= NET_HDR_LEN ? buf[10] | buf[11] << 8 : 1;

            n->rx_frames++;
            if (nb > 1) {
                n->rx_merged++;
                n->rx_skip = nb - 1;
            } else if (len > NET_HDR_LEN && len <= NET_BUF) {
                rx_frame(n, buf + NET_HDR_LEN, len - NET_HDR_LEN);
            } else {
                n->rx_bad++;
            }
        }
        rx_post(n, tok);
        got++;
    }
    if (got)
        vq_kick(rq);
    tx_kick(n);
    tx_reclaim(n);
    return got;
}

/* Wait until every transmit slot is back (at most a second). */
static int tx_drain(struct net *n)
{
    uint64_t t0 = rdtsc();

    tx_kick(n);
    while (n->tx_nfree < n->ntx && !n->error && rdtsc() - t0 < us_tsc(NET_TIMEOUT_US)) {
        net_poll(n);
        cpu_relax();
    }
    return n->tx_nfree == n->ntx;
}

/* ------------------------------------------------------------------ */
/* Set-up.                                                              */

/* Reset, negotiate, both queues, buffers; the receive queue filled. */
static const char *net_up(struct net *n, const struct options *o)
{
    const char *err;
    unsigned i;

    uint64_t want = virtio_want(o) | NET_F_MAC | NET_F_STATUS;

    if (o->features & FEAT_OFFLOAD)
        want |= NET_OFFLOADS;
    err = virtio_negotiate(&n->v, want, o->msix);
    if (!err)
        err = virtio_setup(&n->v, 2, NET_QSIZE);
    if (err)
        return err;
    n->error = 0;
    n->rx_skip = 0;
    n->nrx = n->v.vq[RXQ].size;
    n->ntx = n->v.vq[TXQ].size;
    n->tx_buf = NET_BUF;
    if (n->v.features & NET_F_HOST_UFO) {  /* room for 64 KiB datagrams, in fewer slots */
        n->tx_buf = NET_BIG_BUF;
        if (n->ntx > NET_BIG_SLOTS)
            n->ntx = NET_BIG_SLOTS;
    }
    n->rxbuf = dma_alloc((uint64_t)n->nrx * NET_BUF, 4096);
    n->txbuf = dma_alloc((uint64_t)n->ntx * n->tx_buf, 4096);
    n->tx_free = dma_alloc(2ULL * n->ntx, 16);
    for (i = 0; i < n->ntx; i++)
        n->tx_free[i] = (uint16_t)(n->ntx - 1 - i);
    n->tx_nfree = n->ntx;
    n->tx_unkicked = 0;
    for (i = 0; i < n->nrx; i++)
        rx_post(n, i);
    vq_kick(&n->v.vq[RXQ]);
    return NULL;
}

static void net_read_mac(struct net *n)
{
    unsigned i, tries = 0;
    uint8_t g;

    if (!(n->v.features & NET_F_MAC)) {
        /* Locally administered, unicast. */
        static const uint8_t fallback[ETH_ALEN] = { 0x02, 0x70, 0x72, 0x6f, 0x62, 0x65 };

        memcpy(n->mac, fallback, ETH_ALEN);
        n->mac_source = "probe";
        return;
    }
    do {
        g = vcfg_generation(&n->v);
        for (i = 0; i < ETH_ALEN; i++)
            n->mac[i] = vcfg8(&n->v, NET_CFG_MAC + i);
    } while (g != vcfg_generation(&n->v) && ++tries < 100);
    n->mac_source = "device";
}

static const char *net_link(struct net *n)
{
    if (!(n->v.features & NET_F_STATUS))
        return "unknown";
    return vcfg16(&n->v, NET_CFG_STATUS) & NET_S_LINK_UP ? "up" : "down";
}

static struct net *net_attach(const struct options *o, int mode)
{
    struct net *n = &net_dev;
    const char *err = virtio_init(o, 0);

    if (err)
        fail(err, "", 0);
    if ((err = virtio_find(&n->v, VIRTIO_ID_NET)) != NULL)
        fail(err, "", 0);
    n->mode = mode;
    n->ip = o->ip;
    n->peer = o->peer;
    n->ip_id = 1;
    tsc_calibrate(NULL);
    if ((err = net_up(n, o)) != NULL)
        fail(err, "", 0);
    virtio_print(&n->v, "net");
    net_read_mac(n);
    return n;
}

/* The net line every workload starts with. */
static void net_hello(struct net *n, const char *tag, int with_peer)
{
    line_begin(tag);
    put_str(" mac=");
    put_mac(n->mac);
    put_str(" ip=");
    put_ipv4(n->ip);
    if (with_peer) {
        put_str(" peer=");
        put_ipv4(n->peer);
    }
    kv_str("mac_source", n->mac_source);
    kv_str("link", net_link(n));
    kv_dec("rx_buffers", n->nrx);
    kv_dec("tx_slots", n->ntx);
    line_end();
}

static NORETURN void net_device_error(void)
{
    fail("virtio-net returned a bad used element", "", 0);
}

/* ARP for the peer: a request every second until it answers. */
static void net_resolve(struct net *n, uint64_t timeout_us)
{
    static const uint8_t zero[ETH_ALEN];
    uint64_t t0 = rdtsc(), last = 0;
    unsigned requests = 0;

    while (!n->have_peer_mac) {
        uint64_t now = rdtsc();

        if (n->error)
            net_device_error();
        if (now - t0 > us_tsc(timeout_us))
            break;
        if (!requests || now - last > us_tsc(NET_TIMEOUT_US)) {
            if (arp_send(n, 1, eth_broadcast, zero, n->peer))
                requests++;
            last = now;
        }
        net_poll(n);
        cpu_relax();
    }
    line_begin("net");
    put_str(" peer=");
    put_ipv4(n->peer);
    if (n->have_peer_mac) {
        put_str(" peer_mac=");
        put_mac(n->peer_mac);
    }
    kv_dec("arp_requests", requests);
    line_end();
    if (!n->have_peer_mac)
        fail("no ARP reply from the peer", "", 0);
}

static uint64_t tsc_to_us(uint64_t ticks)
{
    return muldiv64(ticks, 1000000, tsc_hz());
}

/* 10^6 bits per second. */
static uint64_t mbps(uint64_t bytes, uint64_t ticks)
{
    return ticks ? muldiv64(bytes * 8, tsc_hz(), ticks) / 1000000 : 0;
}

/* ------------------------------------------------------------------ */
/* net: answer ARP and ping.                                            */

NORETURN void test_net(const struct options *o)
{
    struct net *n = net_attach(o, MODE_NET);
    uint64_t secs = o->have_secs ? o->secs : 10, t0, limit;
    int ok;

    if (o->have_n)
        n->icmp_limit = o->n;
    net_hello(n, "net", 0);
    t0 = rdtsc();
    limit = us_tsc(secs * 1000000);
    while (rdtsc() - t0 < limit && !n->error) {
        if (o->have_n && n->icmp_replies >= o->n)
            break;
        net_poll(n);
        cpu_relax();
    }
    tx_drain(n);
    line_begin("net");
    kv_dec("arp_replies", n->arp_replies);
    kv_dec("icmp_replies", n->icmp_replies);
    kv_dec("rx", n->rx_frames);
    kv_dec("tx", n->tx_frames);
    kv_dec("rx_ignored", n->rx_ignored);
    kv_dec("rx_bad", n->rx_bad);
    kv_dec("secs", muldiv64(rdtsc() - t0, 1000, tsc_hz()) / 1000);
    if (n->v.msix)
        kv_dec("irqs", virtio_irqs(&n->v));
    line_end();
    if (n->error)
        net_device_error();
    ok = o->have_n ? n->icmp_replies == o->n : n->icmp_replies > 0;
    if (!ok)
        fail(o->have_n ? "not exactly probe.n echo requests answered" : "no echo request answered",
             "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* netping: echo requests to the peer, one at a time.                   */

#define PING_MAX            1000000

NORETURN void test_netping(const struct options *o)
{
    struct net *n = net_attach(o, MODE_PING);
    uint64_t count = o->have_n ? o->n : 10, sent = 0, received = 0, i, *rtt;

    if (count > PING_MAX)
        fail("probe.n too large for netping (at most 1000000)", "", 0);
    net_hello(n, "netping", 1);
    net_resolve(n, 5000000);
    rtt = dma_alloc(8 * (count ? count : 1), 16);
    for (i = 0; i < count && !n->error; i++) {
        unsigned slot, k;
        uint8_t *f = tx_alloc(n, &slot), *ic;
        uint64_t t0;

        if (!f)
            break;
        ic = ip_put(n, eth_put(n, f, n->peer_mac, ETH_P_IP), n->peer, IP_PROTO_ICMP, 8 + PING_DATA);
        ic[0] = ICMP_ECHO_REQUEST;
        ic[1] = 0;
        put16(ic + 2, 0);
        put16(ic + 4, PING_IDENT);
        put16(ic + 6, (uint16_t)i);
        for (k = 0; k < PING_DATA; k++)
            ic[8 + k] = (uint8_t)(0x10 + k);
        put16(ic + 2, csum_fold(csum_add(0, ic, 8 + PING_DATA)));
        tx_send(n, slot, ETH_HLEN + IP_HLEN + 8 + PING_DATA);
        n->ping_seq = (uint16_t)i;
        n->ping_got = 0;
        n->ping_waiting = 1;
        t0 = rdtsc();
        tx_kick(n);
        sent++;
        while (!n->ping_got && !n->error && rdtsc() - t0 < us_tsc(NET_TIMEOUT_US))
            net_poll(n);
        n->ping_waiting = 0;
        if (n->ping_got)
            rtt[received++] = n->ping_t1 - t0;
    }
    tx_drain(n);
    sort_u64(rtt, received);
    line_begin("netping");
    kv_dec("sent", sent);
    kv_dec("received", received);
    kv_dec("rtt_us_p50", tsc_to_us(percentile_u64(rtt, received, 50)));
    kv_dec("rtt_us_p99", tsc_to_us(percentile_u64(rtt, received, 99)));
    kv_dec("rtt_us_min", tsc_to_us(received ? rtt[0] : 0));
    kv_dec("rtt_us_max", tsc_to_us(received ? rtt[received - 1] : 0));
    kv_dec("arp_replies", n->arp_replies);
    kv_dec("icmp_replies", n->icmp_replies);
    line_end();
    if (n->error)
        net_device_error();
    if (sent != count || received != sent)
        fail("not every echo request was answered", "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* netbench: UDP out as fast as the queue goes, then UDP in.            */

/*
 * One netbench datagram in the frame at f (its virtio_net_hdr just before
 * it, zeroed).  With CSUM the host fills in the UDP checksum: the field
 * holds the pseudo-header sum and the header says where it goes
 * (NEEDS_CSUM, csum_start at the UDP header, csum_offset 6); a datagram
 * larger than one MTU (HOST_UFO) goes as one GSO_UDP frame, fragments of
 * 1480 bytes, without DF.
 */
static void bench_frame(struct net *n, uint8_t *f, unsigned size, uint64_t seq)
{
    uint8_t *hdr = f - NET_HDR_LEN, *ip = eth_put(n, f, n->peer_mac, ETH_P_IP);
    uint8_t *u = ip_put(n, ip, n->peer, IP_PROTO_UDP, UDP_HLEN + size);
    unsigned k;

    put16(u, BENCH_SRC_PORT);
    put16(u + 2, BENCH_DST_PORT);
    put16(u + 4, (uint16_t)(UDP_HLEN + size));
    put16(u + 6, 0);                    /* no checksum (allowed for IPv4) */
    if (n->v.features & NET_F_CSUM) {
        uint32_t sum = csum_add(0, ip + 12, 8) + IP_PROTO_UDP + UDP_HLEN + size;

        while (sum >> 16)
            sum = (sum & 0xffff) + (sum >> 16);
        put16(u + 6, (uint16_t)sum);    /* folded, not complemented: the host finishes it */
        hdr[0] = HDR_F_NEEDS_CSUM;
        put16le(hdr + 6, ETH_HLEN + IP_HLEN);   /* csum_start */
        put16le(hdr + 8, 6);                    /* csum_offset */
    }
    if (size > UDP_MAX_PAYLOAD) {
        put16(ip + 6, 0);               /* no DF: it is cut into fragments */
        put16(ip + 10, 0);
        put16(ip + 10, csum_fold(csum_add(0, ip, IP_HLEN)));
        hdr[1] = HDR_GSO_UDP;
        put16le(hdr + 2, ETH_HLEN + IP_HLEN + UDP_HLEN);    /* hdr_len */
        put16le(hdr + 4, 1480);                             /* gso_size */
    }
    u += UDP_HLEN;
    for (k = 0; k < 8 && k < size; k++)
        u[k] = (uint8_t)(seq >> (8 * k));
    for (; k < size; k++)
        u[k] = (uint8_t)k;
}

NORETURN void test_netbench(const struct options *o)
{
    struct net *n = net_attach(o, MODE_BENCH);
    uint64_t count = o->have_n ? o->n : 100000, size = o->have_size ? o->size : UDP_MAX_PAYLOAD;
    uint64_t secs = o->have_secs ? o->secs : 10, sent = 0, t0, t1, last_progress, limit;
    uint64_t done_before, tx_cycles;
    int stalled = 0;

    if (size > UDP_MAX_PAYLOAD && !(n->v.features & NET_F_HOST_UFO))
        fail("probe.size too large for netbench (at most 1472 without UFO)", "", 0);
    if (size > IP_MAX - IP_HLEN - UDP_HLEN)
        fail("probe.size too large for netbench (at most 65507)", "", 0);
    net_hello(n, "netbench", 1);
    net_resolve(n, 5000000);

    /* Transmit: fill every free slot, one notify, take back what is done. */
    done_before = n->v.vq[TXQ].completed;
    t0 = last_progress = rdtsc();
    while (sent < count && !n->error) {
        uint64_t before = n->tx_nfree;
        unsigned slot;

        tx_reclaim(n);
        if (n->tx_nfree != before)
            last_progress = rdtsc();
        while (sent < count && n->tx_nfree) {
            slot = n->tx_free[--n->tx_nfree];
            memset(n->txbuf + (uint64_t)slot * n->tx_buf, 0, NET_HDR_LEN);
            bench_frame(n, n->txbuf + (uint64_t)slot * n->tx_buf + NET_HDR_LEN, (unsigned)size, sent);
            tx_send(n, slot, (unsigned)(ETH_HLEN + IP_HLEN + UDP_HLEN + size));
            sent++;
        }
        tx_kick(n);
        if (vq_pending(&n->v.vq[RXQ]))
            net_poll(n);
        if (rdtsc() - last_progress > us_tsc(2 * NET_TIMEOUT_US)) {
            stalled = 1;
            break;
        }
        cpu_relax();
    }
    if (!tx_drain(n))
        stalled = 1;
    t1 = rdtsc();
    tx_cycles = t1 - t0;

    line_begin("netbench");
    kv_str("rx", "ready");
    kv_dec("tx_sent", sent);
    kv_dec("tx_completed", n->v.vq[TXQ].completed - done_before);
    kv_dec("rx_port", BENCH_SRC_PORT);
    kv_dec("secs", secs);
    line_end();

    /* Receive for probe.secs. */
    t0 = rdtsc();
    limit = us_tsc(secs * 1000000);
    while (rdtsc() - t0 < limit && !n->error) {
        net_poll(n);
        cpu_relax();
    }
    tx_drain(n);

    line_begin("netbench");
    kv_dec("tx_frames", sent);
    kv_dec("tx_mbps", mbps(sent * size, tx_cycles));
    kv_dec("tx_pps", tx_cycles ? muldiv64(sent, tsc_hz(), tx_cycles) : 0);
    kv_dec("rx_frames", n->udp_frames);
    kv_dec("rx_mbps", n->udp_frames > 1 ? mbps(n->udp_bytes, n->udp_last - n->udp_first) : 0);
    kv_dec("rx_bytes", n->udp_bytes);
    kv_dec("size", size);
    kv_dec("tx_notifies", n->v.vq[TXQ].notifies);
    kv_hex("features", n->v.features);
    kv_dec("rx_merged", n->rx_merged);
    kv_dec("arp_replies", n->arp_replies);
    kv_dec("icmp_replies", n->icmp_replies);
    line_end();
    if (n->error)
        net_device_error();
    if (stalled)
        fail("the device stopped taking frames", "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* nethostile: malformed transmit chains.                               */

enum { NH_OVERSIZED, NH_BAD_HDR, NH_HDR_ONLY, NH_SHORT_HDR, NH_WRITABLE, NH_CASES };

static const char *const nh_names[NH_CASES] = {
    "oversized", "bad_hdr", "hdr_only", "short_hdr", "writable",
};

#define NH_OVERSIZED_SEGS   17          /* x 4 KiB after the header: 68 KiB */
#define NH_WAIT_US          1000000
#define NH_POLL_US          200

/* Queue one malformed chain on the transmit queue and notify. */
static void nh_build(struct net *n, unsigned kind)
{
    struct vbuf b[1 + NH_OVERSIZED_SEGS];
    uint8_t *buf = dma_alloc(NET_HDR_LEN + 4096ULL * NH_OVERSIZED_SEGS, 4096);
    uint8_t *f = buf + NET_HDR_LEN;
    unsigned nb = 0, k;

    /* A frame to nobody in particular, of a type nobody handles. */
    eth_put(n, f, eth_broadcast, ETH_P_LOCAL_EXP);
    for (k = ETH_HLEN; k < 256; k++)
        f[k] = (uint8_t)k;
    switch (kind) {
    case NH_OVERSIZED:                  /* header, then 68 KiB of frame */
        b[nb++] = (struct vbuf){ (uint64_t)buf, NET_HDR_LEN, 0 };
        for (k = 0; k < NH_OVERSIZED_SEGS; k++)
            b[nb++] = (struct vbuf){ (uint64_t)f + 4096ULL * k, 4096, 0 };
        break;
    case NH_BAD_HDR:                    /* every header field nonsense */
        buf[0] = 0xff;                  /* flags: all, defined or not */
        buf[1] = 0x7f;                  /* gso_type: no such type */
        put16le(buf + 2, 0xffff);       /* hdr_len */
        put16le(buf + 4, 0xfff0);       /* gso_size */
        put16le(buf + 6, 0xfff0);       /* csum_start: beyond the frame */
        put16le(buf + 8, 0xfff0);       /* csum_offset */
        put16le(buf + 10, 0x7777);      /* num_buffers */
        b[nb++] = (struct vbuf){ (uint64_t)buf, NET_HDR_LEN + ETH_MIN, 0 };
        break;
    case NH_HDR_ONLY:                   /* the header and no frame */
        b[nb++] = (struct vbuf){ (uint64_t)buf, NET_HDR_LEN, 0 };
        break;
    case NH_SHORT_HDR:                  /* less than a header */
        b[nb++] = (struct vbuf){ (uint64_t)buf, 4, 0 };
        break;
    case NH_WRITABLE:                   /* a device-writable transmit buffer */
        b[nb++] = (struct vbuf){ (uint64_t)buf, NET_HDR_LEN + ETH_MIN, 1 };
        break;
    }
    /* Only this chain is in flight; it takes at most 18 descriptors. */
    (void)vq_add(&n->v.vq[TXQ], b, nb, HOSTILE_TOKEN);
    vq_kick(&n->v.vq[TXQ]);
}

/* Does a good frame (an ARP request for the peer) go out?  Its slot must
 * come back; whether the peer answered is only reported. */
static int nh_good_frame(struct net *n, int *answered)
{
    static const uint8_t zero[ETH_ALEN];
    uint64_t t0, completed = n->v.vq[TXQ].completed;

    n->have_peer_mac = 0;
    if (!arp_send(n, 1, eth_broadcast, zero, n->peer))
        return 0;
    tx_kick(n);
    t0 = rdtsc();
    while (!n->error && rdtsc() - t0 < us_tsc(NET_TIMEOUT_US)) {
        net_poll(n);
        if (n->v.vq[TXQ].completed != completed && n->have_peer_mac)
            break;
        if (n->v.vq[TXQ].completed != completed && rdtsc() - t0 > us_tsc(NET_TIMEOUT_US / 2))
            break;
        cpu_relax();
    }
    *answered = n->have_peer_mac;
    return !n->error && n->v.vq[TXQ].completed != completed;
}

NORETURN void test_nethostile(const struct options *o)
{
    struct net *n = net_attach(o, MODE_NET);
    unsigned kind, ok_cases = 0, reset_cases = 0;
    const char *err;

    net_hello(n, "nethostile", 1);
    for (kind = 0; kind < NH_CASES; kind++) {
        uint64_t mark = dma_mark(), t0;
        struct virtq *tq;
        uint8_t status = 0;
        int needs_reset = 0, completed = 0, good = 0, answered = 0, recovered = 0, ok;
        uint32_t tok, len = 0;

        if (kind > 0 && (err = net_up(n, o)) != NULL)
            fail(err, "", 0);
        tq = &n->v.vq[TXQ];
        /* The malformed chain goes on an otherwise idle queue. */
        n->tx_nfree = 0;
        nh_build(n, kind);
        t0 = rdtsc();
        while (rdtsc() - t0 < us_tsc(NH_WAIT_US)) {
            status = virtio_status(&n->v);
            if (status & VS_NEEDS_RESET) {
                needs_reset = 1;
                break;
            }
            if (vq_pending(tq))
                break;
            tsc_delay_us(NH_POLL_US);
        }
        if (!needs_reset && vq_pending(tq)) {
            completed = vq_get(tq, &tok, &len) == 1 && tok == HOSTILE_TOKEN;
            status = virtio_status(&n->v);
            needs_reset = !!(status & VS_NEEDS_RESET);
        }
        if (needs_reset) {
            /* Start over: reset, negotiate, fresh queues and buffers. */
            dma_release(mark);
            if ((err = net_up(n, o)) != NULL)
                fail(err, "", 0);
            good = nh_good_frame(n, &answered);
            recovered = good;
        } else {
            /* The device may still hold the chain: the good frame goes
             * into the queue after it. */
            n->tx_nfree = 0;
            for (tok = 1; tok < n->ntx && tok < 8; tok++)
                n->tx_free[n->tx_nfree++] = (uint16_t)tok;
            good = nh_good_frame(n, &answered);
        }
        ok = good;
        ok_cases += (unsigned)ok;
        reset_cases += (unsigned)needs_reset;

        line_begin("nethostile");
        kv_str("case", nh_names[kind]);
        kv_dec("needs_reset", (uint64_t)needs_reset);
        kv_hex("device_status", status);
        kv_dec("completed", (uint64_t)completed);
        if (completed)
            kv_dec("used_len", len);
        kv_dec("good_tx", (uint64_t)good);
        kv_dec("arp_reply", (uint64_t)answered);
        kv_dec("recovered", (uint64_t)recovered);
        kv_dec("ok", (uint64_t)ok);
        line_end();
        n->error = 0;
        dma_release(mark);
    }
    line_begin("nethostile");
    kv_dec("cases", NH_CASES);
    kv_dec("ok", ok_cases);
    kv_dec("needs_reset", reset_cases);
    line_end();
    if (ok_cases != NH_CASES)
        fail("the device neither kept working nor recovered after a reset", "", 0);
    pass();
}
