/* One-line wrappers for DPDK's static inline functions, so Rust can call them.
 * Nothing else lives here: logic belongs in Rust. */
#ifndef SLUICE_SHIM_H
#define SLUICE_SHIM_H

#include <stdint.h>
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_ring.h>
#include <rte_bus_vdev.h>
#include <rte_eth_ring.h>
/* Packet capture: libpcap compiles tcpdump expressions to classic BPF (declarations only). */
#include <pcap/pcap.h>

/* Offsets of the rte_mbuf fields the per-packet path reads, from the C compiler that sees the
 * same headers as bindgen: Rust reads the fields itself (an inlined load) instead of calling a
 * wrapper per access, while rte_mbuf stays opaque to it. */
struct sluice_mbuf_layout {
    uint16_t buf_addr;
    uint16_t data_off;
    uint16_t data_len;
    uint16_t nb_segs;
};
extern const struct sluice_mbuf_layout sluice_mbuf_layout;

uint16_t sluice_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t sluice_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *sluice_pktmbuf_alloc(struct rte_mempool *mp);
int sluice_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n);
void sluice_pktmbuf_free(struct rte_mbuf *m);
void sluice_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n);
void sluice_pktmbuf_reset(struct rte_mbuf *m);
uint8_t *sluice_pktmbuf_data(struct rte_mbuf *m);
uint16_t sluice_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t sluice_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t sluice_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t sluice_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t sluice_pktmbuf_tailroom(const struct rte_mbuf *m);
uint16_t sluice_pktmbuf_port(const struct rte_mbuf *m);
uint32_t sluice_pktmbuf_rss_hash(const struct rte_mbuf *m);
char *sluice_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *sluice_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
char *sluice_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int sluice_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void sluice_mbuf_refcnt_update(struct rte_mbuf *m, int16_t v);
uint16_t sluice_mbuf_refcnt_read(const struct rte_mbuf *m);
unsigned sluice_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n);
unsigned sluice_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n);
unsigned sluice_ring_count(const struct rte_ring *r);
int sluice_errno(void);
unsigned sluice_lcore_id(void);
uint64_t sluice_rdtsc(void);
uint64_t sluice_tsc_hz(void);
void sluice_pause(void);

#endif
