//! Loading the embedded objects, loading and attaching one of their entry
//! points, and test-running it. Shared by the main and participant loaders.
//!
//! Attachment lives exactly as long as the returned [`Loaded`]: dropping it
//! detaches the program. This module never detaches anything it did not
//! attach and never touches another program's qdisc filters.

use std::path::Path;
use std::sync::Mutex;

use aya::programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};

use crate::error::DataplaneError;
use crate::pin::{check_pinned, prepare_pin_dir, ExpectedMap};
use crate::test_run::{self, Hook, TestRunOutput, Verdict};

/// Where a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// tc ingress (tcx on kernels >= 6.6, clsact otherwise).
    Tc,
    /// XDP (native when the driver supports it, generic otherwise).
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
    pub(crate) pinned: &'static [ExpectedMap],
}

impl ObjectSpec {
    fn program(&self, mode: AttachMode) -> &'static str {
        match mode {
            AttachMode::Tc => self.tc_program,
            AttachMode::Xdp => self.xdp_program,
        }
    }

    /// Checks the pin directory and loads the object's maps (reusing pinned
    /// ones) and the entry point for `mode` into the kernel, unattached.
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
            AttachMode::Tc => {
                let p: &mut SchedClassifier = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                p.load().map_err(|e| DataplaneError::program(program, e))?;
            }
            AttachMode::Xdp => {
                let p: &mut Xdp = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                p.load().map_err(|e| DataplaneError::program(program, e))?;
            }
        }
        Ok(Loaded {
            ebpf: Mutex::new(ebpf),
            object: self,
            program,
            mode,
            attached: None,
        })
    }
}

/// An object whose entry point is loaded (and, after [`Loaded::attach`],
/// attached to an interface's ingress).
#[derive(Debug)]
pub(crate) struct Loaded {
    ebpf: Mutex<Ebpf>,
    object: &'static ObjectSpec,
    program: &'static str,
    mode: AttachMode,
    attached: Option<(String, u32)>,
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

    /// Attaches the loaded entry point to the ingress of `iface`.
    pub(crate) fn attach(&mut self, iface: &str) -> Result<(), DataplaneError> {
        let index = ifindex(iface)?;
        let program = self.program;
        let attach_err = |e| DataplaneError::Attach {
            program,
            iface: iface.to_owned(),
            source: Box::new(e),
        };
        let mut ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
        let prog = ebpf
            .program_mut(program)
            .ok_or(DataplaneError::MissingFromObject {
                what: "program",
                name: program,
                object: self.object.name,
            })?;
        match self.mode {
            AttachMode::Tc => {
                match tc::qdisc_add_clsact(iface) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(DataplaneError::Qdisc {
                            iface: iface.to_owned(),
                            source,
                        })
                    }
                }
                let p: &mut SchedClassifier = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                p.attach(iface, TcAttachType::Ingress).map_err(attach_err)?;
            }
            AttachMode::Xdp => {
                let p: &mut Xdp = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                p.attach(iface, XdpFlags::default()).map_err(attach_err)?;
            }
        }
        drop(ebpf);
        tracing::info!(program, iface, mode = ?self.mode, "attached");
        self.attached = Some((iface.to_owned(), index));
        Ok(())
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

    /// Runs `frame` through the program as if it arrived on `ifindex`.
    pub(crate) fn test_run(
        &self,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        let program = self.program;
        let ebpf = self.ebpf.lock().map_err(|_| DataplaneError::Poisoned)?;
        let prog = ebpf
            .program(program)
            .ok_or(DataplaneError::MissingFromObject {
                what: "program",
                name: program,
                object: self.object.name,
            })?;
        let run_err = |source| DataplaneError::TestRun { program, source };
        let (retval, data) = match self.mode {
            AttachMode::Tc => {
                let p: &SchedClassifier = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                let fd = p.fd().map_err(|e| DataplaneError::program(program, e))?;
                test_run::run(std::os::fd::AsFd::as_fd(fd), Hook::Tc, frame, ifindex)
                    .map_err(run_err)?
            }
            AttachMode::Xdp => {
                let p: &Xdp = prog
                    .try_into()
                    .map_err(|e| DataplaneError::program(program, e))?;
                let fd = p.fd().map_err(|e| DataplaneError::program(program, e))?;
                test_run::run(std::os::fd::AsFd::as_fd(fd), Hook::Xdp, frame, ifindex)
                    .map_err(run_err)?
            }
        };
        let verdict = match self.mode {
            AttachMode::Tc => Verdict::from_tc(retval),
            AttachMode::Xdp => Verdict::from_xdp(retval),
        };
        Ok(TestRunOutput {
            verdict,
            retval,
            data,
        })
    }
}
