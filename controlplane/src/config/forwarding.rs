//! `[forwarding]`: how Services are forwarded by default, and the Maglev size check the
//! `[tables]` key and the annotation share.

use std::path::PathBuf;

use serde::Deserialize;
use sluice_dataplane::maglev::{is_prime, next_prime, MAX_TABLE_SIZE};
use sluice_dataplane::pipeline::CookieKey;
use sluice_dataplane::snapshot::Method;

use super::de::de_method;

/// What a frontend's backends are.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Pod addresses from EndpointSlices, on the Service port's targetPort.
    Pod,
    /// Node InternalIPs, on the Service port's nodePort.
    Node,
}

impl Target {
    /// Name as used in config and annotations.
    pub fn name(self) -> &'static str {
        match self {
            Target::Pod => "pod",
            Target::Node => "node",
        }
    }

    /// Parses a config/annotation value.
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "pod" => Some(Target::Pod),
            "node" => Some(Target::Node),
            _ => None,
        }
    }
}

/// The default Maglev/flow hash seed: `"sluice\0\x01"`; equal on every host of an ECMP group.
pub const DEFAULT_HASH_SEED: u64 = 0x736c_7569_6365_0001;

/// `[forwarding]`: defaults for how Services are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// `nat`, `dsr-l2` or `dsr-ipip`; a Service's `sluice.dev/forwarding-method` annotation
    /// overrides it. Default: `nat`.
    #[serde(deserialize_with = "de_method")]
    pub default_method: Method,
    /// `pod` or `node`; the `sluice.dev/target` annotation overrides it. Default: `pod`.
    pub target: Target,
    /// Seed of the flow and Maglev hashes (0 to 2^63-1); must be equal on every Sluice host
    /// of an ECMP group. Default: [`DEFAULT_HASH_SEED`].
    pub hash_seed: u64,
    /// Seconds a backend that left its EndpointSlice stays in the snapshot as draining.
    /// Default: 300.
    pub removed_backend_grace_seconds: u64,
    /// Answer a non-SYN TCP segment of a `nat` flow this host does not know with a RST, so the
    /// client fails at once. Default: true.
    pub reset_unknown_flows: bool,
    /// SYN proxy for `nat` TCP Services (the `sluice.dev/syn-proxy` annotation overrides it):
    /// SYNs are answered with cookies and a backend sees only connections whose client
    /// completed the handshake; always (`"on"`, `true`), never (`"off"`, `false`) or while a
    /// worker holds many embryonic flows of the frontend (`"auto"`). Default: off.
    pub syn_proxy: SynProxyMode,
    /// `auto`: embryonic flows (SYN forwarded, handshake not complete) of one frontend on
    /// one worker that engage the proxy; it disengages below half. Default:
    /// [`DEFAULT_SYN_PROXY_AUTO_THRESHOLD`].
    pub syn_proxy_auto_threshold: u32,
    /// A file whose first line (at least 16 bytes) keys the SYN cookies, the same on every
    /// host of the fleet. Unset: the `[sync]` key, if flow sync is on, else a random key at
    /// every start.
    pub syn_cookie_key_file: Option<PathBuf>,
}

/// Where the SYN cookie key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieKeySource {
    /// `[forwarding] syn_cookie_key_file`.
    KeyFile,
    /// The `[sync]` key.
    SyncKey,
    /// Random, new at this start.
    Random,
}

impl CookieKeySource {
    /// In words, for the start-up log.
    pub fn describe(self) -> &'static str {
        match self {
            CookieKeySource::KeyFile => "forwarding.syn_cookie_key_file",
            CookieKeySource::SyncKey => "derived from the [sync] key",
            CookieKeySource::Random => "random, for this start only",
        }
    }
}

/// The label that separates the SYN cookie key from every other use of a shared secret.
const COOKIE_KEY_LABEL: &[u8] = b"sluice syn-cookie key v1\x01";

/// The SYN cookie key of `secret`: HMAC-SHA256 of a fixed label under it (HKDF-Expand's
/// first block), so the key reveals nothing of the secret and differs from its other uses.
pub fn cookie_key_of(secret: &[u8]) -> CookieKey {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(COOKIE_KEY_LABEL);
    let out = m.finalize().into_bytes();
    let word = |i: usize| u64::from_le_bytes(out[i..i + 8].try_into().unwrap_or_default());
    CookieKey([word(0), word(8)])
}

