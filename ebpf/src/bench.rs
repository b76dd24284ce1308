//! Entry points for the benchmarks (`cargo xtask bench bpf`) and the labs:
//! timing a loaded program with `BPF_PROG_TEST_RUN` repeated in the kernel,
//! the empty programs of `c/empty.bpf.c` (the floor a program's cost is
//! compared with), the XDP sink that drops what the forwarding benchmark
//! sends, and the passing XDP program a lab puts on the veth peer of an XDP
//! main (a veth drops the frames its peer's XDP program sends back, `XDP_TX`,
//! unless it runs an XDP program itself).
//!
//! Nothing here is used by baton-main or baton-participant, and nothing here
//! pins anything: what it loads or attaches goes away when the returned
//! value drops (or the process dies).

use std::os::fd::AsFd;

use aya::programs::{SchedClassifier, Xdp, XdpFlags};
use aya::Ebpf;

use crate::error::DataplaneError;
use crate::program::AttachMode;
use crate::test_run::{self, Hook, Verdict};

/// The embedded object of `c/empty.bpf.c`.
static EMPTY_OBJECT_BYTES: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/empty.bpf.o"));
/// Its name in errors.
const EMPTY_OBJECT: &str = "empty.bpf.o";
/// tc entry point that passes every packet.
const EMPTY_TC: &str = "baton_empty_tc";
/// XDP entry point that passes every packet.
const EMPTY_XDP: &str = "baton_empty_xdp";
/// XDP entry point that drops every packet (the forwarding benchmark's sink).
const SINK_XDP: &str = "baton_sink_xdp";
/// How a program found by its kernel id is named in errors.
const BY_ID: &str = "program by id";

/// One timed `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The last run's verdict, interpreted for the hook.
    pub verdict: Verdict,
    /// The last run's raw return value.
    pub retval: u32,
    /// The frame as the last run left it.
    pub data: Vec<u8>,
    /// The kernel's mean time per run, in nanoseconds.
    pub ns_per_run: u32,
}

fn hook(mode: AttachMode) -> Hook {
    match mode {
        AttachMode::Tc => Hook::Tc,
        AttachMode::Xdp => Hook::Xdp,
    }
}

fn timing(mode: AttachMode, timed: test_run::TimedRun) -> Timing {
    let verdict = match mode {
        AttachMode::Tc => Verdict::from_tc(timed.retval),
        AttachMode::Xdp => Verdict::from_xdp(timed.retval),
    };
    Timing {
        verdict,
        retval: timed.retval,
        data: timed.data,
        ns_per_run: timed.duration_ns,
    }
}

/// A loaded program found by its kernel id (see
/// [`crate::MainDataplane::program_id`]), held open to be timed.
#[derive(Debug)]
pub struct TimedProgram {
    fd: aya::programs::ProgramFd,
    mode: AttachMode,
}

impl TimedProgram {
    /// Opens the program with kernel id `program_id`, a `mode` program (tc
    /// classifier or XDP).
    pub fn by_id(program_id: u32, mode: AttachMode) -> Result<Self, DataplaneError> {
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == program_id)
            .ok_or(DataplaneError::MissingFromObject {
                what: "program",
                name: BY_ID,
                object: "the kernel's loaded programs",
            })?;
        let fd = info.fd().map_err(|e| DataplaneError::program(BY_ID, e))?;
        Ok(Self { fd, mode })
    }

    /// Runs `frame` `repeat` times (in the kernel, one syscall) through the
    /// program as if it arrived on `ifindex`.
    ///
    /// The kernel keeps the frame between runs: a program that rewrites it
    /// (the main program on a forwarded flow encapsulates) sees its own
    /// output from the second run on, so time such frames with `repeat` 1,
    /// once per call.
    pub fn time(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<Timing, DataplaneError> {
        let timed = test_run::run_repeated(self.fd.as_fd(), hook(self.mode), frame, ifindex, repeat)
            .map_err(|source| DataplaneError::TestRun {
                program: BY_ID,
                source,
            })?;
        Ok(timing(self.mode, timed))
    }
}

/// The empty tc and XDP programs, loaded (never attached): the floor of a
/// program's cost on each hook.
#[derive(Debug)]
pub struct EmptyPrograms {
    ebpf: Ebpf,
}

