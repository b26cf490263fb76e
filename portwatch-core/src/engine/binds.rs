//! Would a bind succeed now, per option: the kernel's rules over the
//! sockets sock_diag listed and the holders' own options where they are
//! known ([`crate::bindcheck`]); a trial bind instead, where one is asked
//! for and safe.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    bindcheck::{self, Known, OnDevice, Rule, Variant},
    diagnose::Verdict,
    holders::{overlaps, sockdiag::DiagSocket, sockopts::OptionsFrom, State, TrialFailed},
    request::{Binding, Errno, Family, Proto},
};

/// Would the bind succeed?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// It would succeed now.
    Ok,
    /// It would fail (`errno` says how).
    Fails,
    /// Only if the holder set the same option, which cannot be seen.
    Unknown,
}

/// How an answer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checked {
    /// A real bind() of a fresh socket, closed at once: the kernel's answer.
    TrialBind,
    /// The kernel's conflict rules applied to the sockets sock_diag listed,
    /// with the holders' own options where they are known
    /// (`BindVerdict::options_from`).
    Rules,
}

/// The answer for one socket option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindVerdict {
    /// plain, reuseaddr or reuseport.
    pub option: Variant,
    /// ok, fails or unknown.
    pub result: Answer,
    /// How it fails (EADDRINUSE, EADDRNOTAVAIL...), when it does.
    pub errno: Option<Errno>,
    /// trial_bind or rules.
    pub checked: Checked,
    /// The uid the new socket was taken to belong to (SO_REUSEPORT only
    /// shares a port between sockets of one uid).
    pub uid: u32,
    /// Why the rules answered instead of a trial, or what the answer hangs on.
    pub note: Option<String>,
    /// Where the holders' options that settled the rules' answer came
    /// from (their sockets, or the tracer's record), when the answer hung
    /// on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options_from: Option<OptionsFrom>,
    /// Reason, diagnosis and fix when it does not succeed, as `watch` gives them.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// The listed sockets and what is known of each one's options.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen<'a> {
    /// Every socket on the port.
    pub sockets: &'a [DiagSocket],
    /// `known[i]`: what is known of `sockets[i]`'s options, and from where.
    pub known: &'a [(Known, Option<OptionsFrom>)],
}

impl Seen<'_> {
    /// The known options alone, in the sockets' order.
    fn options(&self) -> Vec<Known> {
        self.known.iter().map(|(k, _)| *k).collect()
    }

    /// Where the known options came from: the socket's own, if any
    /// socket's were read, else the record's.
    fn from(&self) -> Option<OptionsFrom> {
        let from = |f| self.known.iter().any(|(_, s)| *s == Some(f));
        [OptionsFrom::Socket, OptionsFrom::Record]
            .into_iter()
            .find(|&f| from(f))
    }
}

/// The answer for each option, plain, SO_REUSEADDR, SO_REUSEPORT, without
/// verdicts yet, given every socket on the port (those the device rule
/// keeps apart too: `on`). `trial`: trial binds may be made; `me`: our
/// euid; `asked_uid`: the uid SO_REUSEPORT's answer is for, if not the
/// holders'.
pub(super) fn answers(
    b: &Binding,
    on: OnDevice<'_>,
    seen: Seen<'_>,
    trial: bool,
    me: u32,
    asked_uid: Option<u32>,
) -> Vec<BindVerdict> {
    let owner = asked_uid.unwrap_or_else(|| reuseport_uid(b, on, seen.sockets, me));
    Variant::ALL
        .into_iter()
        .map(|v| {
            let uid = if v == Variant::Reuseport { owner } else { me };
            answer(b, on, v, (uid, me), seen, trial)
        })
        .collect()
}

/// The uid a SO_REUSEPORT bind is tried as: SO_REUSEPORT shares only
/// within one uid, so the uid of the live sockets in the way when they
/// have one, else `me`.
pub(super) fn reuseport_uid(b: &Binding, on: OnDevice<'_>, sockets: &[DiagSocket], me: u32) -> u32 {
    let owners: BTreeSet<u32> = sockets
        .iter()
        .filter(|s| {
            State::from_kernel(b.proto, s.state) != State::TimeWait
                && on.apart(b.proto, s).is_none()
                && Family::try_from(u16::from(s.family)).is_ok_and(|f| {
                    overlaps(
                        (Family::of(b.addr), b.addr, b.opts.v6only),
                        (f, s.local.ip(), s.v6only),
                    )
                    .is_some()
                })
        })
        .map(|s| s.uid)
        .collect();
    match owners.len() {
        1 => owners.first().copied().unwrap_or(me),
        _ => me,
    }
}

