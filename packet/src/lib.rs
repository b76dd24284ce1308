//! AF_PACKET sockets bound to one interface, read and written in batches
//! (`recvmmsg`/`sendmmsg`): the frame I/O of the lab's delay line and of the main's userspace
//! data plane.
//!
//! A socket sees every frame that arrives on its interface (promiscuously, if asked), never its
//! own output (`PACKET_IGNORE_OUTGOING`), and reports per frame whether the kernel left the
//! transport checksum unfinished for offload (`TP_STATUS_CSUMNOTREADY`, from
//! `PACKET_AUXDATA`): a frame from a local veth peer may carry only the pseudo-header sum, which
//! whoever sends it on must complete.
//!
//! This crate only moves frames; it never parses or changes them.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Kernel socket buffer in each direction, in bytes (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`): frames
/// wait here between two reads, and 8 MiB holds well over a millisecond of a 10 Gbit/s burst.
pub const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

/// `TP_STATUS_CSUMNOTREADY`: the frame's transport checksum is left to offload.
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

/// Room for one `PACKET_AUXDATA` control message.
const AUXDATA_SPACE: usize = 64;

/// Why a packet socket could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The interface does not exist in this network namespace.
    #[error("interface {iface} not found")]
    NoSuchInterface {
        /// The name given.
        iface: String,
    },
    /// A system call on the socket failed.
    #[error("{action} {iface}: {source}")]
    Io {
        /// What was being done (`bind packet socket to`, `recvmmsg on`, ...).
        action: &'static str,
        /// The interface.
        iface: String,
        /// The system error.
        source: io::Error,
    },
}

/// How to open a [`PacketSocket`].
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Receive frames addressed to other MACs too (a delay line sits between two hosts).
    pub promiscuous: bool,
    /// Ask the kernel for each frame's checksum status (`PACKET_AUXDATA`).
    pub auxdata: bool,
}

/// An AF_PACKET socket bound to one interface (all protocols, non-blocking).
#[derive(Debug)]
pub struct PacketSocket {
    socket: OwnedFd,
    iface: String,
    ifindex: libc::c_int,
}

fn setsockopt<T>(socket: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0);
    // SAFETY: `value` is a live `T` of `len` bytes, as the option expects.
    let result = unsafe { libc::setsockopt(socket.as_raw_fd(), level, name, std::ptr::from_ref(value).cast(), len) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The ifindex of `iface` in this namespace, if it exists.
pub fn ifindex_of(iface: &str) -> Option<libc::c_int> {
    let name = CString::new(iface).ok()?;
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    libc::c_int::try_from(index).ok().filter(|&index| index != 0)
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

impl PacketSocket {
    /// Opens a socket that receives every frame arriving on `iface` (none that leave it).
    pub fn open(iface: &str, options: Options) -> Result<Self, PacketError> {
        let io_error = |action: &'static str| move |source: io::Error| PacketError::Io { action, iface: iface.to_owned(), source };
        let ifindex = ifindex_of(iface).ok_or_else(|| PacketError::NoSuchInterface { iface: iface.to_owned() })?;
        // Protocol 0: the socket receives nothing until it is bound to the one interface.
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io_error("open packet socket on")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &SOCKET_BUFFER_BYTES).map_err(io_error("set SO_RCVBUFFORCE on"))?;
        setsockopt(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &SOCKET_BUFFER_BYTES).map_err(io_error("set SO_SNDBUFFORCE on"))?;
        // Our own output on this interface must not come back in as input.
        setsockopt(&socket, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)
            .map_err(io_error("set PACKET_IGNORE_OUTGOING on"))?;
        if options.auxdata {
            setsockopt(&socket, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1 as &libc::c_int).map_err(io_error("set PACKET_AUXDATA on"))?;
        }
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        address.sll_ifindex = ifindex;
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0);
        // SAFETY: `address` is a sockaddr_ll of `len` bytes.
        if unsafe { libc::bind(socket.as_raw_fd(), std::ptr::from_ref(&address).cast(), len) } != 0 {
            return Err(io_error("bind packet socket to")(io::Error::last_os_error()));
        }
        if options.promiscuous {
            // The membership ends with the socket.
            // SAFETY: all-zero is a valid packet_mreq.
            let mut membership: libc::packet_mreq = unsafe { std::mem::zeroed() };
            membership.mr_ifindex = ifindex;
            membership.mr_type = libc::PACKET_MR_PROMISC as u16;
            setsockopt(&socket, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &membership).map_err(io_error("make promiscuous"))?;
        }
        Ok(Self { socket, iface: iface.to_owned(), ifindex })
    }

    /// The interface's name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Whether the interface this socket is bound to still exists (with the same index).
    pub fn present(&self) -> bool {
        ifindex_of(&self.iface) == Some(self.ifindex)
    }

    /// Frames the kernel dropped because the socket buffer was full, since the last call
    /// (reading resets the kernel's count).
    pub fn take_kernel_drops(&self) -> u64 {
        // SAFETY: all-zero is a valid tpacket_stats.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tpacket_stats>()).unwrap_or(0);
        // SAFETY: `stats` has room for `len` bytes.
        let result = unsafe {
            libc::getsockopt(self.socket.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_STATISTICS, std::ptr::from_mut(&mut stats).cast(), &mut len)
        };
        if result == 0 {
            u64::from(stats.tp_drops)
        } else {
            0
        }
    }

    /// Waits until a frame can be read or `timeout_ms` passed (`-1`: forever); `Ok(false)` on
    /// timeout or a signal.
    pub fn wait_readable(&self, timeout_ms: libc::c_int) -> Result<bool, PacketError> {
        let mut poll = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(PacketError::Io { action: "poll", iface: self.iface.clone(), source: error });
        }
        Ok(n > 0)
    }

    /// Reads up to `batch.capacity()` waiting frames without blocking; `Ok(0)` when none waits.
    pub fn receive(&self, batch: &mut RxBatch) -> Result<usize, PacketError> {
        batch.receive(&self.socket).map_err(|source| PacketError::Io { action: "recvmmsg on", iface: self.iface.clone(), source })
    }

    /// Sends `frames` out of the interface; returns how many the kernel refused for lack of
    /// buffer space (dropped, as a full queue drops), or the error that stopped sending.
    pub fn send(&self, frames: &[&[u8]]) -> Result<u64, PacketError> {
        send_batch(&self.socket, frames).map_err(|source| PacketError::Io { action: "sendmmsg on", iface: self.iface.clone(), source })
    }
}

