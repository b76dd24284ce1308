//! Attachments that outlive the process: every program is attached through a
//! BPF link (tcx for tc, an XDP link for XDP) that is pinned in the pin
//! directory as `link_<program>_<iface>`.
//!
//! - The pinned link keeps the program attached while `baton-main` restarts
//!   (handed-off flows keep flowing) and after a participant is killed (its
//!   egress guard stays). Dropping the Rust objects detaches nothing; this
//!   process keeps no link file descriptor once a link is pinned.
//! - A later load finds the pin and swaps its program for the new one with
//!   `BPF_LINK_UPDATE`, atomically: there is never a moment with no program on
//!   the hook, which on the main would let the kernel answer handed-off flows
//!   with resets.
//! - Removing the pins detaches: [`detach_pinned`], or removing the whole pin
//!   directory (what `baton-lab down` does).
//!
//! This module never touches a pin it did not name (`link_*` only), never
//! attaches through netlink/clsact (such an attachment would die with the
//! process) and never detaches a link that is still attached to the
//! interface it is asked to serve.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkOrder};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpFlags};
use aya::util::KernelVersion;
use aya::Ebpf;

use crate::error::DataplaneError;

/// File-name prefix of every link this crate pins.
const LINK_PREFIX: &str = "link_";
/// `BPF_OBJ_GET` command of bpf(2).
const BPF_OBJ_GET: libc::c_long = 7;
/// `BPF_OBJ_GET_INFO_BY_FD` command of bpf(2).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_UPDATE` command of bpf(2).
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `BPF_LINK_TYPE_XDP`.
const BPF_LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_TCX`.
const BPF_LINK_TYPE_TCX: u32 = 11;
/// `BPF_TCX_INGRESS`.
const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_TCX_EGRESS`.
const BPF_TCX_EGRESS: u32 = 47;
/// What `/proc/self/fd/N` reads for a BPF link.
const LINK_FD_TARGET: &str = "anon_inode:bpf-link";
/// First kernel with tcx links (Linux 6.6).
const TCX_MIN_KERNEL: (u8, u8) = (6, 6);
/// First kernel with XDP links (Linux 5.9).
const XDP_LINK_MIN_KERNEL: (u8, u8) = (5, 9);

/// Where a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Hook {
    /// tcx ingress.
    TcIngress,
    /// tcx egress.
    TcEgress,
    /// XDP (the driver's mode when it has one, generic otherwise).
    Xdp,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::TcIngress => "tcx ingress",
            Hook::TcEgress => "tcx egress",
            Hook::Xdp => "xdp",
        }
    }

    fn min_kernel(self) -> (u8, u8) {
        match self {
            Hook::TcIngress | Hook::TcEgress => TCX_MIN_KERNEL,
            Hook::Xdp => XDP_LINK_MIN_KERNEL,
        }
    }

    /// The `(link type, attach type)` a link on this hook reports; XDP links
    /// report no attach type.
    fn link_kind(self) -> LinkKind {
        match self {
            Hook::TcIngress => LinkKind::TcxIngress,
            Hook::TcEgress => LinkKind::TcxEgress,
            Hook::Xdp => LinkKind::Xdp,
        }
    }
}

/// What kind of attachment a pinned link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// tcx ingress of an interface.
    TcxIngress,
    /// tcx egress of an interface.
    TcxEgress,
    /// XDP on an interface.
    Xdp,
    /// Any other link (not one this crate makes).
    Other {
        /// `bpf_link_info.type`.
        link_type: u32,
    },
}

/// A link pinned in a pin directory, as the kernel reports it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    /// The pinned file, `<pin_dir>/link_<program>_<iface>`.
    pub path: PathBuf,
    /// Which hook.
    pub kind: LinkKind,
    /// Kernel id of the link.
    pub link_id: u32,
    /// Kernel id of the program the link runs now.
    pub program_id: u32,
    /// Index of the interface it is attached to (in the namespace it was
    /// made in); 0 when the interface is gone and the link is defunct.
    pub ifindex: u32,
}

