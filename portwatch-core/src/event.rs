//! Decoding the ring buffer's raw records into checked, typed events.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::SystemTime,
};

use portwatch_common as common;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    clock::Clock,
    request::{Caller, Errno, Family, HolderRecord, Opts, Proto, Request, Syscall},
};

/// A record the loader cannot trust.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than `portwatch_common::Event`.
    #[error("record of {0} bytes is too short")]
    Short(usize),
    /// A code field holds a value no program writes.
    #[error("unknown {field} {value}")]
    Unknown {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u32,
    },
}

/// Which hook saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Syscall tracepoints.
    Tracepoint,
    /// fexit on the inet functions.
    Fexit,
    /// An io_uring IORING_OP_BIND / IORING_OP_LISTEN request (the
    /// `io_uring_complete` tracepoint; the tracepoint backend only).
    #[serde(rename = "io_uring")]
    IoUring,
}

impl TryFrom<u8> for Source {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            common::SOURCE_TRACEPOINT => Ok(Self::Tracepoint),
            common::SOURCE_FEXIT => Ok(Self::Fexit),
            common::SOURCE_IO_URING => Ok(Self::IoUring),
            _ => Err(DecodeError::Unknown {
                field: "source",
                value: v.into(),
            }),
        }
    }
}

/// One captured call, checked and decoded: the event part of the NDJSON
/// schema (`crate::output::json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time of the return.
    #[serde(with = "crate::time::rfc3339")]
    pub ts: SystemTime,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Thread name (untrusted: any bytes a process chose, decoded lossily).
    pub comm: String,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// bind or listen.
    pub syscall: Syscall,
    /// The error, `None` for a success.
    pub errno: Option<Errno>,
    /// The raw return value.
    pub ret: i32,
    /// Transport protocol.
    pub proto: Proto,
    /// Address family.
    pub family: Family,
    /// Requested (bind) or bound (listen) address.
    pub addr: IpAddr,
    /// Requested (bind) or bound (listen) port.
    pub port: u16,
    /// Network namespace inode.
    pub netns: u32,
    /// The fd argument, when the hook sees it.
    pub fd: Option<i32>,
    /// SO_BINDTODEVICE interface index, when set.
    pub ifindex: Option<u32>,
    /// Socket options, `None` when the socket could not be read.
    pub opts: Option<Opts>,
    /// Identical failures folded into this one since the previous event of
    /// the same process, call, errno, requested family, address and port.
    pub folded: u64,
    /// Hook that saw it.
    pub source: Source,
    /// The port's holder as the kernel recorded it (enrichment reports it
    /// under `holders`).
    #[serde(skip)]
    pub holder_record: Option<HolderRecord>,
}

impl Event {
    /// The request this call made, for holder lookup and diagnosis.
    pub fn request(&self) -> Request {
        Request {
            netns: self.netns,
            proto: self.proto,
            family: self.family,
            addr: self.addr,
            port: self.port,
            opts: self.opts,
            syscall: self.syscall,
            errno: self.errno,
            caller: Some(Caller {
                pid: self.pid,
                tid: self.tid,
                uid: self.uid,
                comm: self.comm.clone(),
            }),
            holder_record: self.holder_record.clone(),
            device: self.ifindex.unwrap_or(0),
        }
    }
}

impl TryFrom<u8> for Syscall {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            common::SYSCALL_BIND => Ok(Self::Bind),
            common::SYSCALL_LISTEN => Ok(Self::Listen),
            _ => Err(DecodeError::Unknown {
                field: "syscall",
                value: v.into(),
            }),
        }
    }
}

impl TryFrom<u16> for Family {
    type Error = DecodeError;
    fn try_from(v: u16) -> Result<Self, DecodeError> {
        match v {
            common::AF_INET => Ok(Self::Ipv4),
            common::AF_INET6 => Ok(Self::Ipv6),
            _ => Err(DecodeError::Unknown {
                field: "family",
                value: v.into(),
            }),
        }
    }
}

