/* One-line wrappers for DPDK's static inline functions (see shim.h). */
#include "shim.h"
#include <stddef.h>

const struct sluice_mbuf_layout sluice_mbuf_layout = {
    .buf_addr = offsetof(struct rte_mbuf, buf_addr),
    .data_off = offsetof(struct rte_mbuf, data_off),
    .data_len = offsetof(struct rte_mbuf, data_len),
    .nb_segs = offsetof(struct rte_mbuf, nb_segs),
};

uint16_t sluice_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) { return rte_eth_rx_burst(port, queue, pkts, n); }
uint16_t sluice_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) { return rte_eth_tx_burst(port, queue, pkts, n); }
struct rte_mbuf *sluice_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int sluice_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n) { return rte_pktmbuf_alloc_bulk(mp, mbufs, n); }
void sluice_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void sluice_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n) { rte_pktmbuf_free_bulk(mbufs, n); }
void sluice_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }
uint8_t *sluice_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t sluice_pktmbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }
uint32_t sluice_pktmbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }
uint16_t sluice_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint16_t sluice_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t sluice_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint16_t sluice_pktmbuf_port(const struct rte_mbuf *m) { return m->port; }
uint32_t sluice_pktmbuf_rss_hash(const struct rte_mbuf *m) { return m->hash.rss; }
char *sluice_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *sluice_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
char *sluice_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
int sluice_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
void sluice_mbuf_refcnt_update(struct rte_mbuf *m, int16_t v) { rte_mbuf_refcnt_update(m, v); }
uint16_t sluice_mbuf_refcnt_read(const struct rte_mbuf *m) { return rte_mbuf_refcnt_read(m); }
unsigned sluice_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n) { return rte_ring_enqueue_burst(r, objs, n, NULL); }
unsigned sluice_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n) { return rte_ring_dequeue_burst(r, objs, n, NULL); }
unsigned sluice_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
int sluice_errno(void) { return rte_errno; }
unsigned sluice_lcore_id(void) { return rte_lcore_id(); }
uint64_t sluice_rdtsc(void) { return rte_rdtsc(); }
uint64_t sluice_tsc_hz(void) { return rte_get_tsc_hz(); }
void sluice_pause(void) { rte_pause(); }
