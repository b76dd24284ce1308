//! Truncation sweeps shared by the program tests: every shorter version of a frame, and the
//! test run of each, which the kernel refuses for frames below its minimum.
//!
//! This module only builds inputs and runs them; what every cut must do is stated by each test
//! binary in its own fixture type, so a sweep asserts exact outcomes like the fixture tables.

use baton_ebpf::{AttachMode, DataplaneError, TestRunOutput};

use super::frames::fix_ipv4_checksum;

/// Where the IPv4 header starts in the swept frames.
const IPV4_OFFSET: usize = 14;

/// How a frame is made shorter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The frame ends early while its headers still claim the whole packet (a short read).
    Frame,
    /// The IPv4 packet ends early and says so: its total length (and header checksum) is
    /// rewritten, and the bytes cut off stay behind it as Ethernet padding. A program that
    /// read past the total length would find the original bytes (quoted ports, headers) there
    /// and could act on them: every decision must come from the packet alone.
    Packet,
}

/// One cut of a frame.
#[derive(Clone, Debug)]
pub struct Truncated {
    /// `Cut::Frame`: the frame's length; `Cut::Packet`: the IPv4 total length.
    pub len: usize,
    pub frame: Vec<u8>,
}

/// A sweep's fixtures: one per cut of `frame` (shortest first), then the whole frame. `make`
/// builds a fixture from its description, frame and expected outcome; `cut_to` gives the
/// outcome of the cut to `len` bytes ([`Truncated::len`]).
pub fn sweep<E, F>(
    description: &str,
    frame: &[u8],
    cut: Cut,
    whole: E,
    cut_to: &dyn Fn(usize) -> E,
    make: impl Fn(String, Vec<u8>, E) -> F,
) -> Vec<F> {
    let mut out: Vec<F> =
        cuts(frame, cut).into_iter().map(|t| make(format!("{description}: {cut:?} cut to {} bytes", t.len), t.frame, cut_to(t.len))).collect();
    assert!(out.len() > 20, "{description}: only {} cuts", out.len());
    out.push(make(format!("{description}: whole"), frame.to_vec(), whole));
    out
}

/// Every cut of `frame` (Ethernet + IPv4) that is shorter than it, shortest first.
/// `Cut::Frame`: every prefix, 0 bytes to one byte short. `Cut::Packet`: every IPv4 total
/// length from the IPv4 header's own length to one byte short of the packet's.
pub fn cuts(frame: &[u8], cut: Cut) -> Vec<Truncated> {
    match cut {
        Cut::Frame => (0..frame.len())
            .map(|len| Truncated {
                len,
                frame: frame[..len].to_vec(),
            })
            .collect(),
        Cut::Packet => {
            let ihl_len = usize::from(frame[IPV4_OFFSET] & 0x0f) * 4;
            let tot_len = usize::from(u16::from_be_bytes([
                frame[IPV4_OFFSET + 2],
                frame[IPV4_OFFSET + 3],
            ]));
            (ihl_len..tot_len)
                .map(|len| {
                    let mut f = frame.to_vec();
                    f[IPV4_OFFSET + 2..IPV4_OFFSET + 4]
                        .copy_from_slice(&(len as u16).to_be_bytes());
                    fix_ipv4_checksum(&mut f, IPV4_OFFSET);
                    Truncated { len, frame: f }
                })
                .collect()
        }
    }
}

/// The shortest frame BPF_PROG_TEST_RUN runs: an Ethernet header for XDP; for tc an
/// Ethernet and an IPv4 header (for an IPv4 EtherType, which every swept frame has).
pub fn kernel_minimum(mode: AttachMode) -> usize {
    match mode {
        AttachMode::Tc => 14 + 20,
        AttachMode::Xdp => 14,
    }
}

/// Test-runs `input` with `run`; `None` when the kernel refused it, which it must do
/// (EINVAL) exactly for frames shorter than [`kernel_minimum`]. Panics on any other outcome.
pub fn run_or_refused(
    ctx: &str,
    mode: AttachMode,
    input: &[u8],
    run: impl FnOnce(&[u8]) -> Result<TestRunOutput, DataplaneError>,
) -> Option<TestRunOutput> {
    let refused = input.len() < kernel_minimum(mode);
    match run(input) {
        Err(DataplaneError::TestRun { source, .. }) if refused => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL), "{ctx}: refusal");
            None
        }
        Err(e) => panic!("{ctx}: {e}"),
        Ok(out) => {
            assert!(!refused, "{ctx}: the kernel ran a frame it should refuse");
            Some(out)
        }
    }
}