/// How [`attach_pinned`] put the program on its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttachOutcome {
    /// A new link was made and pinned (no usable pin existed).
    Created,
    /// The pinned link now runs the new program (`BPF_LINK_UPDATE`); it ran
    /// program `previous` before.
    Replaced { previous: u32 },
}

/// `<pin_dir>/link_<program>_<iface>`.
pub(crate) fn link_pin_path(pin_dir: &Path, program: &str, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{program}_{iface}"))
}

/// Attaches the loaded `program` of `ebpf` to `hook` of `iface` (index
/// `ifindex`) through the link pinned at `<pin_dir>/link_<program>_<iface>`:
/// the pinned link's program is replaced atomically when the link is still
/// attached to that interface; otherwise a new link is made and pinned there
/// (replacing a stale pin).
pub(crate) fn attach_pinned(
    ebpf: &mut Ebpf,
    object: &'static str,
    program: &'static str,
    hook: Hook,
    iface: &str,
    ifindex: u32,
    pin_dir: &Path,
) -> Result<AttachOutcome, DataplaneError> {
    check_kernel(program, hook, iface)?;
    let path = link_pin_path(pin_dir, program, iface);
    let prog_fd = program_fd(ebpf, object, program, hook)?;

    let mut stale = false;
    if path.exists() {
        let (link_fd, info) = open_link(&path)?;
        if info.kind != hook.link_kind() {
            return Err(DataplaneError::PinnedLinkMismatch {
                path,
                detail: format!(
                    "it is a {:?} link, expected {:?}",
                    info.kind,
                    hook.link_kind()
                ),
            });
        }
        if info.ifindex == ifindex {
            match link_update(link_fd.as_fd(), prog_fd.as_fd()) {
                Ok(()) => {
                    tracing::info!(program, iface, hook = hook.name(), link = %path.display(),
                        previous_program = info.program_id, "replaced the program of the pinned link");
                    return Ok(AttachOutcome::Replaced {
                        previous: info.program_id,
                    });
                }
                // The interface went away under the link: it is attached to nothing.
                Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {}
                Err(source) => return Err(DataplaneError::PinnedLink { path, source }),
            }
        }
        tracing::warn!(program, iface, link = %path.display(), link_ifindex = info.ifindex, ifindex,
            "pinned link is not attached to this interface any more; attaching afresh");
        stale = true;
    }
    drop(prog_fd);

    let link = create_link(ebpf, object, program, hook, iface)?;
    if stale {
        // The new link is attached already: the old pin only named a link
        // that serves no packet on this interface.
        remove_pin(&path)?;
    }
    link.pin(&path).map_err(|source| DataplaneError::PinLink {
        program,
        path: path.clone(),
        source: Box::new(source),
    })?;
    tracing::info!(program, iface, hook = hook.name(), link = %path.display(), "attached through a pinned link");
    Ok(AttachOutcome::Created)
}

