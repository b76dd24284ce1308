//! Running one frame through a loaded program with `BPF_PROG_TEST_RUN`,
//! without touching any interface (aya 0.13 has no wrapper for it).
//!
//! The kernel runs the program on a private copy of the frame: redirects and
//! XDP_TX are reported as verdicts, never carried out. Maps are the real,
//! shared ones, so a test run updates flow observations and counters exactly
//! like a real packet. A run can also be repeated in the kernel and timed
//! (the benchmarks' program cost). This module must never be used on a hot
//! path.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_PROG_TEST_RUN` command of bpf(2).
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Room for the output frame beyond the input: the largest header the
/// programs add (28 bytes) with a wide margin.
const OUTPUT_HEADROOM: usize = 256;

/// `TC_ACT_OK`.
pub const TC_ACT_OK: u32 = 0;
/// `TC_ACT_SHOT`.
pub const TC_ACT_SHOT: u32 = 2;
/// `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: u32 = 7;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// What a program decided, independent of the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Up the stack (`TC_ACT_OK`, `XDP_PASS`).
    Pass,
    /// Dropped (`TC_ACT_SHOT`, `XDP_DROP`).
    Drop,
    /// Sent out of an interface (`TC_ACT_REDIRECT`, `XDP_REDIRECT`).
    Redirect,
    /// Sent back out of the receiving interface (`XDP_TX`).
    Tx,
    /// Any other return value.
    Other(u32),
}

impl Verdict {
    /// Interprets a tc program's return value.
    pub fn from_tc(retval: u32) -> Self {
        match retval {
            TC_ACT_OK => Verdict::Pass,
            TC_ACT_SHOT => Verdict::Drop,
            TC_ACT_REDIRECT => Verdict::Redirect,
            other => Verdict::Other(other),
        }
    }

    /// Interprets an XDP program's return value.
    pub fn from_xdp(retval: u32) -> Self {
        match retval {
            XDP_PASS => Verdict::Pass,
            XDP_DROP => Verdict::Drop,
            XDP_REDIRECT => Verdict::Redirect,
            XDP_TX => Verdict::Tx,
            other => Verdict::Other(other),
        }
    }
}

/// The result of one test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value, interpreted for its hook.
    pub verdict: Verdict,
    /// The raw return value.
    pub retval: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
}

/// The program hook, which decides the context layout.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Hook {
    Tc,
    Xdp,
}

/// The BPF_PROG_TEST_RUN member of union bpf_attr.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);

/// `struct __sk_buff` as 48 words; only the interface indexes are set.
const SKB_CTX_WORDS: usize = 48;
/// Word index of `__sk_buff.ingress_ifindex`.
const SKB_INGRESS_IFINDEX: usize = 9;
/// Word index of `__sk_buff.ifindex`.
const SKB_IFINDEX: usize = 10;

/// `struct xdp_md`.
#[repr(C)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs `frame` once through the program `fd` as if it arrived on
/// `ifindex` (0: no device context; tc then uses the loopback device).
pub(crate) fn run(
    fd: BorrowedFd<'_>,
    hook: Hook,
    frame: &[u8],
    ifindex: u32,
) -> io::Result<(u32, Vec<u8>)> {
    run_repeated(fd, hook, frame, ifindex, 1).map(|timed| (timed.retval, timed.data))
}

/// What [`run_repeated`] reports.
#[derive(Debug)]
pub(crate) struct TimedRun {
    /// The program's return value of the last run.
    pub(crate) retval: u32,
    /// The frame as the last run left it.
    pub(crate) data: Vec<u8>,
    /// The kernel's mean time per run in nanoseconds (`duration` of
    /// BPF_PROG_TEST_RUN: the whole loop's time divided by `repeat`).
    pub(crate) duration_ns: u32,
}

/// Runs `frame` through the program `fd` `repeat` times in one
/// BPF_PROG_TEST_RUN (0 counts as 1) as if it arrived on `ifindex`.
///
/// The kernel keeps the context between runs: a program that rewrites the
/// frame (an encapsulation) sees its own output from the second run on. Only
/// programs that leave the frame as it is can be timed with `repeat > 1`.
pub(crate) fn run_repeated(
    fd: BorrowedFd<'_>,
    hook: Hook,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
) -> io::Result<TimedRun> {
    let mut out = vec![0u8; frame.len() + OUTPUT_HEADROOM];
    let size_in =
        u32::try_from(frame.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut skb_ctx = [0u32; SKB_CTX_WORDS];
    skb_ctx[SKB_INGRESS_IFINDEX] = ifindex;
    skb_ctx[SKB_IFINDEX] = ifindex;
    let xdp_ctx = XdpMd {
        data: 0,
        data_end: size_in,
        data_meta: 0,
        ingress_ifindex: ifindex,
        rx_queue_index: 0,
        egress_ifindex: 0,
    };

    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        data_size_in: size_in,
        data_size_out: u32::try_from(out.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..TestRunAttr::default()
    };
    if ifindex != 0 {
        match hook {
            Hook::Tc => {
                attr.ctx_in = skb_ctx.as_ptr() as u64;
                attr.ctx_size_in = std::mem::size_of_val(&skb_ctx) as u32;
            }
            Hook::Xdp => {
                attr.ctx_in = &xdp_ctx as *const XdpMd as u64;
                attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
            }
        }
    }

    // SAFETY: attr points at valid buffers (frame, out, the context) that
    // outlive the call; the kernel writes at most data_size_out bytes to out.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (attr.data_size_out as usize).min(out.len());
    out.truncate(len);
    Ok(TimedRun {
        retval: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}