/// Copies `portwatch_common::Event` out of a ring buffer record (which
/// need not be aligned).
fn raw(b: &[u8]) -> Result<common::Event, DecodeError> {
    let bytes = b
        .get(..size_of::<common::Event>())
        .ok_or(DecodeError::Short(b.len()))?;
    Ok(bytemuck::pod_read_unaligned(bytes))
}

fn ip(family: Family, raw: [u8; 16]) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(raw)),
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

impl Event {
    /// Decodes one ring buffer record.
    pub fn decode(bytes: &[u8], clock: Clock) -> Result<Self, DecodeError> {
        let r = raw(bytes)?;
        let family = Family::try_from(r.family)?;
        let holder_record = holder_record(&r.holder)?;
        Ok(Self {
            ts: clock.wall(r.ts_boot_ns),
            pid: r.pid,
            tid: r.tid,
            ppid: r.ppid,
            uid: r.uid,
            gid: r.gid,
            comm: comm(&r.comm),
            cgroup_id: r.cgroup_id,
            syscall: Syscall::try_from(r.syscall)?,
            errno: (r.ret != 0).then(|| Errno(r.ret.wrapping_neg())),
            ret: r.ret,
            proto: Proto::from(r.protocol),
            family,
            addr: ip(family, r.addr),
            port: r.port,
            netns: r.netns,
            fd: (r.fd >= 0).then_some(r.fd),
            ifindex: u32::try_from(r.bound_dev_if).ok().filter(|&i| i != 0),
            opts: Opts::from_bits(r.opts),
            folded: r.folded,
            source: Source::try_from(r.source)?,
            holder_record,
        })
    }
}

/// The kernel's holder record of an event, checked; `None` when the kernel
/// had no record of the port.
fn holder_record(h: &common::HolderRecord) -> Result<Option<HolderRecord>, DecodeError> {
    match h.how {
        common::HOW_NONE => return Ok(None),
        common::HOW_BIND | common::HOW_LISTEN => {}
        v => {
            return Err(DecodeError::Unknown {
                field: "holder.how",
                value: v.into(),
            })
        }
    }
    let family = Family::try_from(h.family)?;
    let state = (h.state != 0).then_some(h.state);
    Ok(Some(HolderRecord {
        pid: h.pid,
        uid: h.uid,
        comm: comm(&h.comm),
        family,
        addr: ip(family, h.addr),
        running_ns: h.running_ns,
        state,
        opts: state.and_then(|_| Opts::from_bits(h.opts)),
        listened: h.how == common::HOW_LISTEN,
        device: state.map(|_| u32::try_from(h.bound_dev_if).unwrap_or(0)),
    }))
}

