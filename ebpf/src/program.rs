//! Loading the embedded objects, loading and attaching their entry points,
//! and test-running them. Shared by the main and participant loaders.
//!
//! Attachments go through pinned links (see [`crate::link`]): they outlive
//! the returned [`Loaded`] and the process, and a later load in the same pin
//! directory swaps the program atomically. Dropping a [`Loaded`] only closes
//! this process's handles. This module never detaches anything but the other
//! mode's entry point of the same object on the same interface (a mode
//! change), and never touches another program's qdisc filters.

use std::path::Path;
use std::sync::Mutex;

use std::path::PathBuf;

use aya::programs::{SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};

use crate::error::DataplaneError;
use crate::link::{self, AttachOutcome};
use crate::pin::{check_pinned, prepare_pin_dir, ExpectedMap};
use crate::test_run::{self, Hook, TestRunOutput, Verdict};

/// Where a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// tc ingress, through a tcx link (Linux 6.6 or later).
    Tc,
    /// XDP (native when the driver supports it, generic otherwise), through
    /// an XDP link (Linux 5.9 or later).
    ///
    /// Faster, with limits the tc mode does not have: XDP cannot resolve a
    /// neighbour, so a participant whose next hop has no ARP entry is dropped
    /// (counted) until the kernel learns it; and frames lose the skb's
    /// checksum-offload state, so packets from a local veth peer that left
    /// their checksum to offload arrive corrupt. In network-namespace labs,
    /// use [`AttachMode::Tc`] (or turn off TX checksum offload on the peers).
    Xdp,
}

/// One embedded object and its entry points.
#[derive(Debug)]
pub(crate) struct ObjectSpec {
    pub(crate) name: &'static str,
    pub(crate) bytes: &'static [u8],
    pub(crate) tc_program: &'static str,
    pub(crate) xdp_program: &'static str,
    /// A tc program attached to interfaces' egress in either mode (the
    /// participant's guard), loaded with the object.
    pub(crate) egress_program: Option<&'static str>,
    pub(crate) pinned: &'static [ExpectedMap],
}

impl ObjectSpec {
    fn program(&self, mode: AttachMode) -> &'static str {
        match mode {
            AttachMode::Tc => self.tc_program,
            AttachMode::Xdp => self.xdp_program,
        }
    }

    fn other_mode_program(&self, mode: AttachMode) -> &'static str {
        match mode {
            AttachMode::Tc => self.xdp_program,
            AttachMode::Xdp => self.tc_program,
        }
    }

    /// Checks the pin directory and loads the object's maps (reusing pinned
    /// ones), the entry point for `mode` and the egress program (if any) into
    /// the kernel, unattached.
    pub(crate) fn load(
        &'static self,
        pin_dir: &Path,
        mode: AttachMode,
    ) -> Result<Loaded, DataplaneError> {
        prepare_pin_dir(pin_dir)?;
        for expected in self.pinned {
            check_pinned(pin_dir, expected)?;
        }
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(pin_dir)
            .load(self.bytes)
            .map_err(|source| DataplaneError::LoadObject {
                object: self.name,
                source: Box::new(source),
            })?;
        let program = self.program(mode);
        let prog = ebpf
            .program_mut(program)
            .ok_or(DataplaneError::MissingFromObject {
                what: "program",
                name: program,
                object: self.name,
            })?;
        match mode {
            AttachMode::Tc => load_classifier(&mut ebpf, self.name, program)?,
            AttachMode::Xdp => {
                let p: &mut Xdp = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                p.load().map_err(|e| DataplaneError::program(program, e))?;
            }
        }
        if let Some(egress) = self.egress_program {
            load_classifier(&mut ebpf, self.name, egress)?;
        }
        Ok(Loaded {
            ebpf: Mutex::new(ebpf),
            object: self,
            program,
            mode,
            pin_dir: pin_dir.to_owned(),
            attached: None,
        })
    }
}

/// An object whose entry point is loaded (and, after [`Loaded::attach`],
/// attached to an interface's ingress through a pinned link).
#[derive(Debug)]
pub(crate) struct Loaded {
    ebpf: Mutex<Ebpf>,
    object: &'static ObjectSpec,
    program: &'static str,
    mode: AttachMode,
    pin_dir: PathBuf,
    attached: Option<(String, u32)>,
}

/// Loads the tc program `program` of `ebpf` into the kernel (once: a loaded one is left as is).
fn load_classifier(ebpf: &mut Ebpf, object: &'static str, program: &'static str) -> Result<(), DataplaneError> {
    let p: &mut SchedClassifier = ebpf
        .program_mut(program)
        .ok_or(DataplaneError::MissingFromObject { what: "program", name: program, object })?
        .try_into()
        .map_err(|e| DataplaneError::program(program, e))?;
    if p.fd().is_err() {
        p.load().map_err(|e| DataplaneError::program(program, e))?;
    }
    Ok(())
}

/// The index of `iface` in this thread's network namespace.
pub(crate) fn ifindex(iface: &str) -> Result<u32, DataplaneError> {
    let c_name = std::ffi::CString::new(iface).map_err(|_| DataplaneError::NoSuchInterface {
        iface: iface.to_owned(),
    })?;
    // SAFETY: if_nametoindex reads a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::NoSuchInterface {
            iface: iface.to_owned(),
        });
    }
    Ok(index)
}

impl Loaded {
    /// Removes a map from the object so the caller can own it. The program
    /// keeps its own reference, so this must only happen after load.
    pub(crate) fn take_map(&self, name: &'static str) -> Result<aya::maps::Map, DataplaneError> {
        let mut ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
        ebpf.take_map(name)
            .ok_or(DataplaneError::MissingFromObject {
                what: "map",
                name,
                object: self.object.name,
            })
    }