impl super::Config {
    /// The SYN cookie key: from `[forwarding] syn_cookie_key_file`, else the `[sync]` key,
    /// else `None` (the daemon draws a random one), and where it came from.
    ///
    /// # Errors
    /// (key, what is wrong and how to fix it) when the file cannot be read or is too short.
    pub fn syn_cookie_key(&self) -> Result<(Option<CookieKey>, CookieKeySource), (String, String)> {
        if let Some(f) = &self.forwarding.syn_cookie_key_file {
            let k = "forwarding.syn_cookie_key_file".to_owned();
            let text = std::fs::read_to_string(f).map_err(|e| {
                (
                    k.clone(),
                    format!("cannot read {}: {e}; give a readable file", f.display()),
                )
            })?;
            let secret = text.lines().next().unwrap_or("").trim();
            if secret.len() < super::key::MIN_KEY_LEN {
                return Err((
                    k,
                    format!(
                        "{}: the key is {} bytes; write at least {} on its first line, the \
                         same on every host",
                        f.display(),
                        secret.len(),
                        super::key::MIN_KEY_LEN
                    ),
                ));
            }
            return Ok((
                Some(cookie_key_of(secret.as_bytes())),
                CookieKeySource::KeyFile,
            ));
        }
        if let Some(s) = &self.sync {
            let secret = s.key_bytes()?;
            return Ok((Some(cookie_key_of(&secret)), CookieKeySource::SyncKey));
        }
        Ok((None, CookieKeySource::Random))
    }
}

/// The default `syn_proxy_auto_threshold`: the scale of Linux's SYN backlog
/// (`tcp_max_syn_backlog`), per worker and frontend.
pub const DEFAULT_SYN_PROXY_AUTO_THRESHOLD: u32 = 1024;

/// The largest `syn_proxy_auto_threshold`.
pub const MAX_SYN_PROXY_AUTO_THRESHOLD: u32 = 1 << 24;

/// When the SYN proxy answers a Service's SYNs (`[forwarding] syn_proxy`,
/// `sluice.dev/syn-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SynProxyMode {
    /// Never.
    #[default]
    Off,
    /// Always.
    On,
    /// While embryonic flows pass `syn_proxy_auto_threshold`.
    Auto,
}

impl SynProxyMode {
    /// Parses `on`, `off` or `auto`.
    pub fn parse(s: &str) -> Option<SynProxyMode> {
        match s.trim() {
            "on" => Some(SynProxyMode::On),
            "off" => Some(SynProxyMode::Off),
            "auto" => Some(SynProxyMode::Auto),
            _ => None,
        }
    }

    /// The name as written in config and annotations.
    pub fn name(self) -> &'static str {
        match self {
            SynProxyMode::Off => "off",
            SynProxyMode::On => "on",
            SynProxyMode::Auto => "auto",
        }
    }
}

impl<'de> Deserialize<'de> for SynProxyMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SynProxyMode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"on\", \"off\" or \"auto\" (true and false mean on and off)")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<SynProxyMode, E> {
                Ok(if b {
                    SynProxyMode::On
                } else {
                    SynProxyMode::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SynProxyMode, E> {
                SynProxyMode::parse(s).ok_or_else(|| {
                    E::custom(format!(
                        "unknown value {s:?}; use \"on\", \"off\" or \"auto\" (true and \
                         false mean on and off)"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            default_method: Method::Nat,
            target: Target::Pod,
            hash_seed: DEFAULT_HASH_SEED,
            removed_backend_grace_seconds: 300,
            reset_unknown_flows: true,
            syn_proxy: SynProxyMode::Off,
            syn_proxy_auto_threshold: DEFAULT_SYN_PROXY_AUTO_THRESHOLD,
            syn_cookie_key_file: None,
        }
    }
}

/// Checks a Maglev table size (config key or annotation).
///
/// # Errors
/// A message saying which prime to use instead.
pub fn check_maglev_size(size: u32) -> Result<(), String> {
    if size > MAX_TABLE_SIZE {
        return Err(format!(
            "{size} is above the maximum {MAX_TABLE_SIZE}; use a smaller prime such as 65537"
        ));
    }
    if size < 2 || !is_prime(size) {
        return Err(format!(
            "{size} is not prime; Maglev needs a prime table size, e.g. {} (the next prime) or 65537",
            next_prime(size.max(2))
        ));
    }
    Ok(())
}
