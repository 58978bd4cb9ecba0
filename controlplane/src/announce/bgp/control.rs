//! # A client of BIRD's control socket
//!
//! The same Unix socket `birdc` uses, spoken directly: sluiced asks often (status every few
//! seconds, a reconfigure on every change) and a fork of `birdc` per question would be slower
//! and would hide BIRD's reply codes.
//!
//! The protocol is line based. On connect BIRD greets with `0001 BIRD 2.0.12 ready.`. A command
//! is one line. Each reply line starts with a four-digit code followed by `-` (more lines
//! follow) or a space (the last line of the reply); a line starting with a space continues the
//! previous code; `+` lines are spontaneous printouts. Codes `0xxx` are successes, `1xxx` table
//! rows, `2xxx` table headings, `8xxx` run-time errors and `9xxx` parse errors (BIRD's
//! doc/reply_codes).
//!
//! [`parse_protocols`] and [`parse_bfd_sessions`] read `show protocols all` and
//! `show bfd sessions` by reply code and by `Key: value` lines, ignoring what they do not know,
//! so a newer BIRD that adds lines does not break them.
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Errors talking to BIRD's control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Connecting, reading or writing failed.
    #[error("BIRD control socket {}: {source}; check that BIRD runs and that the path matches `bird -s` (bgp.socket)", .path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// BIRD answered with an error code.
    #[error("BIRD refused `{command}`: {code} {text}")]
    Refused {
        /// The command sent.
        command: String,
        /// BIRD's reply code (8xxx run-time, 9xxx parse error).
        code: u16,
        /// BIRD's message.
        text: String,
    },
    /// The reply did not follow BIRD's line protocol.
    #[error("BIRD control socket {}: unexpected reply line {line:?}; is this a BIRD 2 socket?", .path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// The offending line.
        line: String,
    },
}

/// One line of a reply: its code and text (continuation lines carry the previous code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyLine {
    /// The reply code.
    pub code: u16,
    /// The text after the code and its separator.
    pub text: String,
}