    /// Attaches the loaded entry point to the ingress of `iface` through the
    /// link pinned as `link_<program>_<iface>` (replacing the program of an
    /// existing pin atomically). Then, on a mode change, unpins the other
    /// mode's link on the same interface: both run for that instant (the
    /// XDP one first), never neither.
    pub(crate) fn attach(&mut self, iface: &str) -> Result<AttachOutcome, DataplaneError> {
        let index = ifindex(iface)?;
        let hook = match self.mode {
            AttachMode::Tc => link::Hook::TcIngress,
            AttachMode::Xdp => link::Hook::Xdp,
        };
        let outcome = {
            let mut ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
            link::attach_pinned(
                &mut ebpf,
                self.object.name,
                self.program,
                hook,
                iface,
                index,
                &self.pin_dir,
            )?
        };
        link::unpin(
            &self.pin_dir,
            self.object.other_mode_program(self.mode),
            iface,
        )?;
        tracing::info!(program = self.program, iface, mode = ?self.mode, ?outcome, "attached");
        self.attached = Some((iface.to_owned(), index));
        Ok(outcome)
    }

    /// Attaches the object's tc entry point to the ingress of one more
    /// interface (`lo`, for the main's own probe connections), through its
    /// own pinned link, whatever the mode of the main attachment: in XDP mode
    /// the tc entry point is loaded here first.
    pub(crate) fn attach_tc_ingress_also(&self, iface: &str) -> Result<AttachOutcome, DataplaneError> {
        let program = self.object.tc_program;
        let index = ifindex(iface)?;
        let mut ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
        if self.mode != AttachMode::Tc {
            load_classifier(&mut ebpf, self.object.name, program)?;
        }
        let outcome = link::attach_pinned(&mut ebpf, self.object.name, program, link::Hook::TcIngress, iface, index, &self.pin_dir)?;
        tracing::info!(program, iface, ?outcome, "attached");
        Ok(outcome)
    }

    /// Attaches the object's egress program to the egress of `iface` through
    /// its own pinned link.
    pub(crate) fn attach_egress(&self, iface: &str) -> Result<AttachOutcome, DataplaneError> {
        let program = self.egress_program()?;
        let index = ifindex(iface)?;
        let mut ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
        link::attach_pinned(
            &mut ebpf,
            self.object.name,
            program,
            link::Hook::TcEgress,
            iface,
            index,
            &self.pin_dir,
        )
    }

    fn egress_program(&self) -> Result<&'static str, DataplaneError> {
        self.object
            .egress_program
            .ok_or(DataplaneError::MissingFromObject {
                what: "program",
                name: "egress",
                object: self.object.name,
            })
    }

    /// The pin directory.
    pub(crate) fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// Kernel id of the loaded ingress entry point, or of the egress program.
    pub(crate) fn program_id(&self, egress: bool) -> Result<u32, DataplaneError> {
        let program = if egress {
            self.egress_program()?
        } else {
            self.program
        };
        let ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
        let prog = ebpf
            .program(program)
            .ok_or(DataplaneError::MissingFromObject {
                what: "program",
                name: program,
                object: self.object.name,
            })?;
        let info = match (egress, self.mode) {
            (false, AttachMode::Xdp) => {
                let p: &Xdp = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                p.info()
            }
            _ => {
                let p: &SchedClassifier = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                p.info()
            }
        };
        info.map(|i| i.id())
            .map_err(|e| DataplaneError::program(program, e))
    }

    pub(crate) fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Interface name and index, once attached.
    pub(crate) fn attached(&self) -> Option<(&str, u32)> {
        self.attached
            .as_ref()
            .map(|(name, index)| (name.as_str(), *index))
    }

    /// Runs `frame` through the ingress program as if it arrived on `ifindex`.
    pub(crate) fn test_run(
        &self,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        let hook = match self.mode {
            AttachMode::Tc => Hook::Tc,
            AttachMode::Xdp => Hook::Xdp,
        };
        self.run_program(self.program, hook, frame, ifindex)
    }

    /// Runs `frame` through the egress program as if `ifindex` sent it.
    pub(crate) fn test_run_egress(
        &self,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        self.run_program(self.egress_program()?, Hook::Tc, frame, ifindex)
    }

    fn run_program(
        &self,
        program: &'static str,
        hook: Hook,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        let ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
        let prog = ebpf
            .program(program)
            .ok_or(DataplaneError::MissingFromObject {
                what: "program",
                name: program,
                object: self.object.name,
            })?;
        let run_err = |source| DataplaneError::TestRun { program, source };
        let retval = match hook {
            Hook::Tc => {
                let p: &SchedClassifier = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                let fd = p.fd().map_err(|e| DataplaneError::program(program, e))?;
                test_run::run(std::os::fd::AsFd::as_fd(fd), hook, frame, ifindex)
                    .map_err(run_err)?
            }
            Hook::Xdp => {
                let p: &Xdp = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                let fd = p.fd().map_err(|e| DataplaneError::program(program, e))?;
                test_run::run(std::os::fd::AsFd::as_fd(fd), hook, frame, ifindex)
                    .map_err(run_err)?
            }
        };
        let (retval, data) = retval;
        let verdict = match hook {
            Hook::Tc => Verdict::from_tc(retval),
            Hook::Xdp => Verdict::from_xdp(retval),
        };
        Ok(TestRunOutput {
            verdict,
            retval,
            data,
        })
    }
}