/// `len` all-zero values of `T`.
///
/// # Safety
///
/// All-zero bytes must be a valid `T` (true of the plain C structs used here).
unsafe fn zeroed_vec<T>(len: usize) -> Vec<T> {
    // SAFETY: the caller guarantees that all-zero is a valid T.
    (0..len).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// One frame of the last [`PacketSocket::receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A frame; `csum_not_ready` when the kernel left its transport checksum to offload.
    Data { bytes: &'a [u8], csum_not_ready: bool },
    /// Longer than the batch's frame capacity (its real length); not read.
    Oversize(usize),
}

/// Buffers and headers for one `recvmmsg`.
pub struct RxBatch {
    frame_capacity: usize,
    buffers: Vec<Box<[u8]>>,
    addresses: Vec<libc::sockaddr_ll>,
    iovecs: Vec<libc::iovec>,
    controls: Vec<[u8; AUXDATA_SPACE]>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

impl std::fmt::Debug for RxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBatch").field("frames", &self.buffers.len()).field("frame_capacity", &self.frame_capacity).finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers in the headers only ever point into this batch's own buffers, and
// are rewritten before every use.
unsafe impl Send for RxBatch {}

impl RxBatch {
    /// Room for `frames` frames of up to `frame_capacity` bytes each.
    pub fn new(frames: usize, frame_capacity: usize) -> Self {
        // SAFETY: all-zero is a valid sockaddr_ll, iovec and mmsghdr (null pointers, zero
        // lengths); the pointers are set before every use.
        unsafe {
            Self {
                frame_capacity,
                buffers: (0..frames).map(|_| vec![0u8; frame_capacity].into_boxed_slice()).collect(),
                addresses: zeroed_vec(frames),
                iovecs: zeroed_vec(frames),
                controls: vec![[0u8; AUXDATA_SPACE]; frames],
                headers: zeroed_vec(frames),
                received: 0,
            }
        }
    }

    /// Frames one receive reads at most.
    pub fn capacity(&self) -> usize {
        self.buffers.len()
    }

    fn receive(&mut self, socket: &OwnedFd) -> io::Result<usize> {
        let address_len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0);
        self.received = 0;
        for i in 0..self.buffers.len() {
            self.iovecs[i] = libc::iovec { iov_base: self.buffers[i].as_mut_ptr().cast(), iov_len: self.frame_capacity };
            let header = &mut self.headers[i];
            header.msg_hdr.msg_name = std::ptr::from_mut(&mut self.addresses[i]).cast();
            header.msg_hdr.msg_namelen = address_len;
            header.msg_hdr.msg_iov = std::ptr::from_mut(&mut self.iovecs[i]);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = AUXDATA_SPACE;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        // MSG_TRUNC: msg_len is the frame's real length, so an oversize frame is seen as such.
        // SAFETY: every header points at a live buffer, address and control area of the sizes given.
        let count = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                libc::c_uint::try_from(self.headers.len()).unwrap_or(0),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if count >= 0 {
            self.received = usize::try_from(count).unwrap_or(0);
            return Ok(self.received);
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(error),
        }
    }

    /// Frame `i` of the last receive, or `None` past the frames received (or for our own output,
    /// should the kernel deliver it).
    pub fn frame(&self, i: usize) -> Option<Frame<'_>> {
        if i >= self.received || self.addresses[i].sll_pkttype == libc::PACKET_OUTGOING {
            return None;
        }
        let len = self.headers[i].msg_len as usize;
        if len > self.frame_capacity {
            return Some(Frame::Oversize(len));
        }
        Some(Frame::Data { bytes: &self.buffers[i][..len], csum_not_ready: self.csum_not_ready(i) })
    }

    /// Whether frame `i` came with `TP_STATUS_CSUMNOTREADY` in its auxdata.
    fn csum_not_ready(&self, i: usize) -> bool {
        let header = &self.headers[i].msg_hdr;
        let mut at = 0usize;
        let space = header.msg_controllen.min(AUXDATA_SPACE);
        let cmsg_len = std::mem::size_of::<libc::cmsghdr>();
        while at + cmsg_len <= space {
            // SAFETY: `at + cmsg_len` is within the control buffer; read unaligned.
            let cmsg: libc::cmsghdr = unsafe { std::ptr::read_unaligned(self.controls[i].as_ptr().add(at).cast()) };
            if cmsg.cmsg_len < cmsg_len {
                return false;
            }
            if cmsg.cmsg_level == libc::SOL_PACKET && cmsg.cmsg_type == libc::PACKET_AUXDATA {
                let data = at + cmsg_len;
                if data + std::mem::size_of::<libc::tpacket_auxdata>() > space {
                    return false;
                }
                // SAFETY: the auxdata lies within the control buffer; read unaligned.
                let aux: libc::tpacket_auxdata = unsafe { std::ptr::read_unaligned(self.controls[i].as_ptr().add(data).cast()) };
                return aux.tp_status & TP_STATUS_CSUMNOTREADY != 0;
            }
            // CMSG_ALIGN of the length.
            let step = (cmsg.cmsg_len + std::mem::size_of::<usize>() - 1) & !(std::mem::size_of::<usize>() - 1);
            at += step;
        }
        false
    }
}

/// Sends `frames` on a bound socket; returns how many the kernel refused (dropped) or the error
/// that stopped sending (the link went away).
fn send_batch(socket: &OwnedFd, frames: &[&[u8]]) -> Result<u64, io::Error> {
    // SAFETY: all-zero is a valid iovec and mmsghdr (null pointers, zero lengths).
    let (mut iovecs, mut headers): (Vec<libc::iovec>, Vec<libc::mmsghdr>) = unsafe { (zeroed_vec(frames.len()), zeroed_vec(frames.len())) };
    for (i, frame) in frames.iter().enumerate() {
        // sendmmsg only reads the frame.
        iovecs[i] = libc::iovec { iov_base: frame.as_ptr().cast_mut().cast(), iov_len: frame.len() };
        headers[i].msg_hdr.msg_iov = std::ptr::from_mut(&mut iovecs[i]);
        headers[i].msg_hdr.msg_iovlen = 1;
    }
    let mut refused = 0;
    let mut next = 0;
    while next < frames.len() {
        let rest = &mut headers[next..];
        // SAFETY: every header points at a live iovec over a live frame. The socket is bound,
        // so no address is needed.
        let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), rest.as_mut_ptr(), libc::c_uint::try_from(rest.len()).unwrap_or(0), libc::MSG_DONTWAIT) };
        if sent > 0 {
            next += usize::try_from(sent).unwrap_or(0);
            continue;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => {}
            // A full socket buffer or device backlog: drop the frame, as a full queue does.
            Some(libc::EAGAIN | libc::ENOBUFS) => {
                refused += 1;
                next += 1;
            }
            _ => return Err(error),
        }
    }
    Ok(refused)
}