/// An open connection to BIRD's control socket.
pub struct Control {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Connects and reads BIRD's greeting; every read and write is bounded by `timeout`.
    ///
    /// # Errors
    /// [`ControlError::Io`] if nothing listens there, [`ControlError::Protocol`] if the
    /// greeting is not BIRD's.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Control, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut c = Control {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        };
        let hello = c.read_reply("(greeting)")?;
        if !hello.iter().any(|l| l.code == 1) {
            return Err(ControlError::Protocol {
                path: path.to_owned(),
                line: hello.first().map(|l| l.text.clone()).unwrap_or_default(),
            });
        }
        Ok(c)
    }

    /// Sends one command and returns its reply lines.
    ///
    /// # Errors
    /// I/O and protocol errors; [`ControlError::Refused`] for 8xxx/9xxx replies.
    pub fn command(&mut self, command: &str) -> Result<Vec<ReplyLine>, ControlError> {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|source| ControlError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.read_reply(command)
    }

    fn read_reply(&mut self, command: &str) -> Result<Vec<ReplyLine>, ControlError> {
        let mut out: Vec<ReplyLine> = Vec::new();
        let mut code = 0u16;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|source| ControlError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(ControlError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "BIRD closed the connection mid-reply",
                    ),
                });
            }
            let line = line.trim_end_matches(['\n', '\r']);
            match parse_reply_line(line) {
                Some(Parsed::Spontaneous) => continue,
                Some(Parsed::Continuation(text)) => out.push(ReplyLine {
                    code,
                    text: text.to_owned(),
                }),
                Some(Parsed::Coded {
                    code: c,
                    last,
                    text,
                }) => {
                    code = c;
                    out.push(ReplyLine {
                        code,
                        text: text.to_owned(),
                    });
                    if last {
                        if code >= 8000 {
                            return Err(ControlError::Refused {
                                command: command.to_owned(),
                                code,
                                text: text.to_owned(),
                            });
                        }
                        return Ok(out);
                    }
                }
                None => {
                    return Err(ControlError::Protocol {
                        path: self.path.clone(),
                        line: line.to_owned(),
                    })
                }
            }
        }
    }

    /// `configure`: BIRD re-reads the config file it was started with. Returns BIRD's
    /// message (`Reconfigured`, `Reconfiguration in progress`, ...).
    ///
    /// # Errors
    /// [`ControlError::Refused`] with BIRD's parse error (code 8002) when the file is
    /// invalid; BIRD then keeps running the previous configuration.
    pub fn configure(&mut self) -> Result<String, ControlError> {
        let reply = self.command("configure")?;
        Ok(reply
            .iter()
            .rev()
            .find(|l| !l.text.trim().is_empty())
            .map(|l| l.text.trim().to_owned())
            .unwrap_or_default())
    }

    /// `show protocols all`, parsed.
    ///
    /// # Errors
    /// Errors of [`Control::command`].
    pub fn protocols(&mut self) -> Result<Vec<Protocol>, ControlError> {
        Ok(parse_protocols(&self.command("show protocols all")?))
    }

    /// `show bfd sessions`, parsed (empty when no BFD protocol exists).
    ///
    /// # Errors
    /// Errors of [`Control::command`] other than "no BFD protocol".
    pub fn bfd_sessions(&mut self) -> Result<Vec<BfdSession>, ControlError> {
        match self.command("show bfd sessions") {
            Ok(r) => Ok(parse_bfd_sessions(&r)),
            // 8003 "No protocols match" / 9001 when there is no BFD protocol.
            Err(ControlError::Refused { code, .. }) if code == 8003 || code == 9001 => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

enum Parsed<'a> {
    Coded {
        code: u16,
        last: bool,
        text: &'a str,
    },
    Continuation(&'a str),
    Spontaneous,
}

fn parse_reply_line(line: &str) -> Option<Parsed<'_>> {
    if let Some(rest) = line.strip_prefix(' ') {
        return Some(Parsed::Continuation(rest));
    }
    if line.starts_with('+') {
        return Some(Parsed::Spontaneous);
    }
    let b = line.as_bytes();
    if b.len() < 4 || !b[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = line[..4].parse().ok()?;
    match b.get(4) {
        None => Some(Parsed::Coded {
            code,
            last: true,
            text: "",
        }),
        Some(b' ') => Some(Parsed::Coded {
            code,
            last: true,
            text: &line[5..],
        }),
        Some(b'-') => Some(Parsed::Coded {
            code,
            last: false,
            text: &line[5..],
        }),
        _ => None,
    }
}

/// A BGP session's finite-state-machine state (RFC 4271), as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BgpState {
    /// Not trying (disabled, or waiting after an error).
    Idle,
    /// Opening the TCP connection.
    Connect,
    /// Waiting for the peer to connect, or to retry.
    Active,
    /// OPEN sent.
    OpenSent,
    /// OPEN received, waiting for KEEPALIVE.
    OpenConfirm,
    /// Up: routes are exchanged.
    Established,
    /// The protocol is down (not BGP FSM state); e.g. shut down or not yet started.
    Down,
    /// Something this version does not know.
    Other(String),
}

impl BgpState {
    /// Parses BIRD's spelling.
    pub fn parse(s: &str) -> BgpState {
        match s.trim() {
            "Idle" => BgpState::Idle,
            "Connect" => BgpState::Connect,
            "Active" => BgpState::Active,
            "OpenSent" => BgpState::OpenSent,
            "OpenConfirm" => BgpState::OpenConfirm,
            "Established" => BgpState::Established,
            "Down" | "" => BgpState::Down,
            o => BgpState::Other(o.to_owned()),
        }
    }
}

/// One protocol of `show protocols all` (every kind; BGP fields are `None` for others).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Protocol {
    /// Protocol name.
    pub name: String,
    /// Kind: `BGP`, `Static`, `BFD`, `Device`, ...
    pub proto: String,
    /// BIRD's protocol state: `up`, `start`, `down`, ...
    pub state: String,
    /// When it entered that state, as BIRD prints it (`timeformat protocol`).
    pub since: String,
    /// The Info column (for BGP: the session state, then the last error).
    pub info: String,
    /// `BGP state:`.
    pub bgp_state: Option<String>,
    /// `Neighbor address:`.
    pub neighbor_address: Option<IpAddr>,
    /// `Neighbor AS:`.
    pub neighbor_as: Option<u32>,
    /// `Last error:` (e.g. `BGP Error: Bad peer AS`, `Received: Bad peer AS`).
    pub last_error: Option<String>,
    /// Sum over channels of `Routes: N imported`.
    pub routes_imported: u64,
    /// Sum over channels of `Routes: ... M exported`.
    pub routes_exported: u64,
}