/// Events as the eBPF side writes them, for tests (here and in `portwatch`,
/// which enables the `fixtures` feature for its tests).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures {
    use super::common;

    /// The bytes the eBPF side would write for `ev`.
    pub fn encode(ev: &common::Event) -> Vec<u8> {
        bytemuck::bytes_of(ev).to_vec()
    }

    pub fn sample() -> common::Event {
        let mut comm = [0; 16];
        comm[..5].copy_from_slice(b"nginx");
        common::Event {
            ts_boot_ns: 1_000_000_000,
            cgroup_id: 77,
            folded: 3,
            pid: 4242,
            tid: 4243,
            ppid: 1,
            uid: 33,
            gid: 34,
            netns: 4026531840,
            ret: -98,
            fd: 6,
            bound_dev_if: 0,
            port: 8080,
            family: common::AF_INET,
            protocol: 6,
            sock_type: 1,
            syscall: common::SYSCALL_BIND,
            opts: common::OPT_VALID | common::OPT_REUSEADDR,
            source: common::SOURCE_TRACEPOINT,
            _pad: 0,
            comm,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            holder: common::HolderRecord {
                running_ns: 500_000_000,
                pid: 100,
                uid: 33,
                comm: *b"old\0\0\0\0\0\0\0\0\0\0\0\0\0",
                addr: [0; 16],
                family: common::AF_INET,
                how: common::HOW_LISTEN,
                state: 10,
                opts: common::OPT_VALID | common::OPT_REUSEPORT,
                _pad: [0; 3],
                bound_dev_if: 0,
                _pad2: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        fixtures::{encode, sample},
        *,
    };

    fn clock() -> Clock {
        Clock::fixed(Duration::from_secs(1_800_000_000))
    }

    #[test]
    fn decodes_every_field() {
        let ev = Event::decode(&encode(&sample()), clock()).unwrap();
        assert_eq!(ev.pid, 4242);
        assert_eq!(ev.tid, 4243);
        assert_eq!(ev.comm, "nginx");
        assert_eq!(ev.errno, Some(Errno(98)));
        assert_eq!(ev.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.port, 8080);
        assert_eq!(ev.proto, Proto::Tcp);
        assert_eq!(ev.fd, Some(6));
        assert_eq!(ev.ifindex, None);
        assert_eq!(ev.folded, 3);
        let opts = ev.opts.unwrap();
        assert!(opts.reuseaddr && !opts.reuseport && !opts.v6only);
        assert_eq!(
            ev.ts,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_001)
        );
    }

    #[test]
    fn decodes_the_recorded_holder() {
        let ev = Event::decode(&encode(&sample()), clock()).unwrap();
        let h = ev.holder_record.unwrap();
        assert_eq!((h.pid, h.uid, h.comm.as_str()), (100, 33, "old"));
        assert_eq!(h.state, Some(10));
        assert_eq!(h.addr.to_string(), "0.0.0.0");
        assert!(h.opts.unwrap().reuseport);
        assert_eq!(h.running_ns, 500_000_000);
        // A socket closed since it was recorded: no state, no options.
        let mut raw = sample();
        raw.holder.state = 0;
        let h = Event::decode(&encode(&raw), clock())
            .unwrap()
            .holder_record
            .unwrap();
        assert_eq!((h.state, h.opts), (None, None));
        // No record at all.
        raw.holder = common::HolderRecord::default();
        assert_eq!(
            Event::decode(&encode(&raw), clock()).unwrap().holder_record,
            None
        );
        raw.holder.how = 9;
        assert!(Event::decode(&encode(&raw), clock()).is_err());
    }

    #[test]
    fn decodes_ipv6() {
        let mut raw = sample();
        raw.family = common::AF_INET6;
        raw.addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let ev = Event::decode(&encode(&raw), clock()).unwrap();
        assert_eq!(ev.addr.to_string(), "2001:db8::1");
        assert_eq!(ev.family, Family::Ipv6);
    }

    #[test]
    fn rejects_unknown_codes_and_short_records() {
        let mut raw = sample();
        raw.syscall = 9;
        assert_eq!(
            Event::decode(&encode(&raw), clock()),
            Err(DecodeError::Unknown {
                field: "syscall",
                value: 9
            })
        );
        let mut raw = sample();
        raw.family = 1;
        assert!(Event::decode(&encode(&raw), clock()).is_err());
        let mut raw = sample();
        raw.source = 0;
        assert!(Event::decode(&encode(&raw), clock()).is_err());
        assert_eq!(
            Event::decode(&[0; 10], clock()),
            Err(DecodeError::Short(10))
        );
    }

    #[test]
    fn unreadable_socket_has_no_opts() {
        let mut raw = sample();
        raw.opts = common::OPT_REUSEADDR;
        assert_eq!(Event::decode(&encode(&raw), clock()).unwrap().opts, None);
    }

    #[test]
    fn comm_with_invalid_utf8_is_decoded_lossily() {
        let mut raw = sample();
        raw.comm = [0; 16];
        raw.comm[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        assert_eq!(
            Event::decode(&encode(&raw), clock()).unwrap().comm,
            "a\u{fffd}b"
        );
    }
}
