//! Finds the system DPDK with pkg-config, compiles the C shim and generates bindings.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.h");
    println!("cargo:rerun-if-changed=csrc/shim.c");
    println!("cargo:rerun-if-changed=build.rs");
    // Without the `dpdk` feature the crate is only the CPU helpers: nothing to find or link.
    if env::var_os("CARGO_FEATURE_DPDK").is_none() {
        return;
    }

    let dpdk = pkg_config::Config::new()
        .atleast_version("21.11")
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!(
                "DPDK not found with pkg-config ({e}).\n\
                 Install it with `sudo scripts/setup` (Debian: dpdk libdpdk-dev pkg-config)."
            )
        });

    // The same flags pkg-config gives (they include `-include rte_config.h` and -march).
    let cflags = pkg_config::get_variable("libdpdk", "cflags").ok();
    let mut build = cc::Build::new();
    build.file("csrc/shim.c").opt_level(3).warnings(false);
    for p in &dpdk.include_paths {
        build.include(p);
    }
    build.flag("-include").flag("rte_config.h");
    build.flag_if_supported("-march=corei7");
    build.compile("sluice_shim");
    let _ = cflags;
    // rte_eth_from_rings lives in the net_ring PMD, which pkg-config does not list.
    println!("cargo:rustc-link-lib=dylib=rte_net_ring");
    // Capture filters: libpcap's compiler (pcap_compile) for tcpdump expressions.
    println!("cargo:rustc-link-lib=dylib=pcap");

    let mut clang_args: Vec<String> = dpdk
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    clang_args.push("-include".into());
    clang_args.push("rte_config.h".into());
    clang_args.push("-march=corei7".into());

    let bindings = bindgen::Builder::default()
        .header("csrc/shim.h")
        .clang_args(&clang_args)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .allowlist_function("sluice_.*")
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_eal_cleanup")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_thread_register")
        .allowlist_function("rte_thread_unregister")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_free")
        .allowlist_function("rte_mempool_avail_count")
        .allowlist_function("rte_mempool_in_use_count")
        .allowlist_function("rte_ring_create")
        .allowlist_function("rte_ring_free")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_dev_get_port_by_name")
        .allowlist_function("rte_eth_dev_get_name_by_port")
        .allowlist_function("rte_eth_dev_info_get")
        .allowlist_function("rte_eth_dev_configure")
        .allowlist_function("rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_rx_queue_setup")
        .allowlist_function("rte_eth_tx_queue_setup")
        .allowlist_function("rte_eth_dev_start")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_close")
        .allowlist_function("rte_eth_promiscuous_enable")
        .allowlist_function("rte_eth_macaddr_get")
        .allowlist_function("rte_eth_link_get_nowait")
        .allowlist_function("rte_eth_stats_get")
        .allowlist_function("rte_eth_stats_reset")
        .allowlist_function("rte_eth_xstats_get")
        .allowlist_function("rte_eth_xstats_get_names")
        .allowlist_function("rte_eth_xstats_reset")
        .allowlist_function("rte_eth_dev_set_mtu")
        .allowlist_function("rte_eth_from_rings")
        .allowlist_function("pcap_open_dead")
        .allowlist_function("pcap_compile")
        .allowlist_function("pcap_geterr")
        .allowlist_function("pcap_freecode")
        .allowlist_function("pcap_close")
        .allowlist_function("bpf_filter")
        .allowlist_var("DLT_EN10MB")
        .allowlist_var("PCAP_NETMASK_UNKNOWN")
        .allowlist_var("sluice_mbuf_layout")
        .allowlist_var("RTE_ETH_.*")
        .allowlist_var("RING_F_.*")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE")
        .allowlist_var("RTE_PKTMBUF_HEADROOM")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("RTE_MAX_ETHPORTS")
        // The mbuf and mempool layouts are touched only through the shim.
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .opaque_type("rte_ring")
        // Packed-and-aligned structs that Rust cannot represent.
        .opaque_type("rte_l2tpv2_.*")
        .opaque_type("rte_gtp_.*")
        .opaque_type("rte_arp_.*")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .generate()
        .expect("bindgen failed on the DPDK headers; is libclang-dev installed? (scripts/setup)");

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}
