//! `sluiced`: the Sluice daemon. `sluiced --config sluice.toml`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;

/// Sluice: a DPDK L4 load balancer for Kubernetes Services of type LoadBalancer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (TOML; see docs/configuration.md).
    #[arg(short, long, default_value = "/etc/sluice/sluice.toml")]
    config: PathBuf,
    /// Load the configuration and the manifests and compile them as the daemon would start,
    /// without DPDK, then exit (with the Kubernetes source: the configuration only).
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(sluice_controlplane::logs::DEFAULT_FILTER)
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.check {
        // The daemon's own load and compile steps, without DPDK.
        match sluice_controlplane::daemon::check(&args.config) {
            Ok(report) => {
                print!("{report}");
                return Ok(());
            }
            Err(e) => {
                eprintln!("sluiced: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Err(e) = sluice_controlplane::daemon::run(&args.config) {
        eprintln!("sluiced: {e}");
        std::process::exit(1);
    }
    Ok(())
}
