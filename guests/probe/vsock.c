/*
 * virtio-vsock (ring 3): stream sockets with credit-based flow control,
 * and the vsock (echo server) and vsockclient workloads.
 *
 * Queue 0 receives, queue 1 transmits, queue 2 carries device events.
 * Every packet is the 44-byte struct virtio_vsock_hdr and, for RW, up to
 * VS_PKT_DATA bytes of data.  Receive buffers are two descriptors, the
 * header (exactly 44 bytes) and a 4 KiB data buffer; transmitted packets
 * are the header and, if there is data, a second descriptor with it.
 * That is the layout every device accepts, whether it insists on the
 * header having a descriptor of its own or takes any layout.
 *
 * Flow control (virtio 1.2, 5.10.6.3): every packet we send carries
 * buf_alloc (VS_CONN_BUF, the size of the connection's receive ring) and
 * fwd_cnt (bytes taken out of that ring so far).  We send data only
 * while the peer has room for it: peer buf_alloc - (bytes sent - peer
 * fwd_cnt).  A peer that sends more than we said we have room for is a
 * protocol error and gets a RST.  When we have taken a lot out of the
 * ring and told the peer nothing, a CREDIT_UPDATE goes out; CREDIT_REQUEST
 * is answered with one, and is sent when we have waited for credit for
 * a while.
 */
#include "virtio.h"

/* virtio-vsock feature bits (5.10.3) */
#define VSOCK_F_STREAM      (1ULL << 0)

#define VSOCK_CFG_CID       0           /* le64 guest_cid */

#define VSOCK_TYPE_STREAM   1
#define OP_REQUEST          1
#define OP_RESPONSE         2
#define OP_RST              3
#define OP_SHUTDOWN         4
#define OP_RW               5
#define OP_CREDIT_UPDATE    6
#define OP_CREDIT_REQUEST   7
#define SHUT_RCV            1           /* the sender will receive no more */
#define SHUT_SEND           2           /* the sender will send no more */
#define EVENT_TRANSPORT_RESET 0

#define HOST_CID            2
#define RXQ                 0
#define TXQ                 1
#define EVQ                 2
#define VS_QSIZE            256
#define VS_HDR              44
#define VS_PKT_DATA         4096
#define VS_SLOT_HDR         64          /* header area of a buffer, data after it */
#define VS_SLOT             (VS_SLOT_HDR + VS_PKT_DATA)
#define VS_EVENTS           8
#define VS_TX_RESERVE       8           /* slots data never takes: for control packets */
#define VS_CONN_BUF         65536       /* per connection, a power of 2 */
#define VS_MAX_CONNS        16
#define VS_CLIENT_PORT0     49152       /* vsockclient's first local port */

#define VS_TIMEOUT_US       1000000
#define VS_CONNECT_US       5000000
#define VS_CLOSE_US         2000000
#define VS_CREDIT_WAIT_US   100000

struct vsock_hdr {
    uint64_t src_cid;
    uint64_t dst_cid;
    uint32_t src_port;
    uint32_t dst_port;
    uint32_t len;
    uint16_t type;
    uint16_t op;
    uint32_t flags;
    uint32_t buf_alloc;
    uint32_t fwd_cnt;
} __attribute__((packed));

_Static_assert(sizeof(struct vsock_hdr) == VS_HDR, "virtio_vsock_hdr is 44 bytes");

enum { C_FREE, C_CONNECTING, C_OPEN, C_CLOSING };