/// Parses the reply to `show protocols all`.
pub fn parse_protocols(reply: &[ReplyLine]) -> Vec<Protocol> {
    let mut out: Vec<Protocol> = Vec::new();
    for l in reply {
        match l.code {
            1002 => out.push(parse_protocol_row(&l.text)),
            1006 => {
                let Some(p) = out.last_mut() else { continue };
                let t = l.text.trim();
                let Some((key, value)) = t.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match key.trim() {
                    "BGP state" => p.bgp_state = Some(value.to_owned()),
                    "Neighbor address" => {
                        // "10.98.0.1" or "fe80::1%eth0"
                        let a = value.split(['%', ' ']).next().unwrap_or("");
                        p.neighbor_address = a.parse().ok();
                    }
                    "Neighbor AS" => p.neighbor_as = value.parse().ok(),
                    "Last error" => p.last_error = Some(value.to_owned()),
                    "Routes" => {
                        for part in value.split(',') {
                            let mut w = part.split_whitespace();
                            let (Some(n), Some(what)) = (w.next(), w.next()) else {
                                continue;
                            };
                            let n: u64 = n.parse().unwrap_or(0);
                            match what {
                                "imported" => p.routes_imported += n,
                                "exported" => p.routes_exported += n,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

/// Splits `n` whitespace-separated tokens off `s`; returns them and the rest (trimmed).
fn split_tokens(s: &str, n: usize) -> (Vec<&str>, &str) {
    let mut rest = s.trim_start();
    let mut toks = Vec::with_capacity(n);
    for _ in 0..n {
        if rest.is_empty() {
            break;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        toks.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (toks, rest.trim_end())
}

fn parse_protocol_row(text: &str) -> Protocol {
    // Name Proto Table State Since Info; Since is one token ("%s", "12:34:56") or a date and a
    // time ("2024-05-01 12:34:56", iso formats).
    let (t, mut rest) = split_tokens(text, 5);
    let get = |i: usize| t.get(i).copied().unwrap_or("").to_owned();
    let mut since = get(4);
    let looks_like_date = since.len() == 10 && since.as_bytes().get(4) == Some(&b'-');
    if looks_like_date {
        let (more, r) = split_tokens(rest, 1);
        if let Some(time) = more.first().filter(|x| x.contains(':')) {
            since = format!("{since} {time}");
            rest = r;
        }
    }
    Protocol {
        name: get(0),
        proto: get(1),
        state: get(3),
        since,
        info: rest.to_owned(),
        ..Protocol::default()
    }
}

/// One row of `show bfd sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdSession {
    /// The neighbour.
    pub address: IpAddr,
    /// The interface, when BIRD names one.
    pub interface: Option<String>,
    /// `Up`, `Down`, `Init` or `AdminDown`.
    pub state: String,
}

/// Parses the reply to `show bfd sessions`: rows whose first column is an address.
pub fn parse_bfd_sessions(reply: &[ReplyLine]) -> Vec<BfdSession> {
    const STATES: [&str; 4] = ["Up", "Down", "Init", "AdminDown"];
    let mut out = Vec::new();
    for l in reply {
        let toks: Vec<&str> = l.text.split_whitespace().collect();
        let Some(address) = toks.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        let Some(pos) = toks.iter().position(|t| STATES.contains(t)) else {
            continue;
        };
        out.push(BfdSession {
            address,
            interface: (pos == 2).then(|| toks[1].to_owned()),
            state: toks[pos].to_owned(),
        });
    }
    out
}

#[cfg(test)]
mod tests;