/// The answer for `variant`, made as `uid` (`me`: our euid): the trial's
/// when one was made, else the rules'.
pub(super) fn answer(
    b: &Binding,
    on: OnDevice<'_>,
    variant: Variant,
    (uid, me): (u32, u32),
    seen: Seen<'_>,
    trial: bool,
) -> BindVerdict {
    let sockets = seen.sockets;
    let unsettled = bindcheck::by_rules(b, variant, uid, sockets, &[], on);
    let rule = bindcheck::by_rules(b, variant, uid, sockets, &seen.options(), on);
    // The holders' options turned "it depends" into an answer.
    let settled = matches!(unsettled, Rule::IfHolderSet(_)) && rule != unsettled;
    // A SO_REUSEPORT trial that succeeds beside a socket kept apart by its
    // device or VRF would leave the kernel's fast-reuse state of the port
    // behind (`inet_csk_update_fastreuse` marks the bucket for the trial's
    // uid and address, and it stays when the trial closes), letting later
    // SO_REUSEPORT binds of that uid skip the conflict check against
    // sockets that never set SO_REUSEPORT.
    let beside_apart =
        variant == Variant::Reuseport && sockets.iter().any(|s| on.apart(b.proto, s).is_some());
    let tried = if beside_apart && trial {
        Err(Some(BESIDE_APART.to_owned()))
    } else {
        try_bind(b, variant, unsettled, uid, me, trial)
    };
    let (result, errno, checked, note) = match tried {
        Ok(None) => (Answer::Ok, None, Checked::TrialBind, None),
        Ok(Some(e)) => (Answer::Fails, Some(e), Checked::TrialBind, None),
        Err(why) => {
            let (result, errno, note) = from_rules(rule, uid, why);
            (result, errno, Checked::Rules, note)
        }
    };
    let options_from = (checked == Checked::Rules && settled)
        .then(|| seen.from())
        .flatten();
    let note = match (options_from, unsettled) {
        (Some(from), Rule::IfHolderSet(o)) => Some(settled_note(o, rule, from, note)),
        _ => note,
    };
    BindVerdict {
        option: variant,
        result,
        errno,
        checked,
        uid,
        note,
        options_from,
        verdict: None,
    }
}

/// What settled an answer that hung on the holder setting `option`.
fn settled_note(option: &str, rule: Rule, from: OptionsFrom, why: Option<String>) -> String {
    let whence = match from {
        OptionsFrom::Socket => "read from its socket",
        OptionsFrom::Record => "the tracer's record of its bind",
    };
    let had = match rule {
        Rule::Free => "set",
        _ => "did not set",
    };
    let said = format!("the holder {had} {option} ({whence})");
    match why {
        Some(why) => format!("{said}; {why}"),
        None => said,
    }
}

/// Why no SO_REUSEPORT trial is made beside a socket kept apart.
const BESIDE_APART: &str = "no trial bind: beside a socket on another device or VRF, a SO_REUSEPORT trial would change how the kernel checks later SO_REUSEPORT binds of the port";

/// A trial bind, when one may be made: Err(why not), None when trials
/// are off altogether (the default needs no note). `rule`: the rules'
/// answer without the holders' options, which says whether the trial
/// could share the port with them.
fn try_bind(
    b: &Binding,
    variant: Variant,
    rule: Rule,
    uid: u32,
    me: u32,
    trial: bool,
) -> Result<Option<Errno>, Option<String>> {
    // A UDP socket that shares the port receives datagrams from the moment
    // it is bound: never risk taking one from the holder.
    let shares_udp = b.proto == Proto::Udp && matches!(rule, Rule::IfHolderSet(_));
    if !trial {
        Err(None)
    } else if shares_udp {
        Err(Some(
            "no trial bind: a UDP socket sharing the port would receive its datagrams".into(),
        ))
    } else {
        bindcheck::trial(b, variant, (uid != me).then_some(uid))
            .map_err(|e| Some(format!("no trial bind ({e})")))
    }
}

/// The rules' answer, errno and note (`why` no trial was made, if said).
fn from_rules(
    rule: Rule,
    uid: u32,
    why: Option<String>,
) -> (Answer, Option<Errno>, Option<String>) {
    match rule {
        Rule::Free => (Answer::Ok, None, why),
        Rule::Taken => (Answer::Fails, Some(Errno::ADDRINUSE), why),
        Rule::IfHolderSet(o) => {
            let hangs = format!(
                "only if the holder set {o} too{} (sock_diag does not show it)",
                if o == "SO_REUSEPORT" {
                    format!(" and the new socket is uid {uid}'s")
                } else {
                    String::new()
                }
            );
            let note = match why {
                Some(why) => format!("{hangs}; {why}"),
                None => hangs,
            };
            (Answer::Unknown, None, Some(note))
        }
    }
}

/// Options a bind has just been shown to fail with, by a trial or by the
/// rules (whatever the holder's options, or with them known): no fix may
/// recommend them.
pub(super) fn trial_failed(binds: &[BindVerdict]) -> TrialFailed {
    let failed = |v: Variant| {
        binds
            .iter()
            .any(|b| b.option == v && b.result == Answer::Fails)
    };
    TrialFailed {
        reuseaddr: failed(Variant::Reuseaddr),
        reuseport: failed(Variant::Reuseport),
    }
}