struct conn {
    int state;
    int client;                         /* we asked for it */
    unsigned id;                        /* index, for the client's data pattern */
    uint64_t peer_cid;
    uint32_t local_port, peer_port;
    uint32_t peer_buf_alloc, peer_fwd_cnt;  /* from the peer's latest header */
    uint32_t tx_cnt;                    /* data bytes sent */
    uint32_t rx_cnt, fwd_cnt;           /* data bytes received, taken out of buf */
    uint32_t fwd_told;                  /* fwd_cnt in the last packet sent */
    uint32_t peer_shut;                 /* SHUT_* the peer announced */
    uint8_t *buf;                       /* VS_CONN_BUF receive ring */
    uint64_t t_state;                   /* when the state was entered */
    uint64_t t_blocked;                 /* since when we wait for credit (0: not) */
    int credit_requested;
    uint64_t bytes;                     /* echoed (server) or checked (client) */
    /* vsockclient: the message being sent and echoed */
    uint64_t msg, msg_sent, msg_recv, t_msg;
    uint64_t mismatches;
    int done;                           /* closed after every message came back */
};

struct vsock {
    struct virtio v;
    uint64_t cid;
    uint8_t *rxmem, *txmem;
    uint32_t *evmem;
    unsigned nrx, ntx;
    uint16_t *tx_free;
    unsigned tx_nfree, tx_unkicked;
    int error;
    struct conn conns[VS_MAX_CONNS];
    unsigned nconns;                    /* slots in use at most */
    /* server */
    int listening;
    uint32_t listen_port;
    uint64_t max_accept, accepted, refused, served, bytes;
    /* client */
    uint64_t nmsgs, msg_size, *rtt, nrtt;
    /* counters */
    uint64_t rx_pkts, tx_pkts, rst_sent, rst_received, credit_updates, credit_requests;
    uint64_t protocol_errors, events, resets_dropped;
};

static struct vsock vsock_dev;

/* ------------------------------------------------------------------ */
/* Queues.                                                              */

static void rx_post(struct vsock *s, unsigned i)
{
    uint8_t *m = s->rxmem + (uint64_t)i * VS_SLOT;
    struct vbuf b[2] = {
        { (uint64_t)m, VS_HDR, 1 },
        { (uint64_t)(m + VS_SLOT_HDR), VS_PKT_DATA, 1 },
    };

    (void)vq_add(&s->v.vq[RXQ], b, 2, i);      /* sized to fit */
}

static void ev_post(struct vsock *s, unsigned i)
{
    struct vbuf b = { (uint64_t)&s->evmem[2 * i], 8, 1 };

    (void)vq_add(&s->v.vq[EVQ], &b, 1, i);
}

static void tx_kick(struct vsock *s)
{
    if (s->tx_unkicked) {
        vq_kick(&s->v.vq[TXQ]);
        s->tx_unkicked = 0;
    }
}

static void tx_reclaim(struct vsock *s)
{
    uint32_t tok, len;
    int r;

    while (!s->error && (r = vq_get(&s->v.vq[TXQ], &tok, &len)) != 0) {
        if (r < 0 || tok >= s->ntx) {
            s->error = 1;
            break;
        }
        s->tx_free[s->tx_nfree++] = (uint16_t)tok;
    }
}

/* A free transmit buffer (waits up to a second); -1 if none. */
static int tx_alloc(struct vsock *s)
{
    uint64_t t0 = 0;

    while (!s->tx_nfree && !s->error) {
        tx_kick(s);
        tx_reclaim(s);
        if (s->tx_nfree)
            break;
        if (!t0)
            t0 = rdtsc();
        else if (rdtsc() - t0 > us_tsc(VS_TIMEOUT_US))
            return -1;
        cpu_relax();
    }
    return s->tx_nfree ? s->tx_free[--s->tx_nfree] : -1;
}

static struct vsock_hdr *slot_hdr(struct vsock *s, unsigned slot)
{
    return (struct vsock_hdr *)(s->txmem + (uint64_t)slot * VS_SLOT);
}

static uint8_t *slot_data(struct vsock *s, unsigned slot)
{
    return s->txmem + (uint64_t)slot * VS_SLOT + VS_SLOT_HDR;
}