/// Refuses early, with a clear message, on kernels without the link type.
fn check_kernel(program: &'static str, hook: Hook, iface: &str) -> Result<(), DataplaneError> {
    let (major, minor) = hook.min_kernel();
    match KernelVersion::current() {
        Ok(current) if current < KernelVersion::new(major, minor, 0) => {
            Err(DataplaneError::LinkUnsupported {
                program,
                iface: iface.to_owned(),
                hook: hook.name(),
                needs: format!("{major}.{minor}"),
                kernel: current.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// A duplicate of the loaded program's fd (the program stays owned by `ebpf`).
fn program_fd(
    ebpf: &Ebpf,
    object: &'static str,
    program: &'static str,
    hook: Hook,
) -> Result<OwnedFd, DataplaneError> {
    let prog = ebpf
        .program(program)
        .ok_or(DataplaneError::MissingFromObject {
            what: "program",
            name: program,
            object,
        })?;
    let fd = match hook {
        Hook::TcIngress | Hook::TcEgress => {
            let p: &SchedClassifier = prog
                .try_into()
                .map_err(|e| DataplaneError::program(program, e))?;
            p.fd()
                .map_err(|e| DataplaneError::program(program, e))?
                .as_fd()
                .try_clone_to_owned()
        }
        Hook::Xdp => {
            let p: &Xdp = prog
                .try_into()
                .map_err(|e| DataplaneError::program(program, e))?;
            p.fd()
                .map_err(|e| DataplaneError::program(program, e))?
                .as_fd()
                .try_clone_to_owned()
        }
    };
    fd.map_err(|e| DataplaneError::program(program, ProgramError::IOError(e)))
}

/// Makes a new link for the program on the hook; the caller pins it.
fn create_link(
    ebpf: &mut Ebpf,
    object: &'static str,
    program: &'static str,
    hook: Hook,
    iface: &str,
) -> Result<FdLink, DataplaneError> {
    let attach_err = |e| DataplaneError::Attach {
        program,
        iface: iface.to_owned(),
        source: Box::new(e),
    };
    let not_a_link = |e| DataplaneError::Attach {
        program,
        iface: iface.to_owned(),
        source: Box::new(ProgramError::IOError(io::Error::other(format!(
            "the kernel attached without a bpf link ({e}); Baton needs link attachments"
        )))),
    };
    let prog = ebpf
        .program_mut(program)
        .ok_or(DataplaneError::MissingFromObject {
            what: "program",
            name: program,
            object,
        })?;
    match hook {
        Hook::TcIngress | Hook::TcEgress => {
            let attach_type = if hook == Hook::TcIngress {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            let p: &mut SchedClassifier = prog
                .try_into()
                .map_err(|e| DataplaneError::program(program, e))?;
            let id = p
                .attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(attach_err)?;
            let link = p.take_link(id).map_err(attach_err)?;
            FdLink::try_from(link).map_err(not_a_link)
        }
        Hook::Xdp => {
            let p: &mut Xdp = prog
                .try_into()
                .map_err(|e| DataplaneError::program(program, e))?;
            let id = p.attach(iface, XdpFlags::default()).map_err(attach_err)?;
            let link = p.take_link(id).map_err(attach_err)?;
            FdLink::try_from(link).map_err(not_a_link)
        }
    }
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::PinnedLink {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Unpins the link pinned as `<pin_dir>/link_<program>_<iface>`, if any (the
/// link detaches as soon as nothing else holds it). Absent is fine.
pub(crate) fn unpin(pin_dir: &Path, program: &str, iface: &str) -> Result<bool, DataplaneError> {
    let path = link_pin_path(pin_dir, program, iface);
    if !path.exists() {
        return Ok(false);
    }
    remove_pin(&path)?;
    tracing::info!(link = %path.display(), "unpinned link");
    Ok(true)
}

/// Detaches every program this crate attached with pins in `pin_dir`, by
/// removing the `link_*` pins there (maps stay pinned: flows survive).
/// Returns the pins removed. A missing directory has nothing to detach.
///
/// The kernel detaches a link once its last reference is gone; Baton keeps no
/// link file descriptor open, so that is at once, although a query may still
/// list the program for a moment (the release goes through RCU).
pub fn detach_pinned(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let mut removed = Vec::new();
    for path in link_pins(pin_dir)? {
        remove_pin(&path)?;
        tracing::info!(link = %path.display(), "unpinned link");
        removed.push(path);
    }
    Ok(removed)
}

/// The links pinned in `pin_dir` by this crate, as the kernel reports them
/// now (sorted by path). A missing directory has none.
pub fn pinned_links(pin_dir: &Path) -> Result<Vec<LinkPin>, DataplaneError> {
    link_pins(pin_dir)?
        .into_iter()
        .map(|path| open_link(&path).map(|(_, info)| info))
        .collect()
}

/// Paths of the `link_*` files in `pin_dir`, sorted.
fn link_pins(pin_dir: &Path) -> Result<Vec<PathBuf>, DataplaneError> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DataplaneError::PinDir {
                path: pin_dir.to_owned(),
                source,
            })
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DataplaneError::PinDir {
            path: pin_dir.to_owned(),
            source,
        })?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(LINK_PREFIX))
        {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Opens a pinned object, checks that it is a BPF link and reads its info.
fn open_link(path: &Path) -> Result<(OwnedFd, LinkPin), DataplaneError> {
    let err = |source| DataplaneError::PinnedLink {
        path: path.to_owned(),
        source,
    };
    let fd = obj_get(path).map_err(err)?;
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(err)?;
    if target.as_os_str() != LINK_FD_TARGET {
        return Err(DataplaneError::PinnedLinkMismatch {
            path: path.to_owned(),
            detail: format!("it is not a bpf link but {}", target.display()),
        });
    }
    let raw = link_info(fd.as_fd()).map_err(err)?;
    let kind = match (raw.link_type, raw.attach_type) {
        (BPF_LINK_TYPE_TCX, BPF_TCX_INGRESS) => LinkKind::TcxIngress,
        (BPF_LINK_TYPE_TCX, BPF_TCX_EGRESS) => LinkKind::TcxEgress,
        (BPF_LINK_TYPE_XDP, _) => LinkKind::Xdp,
        (link_type, _) => LinkKind::Other { link_type },
    };
    Ok((
        fd,
        LinkPin {
            path: path.to_owned(),
            kind,
            link_id: raw.id,
            program_id: raw.prog_id,
            ifindex: raw.ifindex,
        },
    ))
}

/// Runs bpf(2) with `attr`.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised #[repr(C)] struct we own, of the
    // size passed; every pointer inside it points at memory that outlives the
    // call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `BPF_OBJ_GET`: a new fd for the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(2) returned an invalid fd"))?;
    // SAFETY: the kernel just returned this fd to us; OwnedFd closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The fields of `struct bpf_link_info` this crate reads.
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    ifindex: u32,
    attach_type: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
fn link_info(fd: BorrowedFd<'_>) -> io::Result<RawLinkInfo> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// Room for `struct bpf_link_info` (type, id, prog_id, then an 8-byte
    /// aligned union at byte 16 whose xdp and tcx members start with ifindex,
    /// tcx then attach_type). Larger than the kernel's struct, zeroed: the
    /// kernel accepts a longer struct whose tail is zero and fills what it knows.
    #[repr(C, align(8))]
    struct InfoBuf([u8; 256]);
    let mut buf = InfoBuf([0; 256]);
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        info_len: std::mem::size_of::<InfoBuf>() as u32,
        info: buf.0.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let field = |offset: usize| {
        let b = &buf.0[offset..offset + 4];
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    };
    Ok(RawLinkInfo {
        link_type: field(0),
        id: field(4),
        prog_id: field(8),
        ifindex: field(16),
        attach_type: field(20),
    })
}

/// `BPF_LINK_UPDATE`: the link runs `prog` from now on (one atomic swap).
fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let raw = |fd: BorrowedFd<'_>| {
        u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let mut attr = LinkUpdateAttr {
        link_fd: raw(link)?,
        new_prog_fd: raw(prog)?,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names() {
        assert_eq!(
            link_pin_path(Path::new("/sys/fs/bpf/baton/main"), "baton_main_tc", "eth0"),
            Path::new("/sys/fs/bpf/baton/main/link_baton_main_tc_eth0")
        );
    }

    #[test]
    fn missing_pin_dir_has_no_links() {
        let dir = Path::new("/nonexistent/baton-ebpf-no-such-dir");
        assert_eq!(
            detach_pinned(dir).unwrap_or_default(),
            Vec::<PathBuf>::new()
        );
        assert!(pinned_links(dir).is_ok_and(|l| l.is_empty()));
    }
}