impl EmptyPrograms {
    /// Loads both entry points into the kernel.
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf = load_object()?;
        program_mut::<SchedClassifier>(&mut ebpf, EMPTY_TC)?
            .load()
            .map_err(|e| DataplaneError::program(EMPTY_TC, e))?;
        program_mut::<Xdp>(&mut ebpf, EMPTY_XDP)?
            .load()
            .map_err(|e| DataplaneError::program(EMPTY_XDP, e))?;
        Ok(Self { ebpf })
    }

    /// Runs `frame` `repeat` times through the empty program of `mode`, as
    /// if it arrived on `ifindex` (see [`TimedProgram::time`]).
    pub fn time(
        &self,
        mode: AttachMode,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<Timing, DataplaneError> {
        let name = match mode {
            AttachMode::Tc => EMPTY_TC,
            AttachMode::Xdp => EMPTY_XDP,
        };
        let program = self.ebpf.program(name).ok_or(DataplaneError::MissingFromObject {
            what: "program",
            name,
            object: EMPTY_OBJECT,
        })?;
        let fd = match mode {
            AttachMode::Tc => {
                let p: &SchedClassifier =
                    program.try_into().map_err(|e| DataplaneError::program(name, e))?;
                p.fd().map_err(|e| DataplaneError::program(name, e))?.as_fd()
            }
            AttachMode::Xdp => {
                let p: &Xdp = program.try_into().map_err(|e| DataplaneError::program(name, e))?;
                p.fd().map_err(|e| DataplaneError::program(name, e))?.as_fd()
            }
        };
        let timed = test_run::run_repeated(fd, hook(mode), frame, ifindex, repeat)
            .map_err(|source| DataplaneError::TestRun {
                program: name,
                source,
            })?;
        Ok(timing(mode, timed))
    }
}

/// An XDP program dropping every frame, attached to one interface (of the
/// calling thread's network namespace) until this drops. The interface
/// still counts each frame in its `rx_packets`, and a veth with an XDP
/// program accepts frames other XDP programs redirect to it.
#[derive(Debug)]
pub struct SinkXdp {
    _ebpf: Ebpf,
}

impl SinkXdp {
    /// Loads the sink and attaches it to `iface` (native XDP when the driver
    /// has it) through a link that lives as long as the returned value.
    pub fn attach(iface: &str) -> Result<Self, DataplaneError> {
        Ok(Self { _ebpf: attach_xdp(iface, SINK_XDP)? })
    }
}

/// An XDP program passing every frame, attached to one interface (of the
/// calling thread's network namespace) until this drops: on the veth peer of
/// an interface with an XDP program, it makes the peer accept the frames that
/// program sends back (`XDP_TX`).
#[derive(Debug)]
pub struct PassXdp {
    _ebpf: Ebpf,
}

impl PassXdp {
    /// Loads the passing program and attaches it to `iface`.
    pub fn attach(iface: &str) -> Result<Self, DataplaneError> {
        Ok(Self { _ebpf: attach_xdp(iface, EMPTY_XDP)? })
    }
}

/// Loads entry point `name` of the empty object and attaches it to `iface`.
fn attach_xdp(iface: &str, name: &'static str) -> Result<Ebpf, DataplaneError> {
    let mut ebpf = load_object()?;
    let program = program_mut::<Xdp>(&mut ebpf, name)?;
    program.load().map_err(|e| DataplaneError::program(name, e))?;
    program.attach(iface, XdpFlags::default()).map_err(|source| DataplaneError::Attach {
        program: name,
        iface: iface.to_owned(),
        source: Box::new(source),
    })?;
    Ok(ebpf)
}

fn load_object() -> Result<Ebpf, DataplaneError> {
    Ebpf::load(EMPTY_OBJECT_BYTES).map_err(|source| DataplaneError::LoadObject {
        object: EMPTY_OBJECT,
        source: Box::new(source),
    })
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingFromObject {
            what: "program",
            name,
            object: EMPTY_OBJECT,
        })?
        .try_into()
        .map_err(|e| DataplaneError::program(name, e))
}