/* Queue the packet in a slot (header filled in, data at slot_data()). */
static void tx_send(struct vsock *s, unsigned slot)
{
    uint8_t *m = s->txmem + (uint64_t)slot * VS_SLOT;
    uint32_t len = slot_hdr(s, slot)->len;
    struct vbuf b[2] = {
        { (uint64_t)m, VS_HDR, 0 },
        { (uint64_t)(m + VS_SLOT_HDR), len, 0 },
    };

    (void)vq_add(&s->v.vq[TXQ], b, len ? 2 : 1, slot);
    s->tx_pkts++;
    s->tx_unkicked++;
}

/* A packet on a connection, with our credit in it.  The data (len
 * bytes) must already be at slot_data(slot). */
static void conn_send_slot(struct vsock *s, struct conn *c, unsigned slot, uint16_t op,
                           uint32_t flags, uint32_t len)
{
    struct vsock_hdr *h = slot_hdr(s, slot);

    h->src_cid = s->cid;
    h->dst_cid = c->peer_cid;
    h->src_port = c->local_port;
    h->dst_port = c->peer_port;
    h->len = len;
    h->type = VSOCK_TYPE_STREAM;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = VS_CONN_BUF;
    h->fwd_cnt = c->fwd_cnt;
    c->fwd_told = c->fwd_cnt;
    tx_send(s, slot);
}

/* A control packet (no data); 0 if no buffer came free. */
static int conn_send(struct vsock *s, struct conn *c, uint16_t op, uint32_t flags)
{
    int slot = tx_alloc(s);

    if (slot < 0)
        return 0;
    conn_send_slot(s, c, (unsigned)slot, op, flags, 0);
    if (op == OP_RST)
        s->rst_sent++;
    else if (op == OP_CREDIT_UPDATE)
        s->credit_updates++;
    else if (op == OP_CREDIT_REQUEST)
        s->credit_requests++;
    return 1;
}

/* RST in answer to a packet that belongs to no connection. */
static void reply_rst(struct vsock *s, const struct vsock_hdr *in)
{
    int slot = tx_alloc(s);
    struct vsock_hdr *h;

    if (slot < 0)
        return;
    h = slot_hdr(s, (unsigned)slot);
    h->src_cid = s->cid;
    h->dst_cid = in->src_cid;
    h->src_port = in->dst_port;
    h->dst_port = in->src_port;
    h->len = 0;
    h->type = VSOCK_TYPE_STREAM;
    h->op = OP_RST;
    h->flags = 0;
    h->buf_alloc = 0;
    h->fwd_cnt = 0;
    tx_send(s, (unsigned)slot);
    s->rst_sent++;
}

/* ------------------------------------------------------------------ */
/* Connections.                                                         */

static struct conn *conn_find(struct vsock *s, uint64_t cid, uint32_t peer_port, uint32_t local_port)
{
    unsigned i;

    for (i = 0; i < s->nconns; i++) {
        struct conn *c = &s->conns[i];

        if (c->state != C_FREE && c->peer_cid == cid && c->peer_port == peer_port &&
            c->local_port == local_port)
            return c;
    }
    return NULL;
}

static unsigned conns_open(const struct vsock *s)
{
    unsigned i, k = 0;

    for (i = 0; i < s->nconns; i++)
        k += s->conns[i].state != C_FREE;
    return k;
}

static struct conn *conn_new(struct vsock *s, unsigned limit)
{
    unsigned i;

    for (i = 0; i < limit && i < VS_MAX_CONNS; i++) {
        struct conn *c = &s->conns[i];

        if (c->state == C_FREE && !c->done) {
            uint8_t *buf = c->buf;

            memset(c, 0, sizeof(*c));
            c->buf = buf;
            c->id = i;
            if (i >= s->nconns)
                s->nconns = i + 1;
            return c;
        }
    }
    return NULL;
}

/* Room the peer has for our data. */
static uint32_t peer_credit(const struct conn *c)
{
    uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;

    return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static void conn_close(struct vsock *s, struct conn *c, int send_rst)
{
    if (send_rst)
        conn_send(s, c, OP_RST, 0);
    if (c->client)
        c->done = 1;                    /* never reused */
    else if (c->state != C_CONNECTING) {
        s->served++;
        s->bytes += c->bytes;
    }
    c->state = C_FREE;
}

static void conn_set_state(struct conn *c, int state)
{
    c->state = state;
    c->t_state = rdtsc();
}

/* The server's answer to a REQUEST for the listening port. */
static void conn_accept(struct vsock *s, const struct vsock_hdr *h)
{
    struct conn *c = NULL;

    if (s->accepted < s->max_accept)
        c = conn_new(s, (unsigned)s->max_accept);
    if (!c) {
        s->refused++;
        reply_rst(s, h);
        return;
    }
    c->peer_cid = h->src_cid;
    c->peer_port = h->src_port;
    c->local_port = h->dst_port;
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    conn_set_state(c, C_OPEN);
    s->accepted++;
    if (!conn_send(s, c, OP_RESPONSE, 0))
        c->state = C_FREE;
}

/* A protocol violation by the peer: RST, and count it. */
static void conn_abort(struct vsock *s, struct conn *c, const char *why)
{
    if (!s->protocol_errors++) {
        line_begin("vsock");
        kv_str("error", why);
        kv_dec("local_port", c->local_port);
        kv_dec("peer_port", c->peer_port);
        line_end();
    }
    conn_close(s, c, 1);
}

static void rx_packet(struct vsock *s, const struct vsock_hdr *h, const uint8_t *data, uint32_t used)
{
    struct conn *c;
    uint32_t room, off, first;

    s->rx_pkts++;
    if (used < VS_HDR || h->len > VS_PKT_DATA || used < VS_HDR + h->len ||
        (h->op != OP_RW && h->len != 0)) {
        s->protocol_errors++;
        return;
    }
    if (h->dst_cid != s->cid || h->type != VSOCK_TYPE_STREAM) {
        if (h->op != OP_RST)
            reply_rst(s, h);
        return;
    }
    c = conn_find(s, h->src_cid, h->src_port, h->dst_port);
    if (!c) {
        if (h->op == OP_REQUEST && s->listening && h->dst_port == s->listen_port) {
            conn_accept(s, h);
        } else if (h->op != OP_RST) {
            s->refused += h->op == OP_REQUEST;
            reply_rst(s, h);
        }
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RESPONSE:
        if (c->state == C_CONNECTING) {
            conn_set_state(c, C_OPEN);
            c->t_msg = rdtsc();
        } else {
            conn_abort(s, c, "unexpected_response");
        }
        break;
    case OP_RW:
        if (c->state != C_OPEN && c->state != C_CLOSING) {
            conn_abort(s, c, "data_before_response");
            break;
        }
        room = VS_CONN_BUF - (c->rx_cnt - c->fwd_cnt);
        if (h->len > room) {
            conn_abort(s, c, "peer_exceeded_credit");
            break;
        }
        off = c->rx_cnt & (VS_CONN_BUF - 1);
        first = VS_CONN_BUF - off < h->len ? VS_CONN_BUF - off : h->len;
        memcpy(c->buf + off, data, first);
        memcpy(c->buf, data + first, h->len - first);
        c->rx_cnt += h->len;
        break;
    case OP_CREDIT_UPDATE:
        break;                          /* the credit fields were all of it */
    case OP_CREDIT_REQUEST:
        conn_send(s, c, OP_CREDIT_UPDATE, 0);
        break;
    case OP_SHUTDOWN:
        c->peer_shut |= h->flags & (SHUT_RCV | SHUT_SEND);
        break;
    case OP_RST:
        s->rst_received++;
        conn_close(s, c, 0);
        break;
    default:                            /* REQUEST on a live connection, unknown ops */
        conn_abort(s, c, "unexpected_op");
        break;
    }
}

/* Data bytes we may send now on c: credit, free buffers, at most max. */
static uint32_t send_window(struct vsock *s, struct conn *c, uint32_t max)
{
    uint32_t w = peer_credit(c);

    if (w == 0) {
        if (!c->t_blocked)
            c->t_blocked = rdtsc();
        return 0;
    }
    c->t_blocked = 0;
    c->credit_requested = 0;
    if (s->tx_nfree <= VS_TX_RESERVE) {
        tx_reclaim(s);
        if (s->tx_nfree <= VS_TX_RESERVE)
            return 0;
    }
    if (w > VS_PKT_DATA)
        w = VS_PKT_DATA;
    return w < max ? w : max;
}

/* Things every open connection does: ask for credit when starved, tell
 * the peer about room it has not heard of. */
static void conn_housekeeping(struct vsock *s, struct conn *c)
{
    if (c->t_blocked && !c->credit_requested &&
        rdtsc() - c->t_blocked > us_tsc(VS_CREDIT_WAIT_US)) {
        c->credit_requested = conn_send(s, c, OP_CREDIT_REQUEST, 0);
    }
    if (c->fwd_cnt - c->fwd_told >= VS_CONN_BUF / 2)
        conn_send(s, c, OP_CREDIT_UPDATE, 0);
}

/* Server: send back what came in, as far as the peer's credit goes. */
static void echo_pump(struct vsock *s, struct conn *c)
{
    if (c->peer_shut & SHUT_RCV)
        c->fwd_cnt = c->rx_cnt;         /* nobody will read it: drop it */
    while (c->state == C_OPEN && c->rx_cnt != c->fwd_cnt) {
        uint32_t off = c->fwd_cnt & (VS_CONN_BUF - 1);
        uint32_t max = c->rx_cnt - c->fwd_cnt, n, slot;

        if (max > VS_CONN_BUF - off)
            max = VS_CONN_BUF - off;
        if ((n = send_window(s, c, max)) == 0)
            break;
        slot = s->tx_free[--s->tx_nfree];
        memcpy(slot_data(s, slot), c->buf + off, n);
        c->tx_cnt += n;
        c->fwd_cnt += n;
        c->bytes += n;
        conn_send_slot(s, c, slot, OP_RW, 0, n);
    }
    if (c->state != C_OPEN)
        return;
    /* The peer sends no more and everything is back: done (as Linux
     * does, the side that has nothing left answers with RST). */
    if ((c->peer_shut & SHUT_SEND) && c->rx_cnt == c->fwd_cnt) {
        conn_close(s, c, 1);
        return;
    }
    conn_housekeeping(s, c);
}

/* ------------------------------------------------------------------ */
/* Client side.                                                         */

static uint8_t pattern(const struct conn *c, uint64_t msg, uint64_t pos)
{
    return (uint8_t)(pos * 7 + (pos >> 8) + msg * 13 + c->id * 101 + 1);
}

static void client_pump(struct vsock *s, struct conn *c)
{
    uint64_t size = s->msg_size;

    if (c->state == C_CONNECTING) {
        if (rdtsc() - c->t_state > us_tsc(VS_CONNECT_US)) {
            conn_close(s, c, 1);
            c->done = 1;                /* counted as a failed connection */
        }
        return;
    }
    if (c->state == C_CLOSING) {
        /* Waiting for the peer's RST after our SHUTDOWN. */
        if ((c->peer_shut & SHUT_SEND) || rdtsc() - c->t_state > us_tsc(VS_CLOSE_US)) {
            conn_close(s, c, 1);
            c->done = 1;
        }
        return;
    }
    if (c->state != C_OPEN)
        return;
    /* Check and take what came back. */
    while (c->rx_cnt != c->fwd_cnt) {
        uint8_t b = c->buf[c->fwd_cnt & (VS_CONN_BUF - 1)];

        if (c->msg >= s->nmsgs || c->msg_recv >= c->msg_sent || b != pattern(c, c->msg, c->msg_recv))
            c->mismatches++;
        c->fwd_cnt++;
        c->msg_recv++;
        c->bytes++;
        if (c->msg_recv == size && c->msg < s->nmsgs) {
            s->rtt[s->nrtt++] = rdtsc() - c->t_msg;
            c->msg++;
            c->msg_sent = c->msg_recv = 0;
        }
    }
    /* Send (the rest of) the current message. */
    while (c->msg < s->nmsgs && c->msg_sent < size && !(c->peer_shut & SHUT_RCV)) {
        uint64_t left = size - c->msg_sent;
        uint32_t n, slot, k;
        uint8_t *d;

        if ((n = send_window(s, c, left > VS_PKT_DATA ? VS_PKT_DATA : (uint32_t)left)) == 0)
            break;
        if (c->msg_sent == 0)
            c->t_msg = rdtsc();
        slot = s->tx_free[--s->tx_nfree];
        d = slot_data(s, slot);
        for (k = 0; k < n; k++)
            d[k] = pattern(c, c->msg, c->msg_sent + k);
        c->msg_sent += n;
        c->tx_cnt += n;
        conn_send_slot(s, c, slot, OP_RW, 0, n);
    }
    if (c->msg >= s->nmsgs || (c->peer_shut & (SHUT_RCV | SHUT_SEND))) {
        conn_send(s, c, OP_SHUTDOWN, SHUT_RCV | SHUT_SEND);
        conn_set_state(c, C_CLOSING);
        return;
    }
    conn_housekeeping(s, c);
}

/* ------------------------------------------------------------------ */
/* The loop.                                                            */

static void drop_all(struct vsock *s)
{
    unsigned i;

    for (i = 0; i < s->nconns; i++) {
        if (s->conns[i].state != C_FREE) {
            s->resets_dropped++;
            s->conns[i].done = s->conns[i].client;
            s->conns[i].state = C_FREE;
        }
    }
}

static void ev_poll(struct vsock *s)
{
    uint32_t tok, len;
    int r, got = 0;

    while (!s->error && (r = vq_get(&s->v.vq[EVQ], &tok, &len)) != 0) {
        if (r < 0 || tok >= VS_EVENTS) {
            s->error = 1;
            break;
        }
        s->events++;
        line_begin("vsock");
        kv_dec("event", s->evmem[2 * tok]);
        if (s->evmem[2 * tok] == EVENT_TRANSPORT_RESET) {
            drop_all(s);
            s->cid = vcfg64(&s->v, VSOCK_CFG_CID);
            kv_str("what", "transport_reset");
            kv_dec("cid", s->cid);
        }
        line_end();
        ev_post(s, tok);
        got = 1;
    }
    if (got)
        vq_kick(&s->v.vq[EVQ]);
}

static void vs_poll(struct vsock *s)
{
    struct virtq *rq = &s->v.vq[RXQ];
    uint32_t tok, len;
    unsigned i, got = 0;
    int r;

    while (!s->error && (r = vq_get(rq, &tok, &len)) != 0) {
        uint8_t *m;

        if (r < 0 || tok >= s->nrx) {
            s->error = 1;
            break;
        }
        m = s->rxmem + (uint64_t)tok * VS_SLOT;
        rx_packet(s, (const struct vsock_hdr *)m, m + VS_SLOT_HDR, len);
        rx_post(s, tok);
        got++;
    }
    if (got)
        vq_kick(rq);
    if (vq_pending(&s->v.vq[EVQ]))
        ev_poll(s);
    tx_reclaim(s);
    for (i = 0; i < s->nconns; i++) {
        struct conn *c = &s->conns[i];

        if (c->state == C_FREE)
            continue;
        if (c->client)
            client_pump(s, c);
        else
            echo_pump(s, c);
    }
    tx_kick(s);
}

static struct vsock *vs_attach(const struct options *o)
{
    struct vsock *s = &vsock_dev;
    const char *err = virtio_init(o, 0);
    struct virtq *rq, *tq;
    unsigned i;

    if (err)
        fail(err, "", 0);
    if ((err = virtio_find(&s->v, VIRTIO_ID_VSOCK)) != NULL)
        fail(err, "", 0);
    tsc_calibrate(NULL);
    err = virtio_negotiate(&s->v, virtio_want(o) | VSOCK_F_STREAM, o->msix);
    if (!err)
        err = virtio_setup(&s->v, 3, VS_QSIZE);
    if (err)
        fail(err, "", 0);
    virtio_print(&s->v, "vsock");
    rq = &s->v.vq[RXQ];
    tq = &s->v.vq[TXQ];
    s->nrx = rq->size / vq_descs_for(rq, 2);
    s->ntx = tq->size / vq_descs_for(tq, 2);
    s->rxmem = dma_alloc((uint64_t)s->nrx * VS_SLOT, 4096);
    s->txmem = dma_alloc((uint64_t)s->ntx * VS_SLOT, 4096);
    s->evmem = dma_alloc(8 * VS_EVENTS, 16);
    s->tx_free = dma_alloc(2ULL * s->ntx, 16);
    for (i = 0; i < s->ntx; i++)
        s->tx_free[i] = (uint16_t)(s->ntx - 1 - i);
    s->tx_nfree = s->ntx;
    for (i = 0; i < VS_MAX_CONNS; i++)
        s->conns[i].buf = dma_alloc(VS_CONN_BUF, 4096);
    for (i = 0; i < s->nrx; i++)
        rx_post(s, i);
    for (i = 0; i < VS_EVENTS && i < s->v.vq[EVQ].size; i++)
        ev_post(s, i);
    vq_kick(rq);
    vq_kick(&s->v.vq[EVQ]);
    s->cid = vcfg64(&s->v, VSOCK_CFG_CID);
    return s;
}

static void put_counters(const struct vsock *s)
{
    kv_dec("rx", s->rx_pkts);
    kv_dec("tx", s->tx_pkts);
    kv_dec("rst_sent", s->rst_sent);
    kv_dec("rst_received", s->rst_received);
    kv_dec("credit_updates", s->credit_updates);
    kv_dec("credit_requests", s->credit_requests);
    kv_dec("errors", s->protocol_errors);
    if (s->events)
        kv_dec("events", s->events);
    if (s->v.msix)
        kv_dec("irqs", virtio_irqs(&s->v));
}

/* ------------------------------------------------------------------ */
/* vsock: echo server.                                                  */

NORETURN void test_vsock(const struct options *o)
{
    struct vsock *s = vs_attach(o);
    uint64_t n = o->have_n ? o->n : 4, secs = o->have_secs ? o->secs : 30, t0, limit;
    int ok;

    s->listening = 1;
    s->listen_port = (uint32_t)(o->have_port ? o->port : 1234);
    s->max_accept = n;
    line_begin("vsock");
    kv_dec("cid", s->cid);
    put_str(" listening");
    kv_dec("port", s->listen_port);
    kv_dec("conns", n < VS_MAX_CONNS ? n : VS_MAX_CONNS);
    kv_dec("buf_alloc", VS_CONN_BUF);
    line_end();
    t0 = rdtsc();
    limit = us_tsc(secs * 1000000);
    while (s->served < n && !s->error && rdtsc() - t0 < limit) {
        vs_poll(s);
        cpu_relax();
    }
    /* Let the last packets (RSTs) go out. */
    tx_kick(s);
    t0 = rdtsc();
    while (s->tx_nfree < s->ntx && !s->error && rdtsc() - t0 < us_tsc(VS_TIMEOUT_US))
        tx_reclaim(s);
    line_begin("vsock");
    kv_dec("served", s->served);
    kv_dec("bytes", s->bytes);
    kv_dec("accepted", s->accepted);
    kv_dec("refused", s->refused);
    kv_dec("open", conns_open(s));
    put_counters(s);
    line_end();
    if (s->error)
        fail("virtio-vsock returned a bad used element", "", 0);
    if (s->protocol_errors)
        fail("vsock protocol errors", "", 0);
    ok = o->have_n ? s->served == n : s->served > 0;
    if (!ok)
        fail(o->have_n ? "fewer than probe.n connections served" : "no connection served", "", 0);
    pass();
}

/* ------------------------------------------------------------------ */
/* vsockclient: connect to the host, send messages, check the echo.     */

static uint64_t percentile_us(const uint64_t *a, uint64_t n, unsigned p)
{
    return muldiv64(percentile_u64(a, n, p), 1000000, tsc_hz());
}

NORETURN void test_vsockclient(const struct options *o)
{
    struct vsock *s = vs_attach(o);
    uint64_t secs = o->have_secs ? o->secs : 30, t0, limit, bytes = 0, mismatches = 0;
    unsigned nconns = (unsigned)o->conns, i, done = 0, completed = 0;
    uint32_t port = (uint32_t)(o->have_port ? o->port : 5000);
    int ok;

    s->nmsgs = o->have_n ? o->n : 100;
    s->msg_size = o->have_size ? o->size : 256;
    if (s->msg_size == 0)
        fail("bad value for probe.size: 0", "", 0);
    if (s->nmsgs * nconns > 1000000)
        fail("probe.n too large for vsockclient (at most 1000000 messages)", "", 0);
    s->rtt = dma_alloc(8 * (s->nmsgs * nconns + 1), 16);
    line_begin("vsockclient");
    kv_dec("cid", s->cid);
    kv_dec("peer_cid", HOST_CID);
    kv_dec("port", port);
    kv_dec("conns", nconns);
    kv_dec("messages", s->nmsgs);
    kv_dec("size", s->msg_size);
    line_end();
    for (i = 0; i < nconns; i++) {
        struct conn *c = conn_new(s, nconns);

        c->client = 1;
        c->peer_cid = HOST_CID;
        c->peer_port = port;
        c->local_port = VS_CLIENT_PORT0 + i;
        conn_set_state(c, C_CONNECTING);
        conn_send(s, c, OP_REQUEST, 0);
    }
    tx_kick(s);
    t0 = rdtsc();
    limit = us_tsc(secs * 1000000);
    while (!s->error && rdtsc() - t0 < limit) {
        vs_poll(s);
        for (i = 0, done = 0; i < nconns; i++)
            done += s->conns[i].done;
        if (done == nconns)
            break;
        cpu_relax();
    }
    tx_kick(s);
    for (i = 0; i < nconns; i++) {
        struct conn *c = &s->conns[i];

        bytes += c->bytes;
        mismatches += c->mismatches;
        completed += c->msg == s->nmsgs;
    }
    sort_u64(s->rtt, s->nrtt);
    ok = !s->error && !s->protocol_errors && mismatches == 0 && completed == nconns;
    line_begin("vsockclient");
    kv_dec("bytes", bytes);
    kv_dec("ok", (uint64_t)ok);
    kv_dec("rtt_us_p50", percentile_us(s->rtt, s->nrtt, 50));
    kv_dec("rtt_us_p99", percentile_us(s->rtt, s->nrtt, 99));
    kv_dec("messages", s->nrtt);
    kv_dec("conns_completed", completed);
    kv_dec("mismatches", mismatches);
    put_counters(s);
    line_end();
    if (s->error)
        fail("virtio-vsock returned a bad used element", "", 0);
    if (!ok)
        fail(completed < nconns ? "not every message came back" : "the echo did not match", "", 0);
    pass();
}
