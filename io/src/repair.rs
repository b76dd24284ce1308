//! TCP_REPAIR dump and restore of a live, established IPv4 connection.
//!
//! The main dumps the state of a connection it accepted (sequence numbers, window, negotiated
//! options, timestamp clock) and a participant rebuilds an identical kernel socket from it, in the
//! order the kernel requires (the order CRIU's libsoccr uses): bind, queue sequences, connect,
//! options, timestamp, window, repair off.
//!
//! This module never sends or receives payload and never leaves a socket in repair mode by
//! accident: [`RepairGuard`] turns repair mode off again unless the socket is deliberately closed
//! silently. The main hands off only with empty queues (it has read the request and written
//! nothing), which is checked. A participant giving a connection back for a move
//! ([`RepairGuard::freeze_for_move`]) reports the first unacknowledged byte as the send sequence
//! (the next owner sends from there again) and the unread bytes of the receive queue as data, so
//! no queue ever needs to be restored either.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use baton_shared::handoff::{RepairWindow, TcpState};

/// `TCP_REPAIR` values (include/uapi/linux/tcp.h).
const TCP_REPAIR_ON: libc::c_int = 1;
/// Leave repair mode and send a window probe, which also tells the peer our current window.
const TCP_REPAIR_OFF: libc::c_int = 0;
/// Leave repair mode without sending anything.
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
/// `TCP_REPAIR_QUEUE` selectors.
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// TCP option kinds accepted by `TCP_REPAIR_OPTIONS`.
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// `tcpi_options` bits of `struct tcp_info`.
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// Largest value `TCP_MAXSEG` accepts (`MAX_TCP_WINDOW` in include/net/tcp.h).
const MAX_TCP_MAXSEG: libc::c_int = 32767;
/// `SIOCOUTQNSD`: bytes in the send queue not yet sent.
const SIOCOUTQNSD: libc::c_ulong = 0x894b;
/// Smallest send buffer of a socket restored with bytes in flight: the default top of
/// `tcp_wmem` autotuning.
const SEND_BUFFER_FLOOR: usize = 4 << 20;
/// Largest write into a send queue in repair mode.
const REPAIR_QUEUE_CHUNK: usize = 64 * 1024;
/// `TCP_ESTABLISHED` in `tcpi_state`.
const TCP_ESTABLISHED: u8 = 1;
/// Offsets into `struct tcp_info` that have been stable since Linux 2.6: state, options and the
/// packed `snd_wscale:4, rcv_wscale:4` byte.
const TCPI_STATE_OFFSET: usize = 0;
const TCPI_OPTIONS_OFFSET: usize = 5;
const TCPI_WSCALE_OFFSET: usize = 6;

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RawRepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

/// `struct tcp_repair_opt`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawRepairOpt {
    opt_code: u32,
    opt_val: u32,
}

/// What went wrong while dumping or restoring a connection.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("connection is not established (tcp state {state})")]
    NotEstablished { state: u8 },
    #[error("connection has {bytes} unread bytes in its receive queue")]
    RecvQueueNotEmpty { bytes: usize },
    #[error("connection has {bytes} unsent or unacknowledged bytes in its send queue")]
    SendQueueNotEmpty { bytes: usize },
    #[error("connection is not IPv4")]
    NotIpv4,
    #[error("TCP_REPAIR needs CAP_NET_ADMIN")]
    NotPermitted,
}

impl RepairError {
    /// The 4-tuple is held by another socket of this host (`EADDRNOTAVAIL`/`EADDRINUSE`).
    pub fn is_address_taken(&self) -> bool {
        match self {
            RepairError::Sys { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE))
            }
            _ => false,
        }
    }
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> RepairError {
    move |source| {
        if source.raw_os_error() == Some(libc::EPERM) {
            RepairError::NotPermitted
        } else {
            RepairError::Sys { op, source }
        }
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    let len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` points to a valid `T` of `len` bytes for the duration of the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, (val as *const T).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn setsockopt_slice<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, vals: &[T]) -> io::Result<()> {
    let len = std::mem::size_of_val(vals) as libc::socklen_t;
    // SAFETY: `vals` is a valid slice of `len` bytes for the duration of the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, vals.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt<T: Default>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut val = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a valid, writable `T` of `len` bytes; the kernel writes at most `len`.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut val as *mut T).cast(), &mut len) };
    if rc == 0 {
        Ok(val)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ioctl_int(fd: RawFd, request: libc::c_ulong) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ write one int to the pointer.
    let rc = unsafe { libc::ioctl(fd, request as _, &mut val) };
    if rc == 0 {
        Ok(val)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr_v4(fd: RawFd, peer: bool) -> Result<SocketAddrV4, RepairError> {
    // SAFETY: zeroed sockaddr_storage is a valid out-buffer for getsockname/getpeername.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: ptr/len describe `storage`.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut len)
        } else {
            libc::getsockname(fd, ptr, &mut len)
        }
    };
    if rc != 0 {
        return Err(sys(if peer { "getpeername" } else { "getsockname" })(io::Error::last_os_error()));
    }
    if libc::c_int::from(storage.ss_family) != libc::AF_INET {
        return Err(RepairError::NotIpv4);
    }
    // SAFETY: the family says this is a sockaddr_in.
    let sin = unsafe { *(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
    Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), u16::from_be(sin.sin_port)))
}

fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// A socket in repair mode. Dropping the guard turns repair mode off again (without a window
/// probe), so an abandoned handoff leaves an ordinary connection the main can keep serving.
#[derive(Debug)]
pub struct RepairGuard {
    fd: RawFd,
    armed: bool,
}

impl RepairGuard {
    /// Puts `fd` into repair mode. Nothing is sent or received by the kernel on its behalf until
    /// repair mode ends.
    pub fn enter(fd: &impl AsRawFd) -> Result<Self, RepairError> {
        let fd = fd.as_raw_fd();
        setsockopt(fd, libc::SOL_TCP, libc::TCP_REPAIR, &TCP_REPAIR_ON).map_err(sys("TCP_REPAIR on"))?;
        Ok(Self { fd, armed: true })
    }

    /// Reads the whole TCP state of the connection.
    pub fn dump(&self) -> Result<TcpState, RepairError> {
        dump_in_repair(self.fd, None)
    }

    /// Like [`RepairGuard::dump`], for a caller that already knows both addresses (an accepted
    /// socket: the peer from `accept`, the local address from one `getsockname`); saves the two
    /// system calls that would read them again on the handoff's hot path.
    pub fn dump_known(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Result<TcpState, RepairError> {
        dump_in_repair(self.fd, Some((local, remote)))
    }

    /// Keeps the socket in repair mode: the caller is about to close it, and a socket closed in
    /// repair mode vanishes without sending FIN or RST (the kernel's `tcp_disconnect` path).
    pub fn close_silently(mut self) {
        self.armed = false;
    }

    /// Leaves repair mode now; the connection continues as an ordinary socket.
    pub fn leave(mut self) -> Result<(), RepairError> {
        self.armed = false;
        setsockopt(self.fd, libc::SOL_TCP, libc::TCP_REPAIR, &TCP_REPAIR_OFF_NO_WP).map_err(sys("TCP_REPAIR off"))
    }
}

impl Drop for RepairGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = setsockopt(self.fd, libc::SOL_TCP, libc::TCP_REPAIR, &TCP_REPAIR_OFF_NO_WP) {
                tracing::warn!(error = %e, "could not leave TCP repair mode");
            }
        }
    }
}

/// A connection frozen for a move: its state with `snd_seq` at the first byte the client has not
/// acknowledged, the bytes that were still unacknowledged, and the client bytes that were in the
/// receive queue, unread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen {
    pub tcp: TcpState,
    /// Bytes written to the socket and not acknowledged (sent or not).
    pub unacked: u32,
    /// Of those, the bytes the kernel had already sent.
    pub in_flight: u32,
    pub unread: Vec<u8>,
}

/// Most unread bytes taken from a receive queue when freezing (more than any request head).
pub const MAX_FROZEN_UNREAD_BYTES: usize = 2 * baton_shared::http::MAX_HEAD_BYTES;

impl RepairGuard {
    /// Dumps the connection for a move (see [`Frozen`]). The caller closes the socket silently
    /// afterwards, once the state is on its way.
    pub fn freeze_for_move(&self) -> Result<Frozen, RepairError> {
        // In repair mode the kernel still sends data it has queued (when the qdisc frees room,
        // a pacing timer, a loss probe): bytes past the snd_nxt read below would reach the
        // client, which then acknowledges more than the next owner ever sent, and that owner's
        // kernel ignores every such ACK. A zero send window stops new data from leaving first;
        // the record keeps the real window.
        let window = getsockopt::<RawRepairWindow>(self.fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW)
            .map_err(sys("get TCP_REPAIR_WINDOW"))?;
        setsockopt(self.fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW, &RawRepairWindow { snd_wnd: 0, ..window })
            .map_err(sys("close the send window"))?;
        let mut tcp = dump_in_repair(self.fd, None)?;
        tcp.window = RepairWindow {
            snd_wl1: window.snd_wl1,
            snd_wnd: window.snd_wnd,
            max_window: window.max_window,
            rcv_wnd: window.rcv_wnd,
            rcv_wup: window.rcv_wup,
        };
        let unacked = ioctl_int(self.fd, libc::TIOCOUTQ as libc::c_ulong).map_err(sys("SIOCOUTQ"))?;
        let unacked = u32::try_from(unacked.max(0)).unwrap_or(0);
        let unsent = ioctl_int(self.fd, SIOCOUTQNSD).map_err(sys("SIOCOUTQNSD"))?;
        let unsent = u32::try_from(unsent.max(0)).unwrap_or(0).min(unacked);
        tcp.snd_seq = tcp.snd_seq.wrapping_sub(unacked);
        let inq = ioctl_int(self.fd, libc::FIONREAD as libc::c_ulong).map_err(sys("SIOCINQ"))?;
        let inq = usize::try_from(inq.max(0)).unwrap_or(0).min(MAX_FROZEN_UNREAD_BYTES);
        let mut unread = vec![0u8; inq];
        if inq > 0 {
            setsockopt(self.fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, &TCP_RECV_QUEUE).map_err(sys("TCP_REPAIR_QUEUE"))?;
            // SAFETY: `unread` is writable for its length. In repair mode a receive-queue read
            // with MSG_PEEK copies the queued bytes without consuming or acknowledging them.
            let n = unsafe {
                libc::recv(self.fd, unread.as_mut_ptr().cast(), unread.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
            };
            if n < 0 {
                return Err(sys("read the receive queue")(io::Error::last_os_error()));
            }
            unread.truncate(n as usize);
        }
        Ok(Frozen { tcp, unacked, in_flight: unacked - unsent, unread })
    }
}

/// Bytes sent on the connection and not yet acknowledged by the peer (`SIOCOUTQ`).
pub fn unacked_bytes(fd: &impl AsRawFd) -> io::Result<u32> {
    let n = ioctl_int(fd.as_raw_fd(), libc::TIOCOUTQ as libc::c_ulong)?;
    Ok(u32::try_from(n.max(0)).unwrap_or(0))
}

/// Checks that the connection is established and both queues are empty, the precondition of a
/// handoff: the caller has read everything the client sent and written nothing.
pub fn check_quiescent(fd: &impl AsRawFd) -> Result<(), RepairError> {
    let fd = fd.as_raw_fd();
    let info = tcp_info(fd)?;
    if info[TCPI_STATE_OFFSET] != TCP_ESTABLISHED {
        return Err(RepairError::NotEstablished { state: info[TCPI_STATE_OFFSET] });
    }
    let inq = ioctl_int(fd, libc::FIONREAD as libc::c_ulong).map_err(sys("SIOCINQ"))?;
    if inq != 0 {
        return Err(RepairError::RecvQueueNotEmpty { bytes: inq.max(0) as usize });
    }
    let outq = ioctl_int(fd, libc::TIOCOUTQ as libc::c_ulong).map_err(sys("SIOCOUTQ"))?;
    if outq != 0 {
        return Err(RepairError::SendQueueNotEmpty { bytes: outq.max(0) as usize });
    }
    Ok(())
}

fn tcp_info(fd: RawFd) -> Result<[u8; 256], RepairError> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is writable for len bytes.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_TCP, libc::TCP_INFO, buf.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(sys("TCP_INFO")(io::Error::last_os_error()));
    }
    Ok(buf)
}

fn queue_seq(fd: RawFd, queue: libc::c_int) -> Result<u32, RepairError> {
    setsockopt(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, &queue).map_err(sys("TCP_REPAIR_QUEUE"))?;
    getsockopt::<u32>(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ).map_err(sys("get TCP_QUEUE_SEQ"))
}

/// The state of a socket in repair mode; `addrs` (local, remote) when the caller knows them.
fn dump_in_repair(fd: RawFd, addrs: Option<(SocketAddrV4, SocketAddrV4)>) -> Result<TcpState, RepairError> {
    let info = tcp_info(fd)?;
    if info[TCPI_STATE_OFFSET] != TCP_ESTABLISHED {
        return Err(RepairError::NotEstablished { state: info[TCPI_STATE_OFFSET] });
    }
    let options = info[TCPI_OPTIONS_OFFSET];
    let wscale = info[TCPI_WSCALE_OFFSET];
    let (snd_wscale, rcv_wscale) = if options & TCPI_OPT_WSCALE != 0 { (wscale & 0x0f, wscale >> 4) } else { (0, 0) };
    let timestamps = options & TCPI_OPT_TIMESTAMPS != 0;
    let (local, remote) = match addrs {
        Some(a) => a,
        None => (sockaddr_v4(fd, false)?, sockaddr_v4(fd, true)?),
    };
    let snd_seq = queue_seq(fd, TCP_SEND_QUEUE)?;
    let rcv_seq = queue_seq(fd, TCP_RECV_QUEUE)?;
    // In repair mode TCP_MAXSEG reports mss_clamp, the largest segment the peer accepts.
    let mss = getsockopt::<libc::c_int>(fd, libc::SOL_TCP, libc::TCP_MAXSEG).map_err(sys("get TCP_MAXSEG"))?;
    let ts_val = if timestamps {
        getsockopt::<u32>(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP).map_err(sys("get TCP_TIMESTAMP"))?
    } else {
        0
    };
    let w = getsockopt::<RawRepairWindow>(fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW)
        .map_err(sys("get TCP_REPAIR_WINDOW"))?;
    Ok(TcpState {
        local,
        remote,
        snd_seq,
        rcv_seq,
        mss: u16::try_from(mss).unwrap_or(u16::MAX),
        snd_wscale,
        rcv_wscale,
        sack: options & TCPI_OPT_SACK != 0,
        timestamps,
        ts_val,
        window: RepairWindow {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window,
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        },
    })
}

/// How the restored socket leaves repair mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Send a window probe: the client learns our window at once.
    WithProbe,
    /// Send nothing until the application writes.
    Quiet,
}

/// Rebuilds the connection described by `state` as a new kernel socket bound to `state.local`
/// (which must be a local address, e.g. the VIP on lo). The returned socket is established, out
/// of repair mode, and blocking; on any error the half-built socket is closed silently.
pub fn restore(state: &TcpState, resume: Resume) -> Result<OwnedFd, RepairError> {
    restore_with_sent(state, resume, &[])
}

/// Like [`restore`], with `sent` — bytes from `state.snd_seq` on that the previous owner had
/// already sent — placed in the send queue as sent and unacknowledged: the kernel counts them in
/// flight, accepts the client's ACKs for them and resends whatever the client lacks (the way
/// CRIU restores a send queue). The application writes on after them.
pub fn restore_with_sent(state: &TcpState, resume: Resume, sent: &[u8]) -> Result<OwnedFd, RepairError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(sys("socket")(io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // Dropping `fd` on error closes it while still in repair mode: no RST reaches the client.
    setsockopt(raw, libc::SOL_TCP, libc::TCP_REPAIR, &TCP_REPAIR_ON).map_err(sys("TCP_REPAIR on"))?;

    let local = to_sockaddr(state.local);
    // SAFETY: local is a valid sockaddr_in.
    let rc = unsafe {
        libc::bind(raw, (&local as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(sys("bind to the VIP")(io::Error::last_os_error()));
    }
    for (queue, seq, op) in
        [(TCP_RECV_QUEUE, state.rcv_seq, "set recv TCP_QUEUE_SEQ"), (TCP_SEND_QUEUE, state.snd_seq, "set send TCP_QUEUE_SEQ")]
    {
        setsockopt(raw, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, &queue).map_err(sys("TCP_REPAIR_QUEUE"))?;
        setsockopt(raw, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &seq).map_err(sys(op))?;
    }
    // The segment size is computed once, at connect, from the MSS clamp then in force;
    // TCP_REPAIR_OPTIONS sets the clamp later but does not recompute it, so without this the
    // restored socket would send 536-byte segments (the default clamp) for its whole life.
    // The kernel takes at most MAX_TCP_WINDOW here (loopback MSS is larger).
    let mss = libc::c_int::from(state.mss).min(MAX_TCP_MAXSEG);
    setsockopt(raw, libc::SOL_TCP, libc::TCP_MAXSEG, &mss).map_err(sys("set TCP_MAXSEG"))?;
    let remote = to_sockaddr(state.remote);
    // SAFETY: remote is a valid sockaddr_in. In repair mode connect sends no SYN and the
    // socket becomes established at once.
    let rc = unsafe {
        libc::connect(raw, (&remote as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(sys("connect in repair mode")(io::Error::last_os_error()));
    }

    let mut opts = Vec::with_capacity(4);
    if state.sack {
        opts.push(RawRepairOpt { opt_code: TCPOPT_SACK_PERM, opt_val: 0 });
    }
    if state.snd_wscale != 0 || state.rcv_wscale != 0 {
        opts.push(RawRepairOpt {
            opt_code: TCPOPT_WINDOW,
            opt_val: u32::from(state.snd_wscale) | (u32::from(state.rcv_wscale) << 16),
        });
    }
    if state.timestamps {
        opts.push(RawRepairOpt { opt_code: TCPOPT_TIMESTAMP, opt_val: 0 });
    }
    opts.push(RawRepairOpt { opt_code: TCPOPT_MSS, opt_val: u32::from(state.mss) });
    setsockopt_slice(raw, libc::SOL_TCP, libc::TCP_REPAIR_OPTIONS, &opts).map_err(sys("TCP_REPAIR_OPTIONS"))?;
    if state.timestamps {
        setsockopt(raw, libc::SOL_TCP, libc::TCP_TIMESTAMP, &state.ts_val).map_err(sys("set TCP_TIMESTAMP"))?;
    }
    let w = RawRepairWindow {
        snd_wl1: state.window.snd_wl1,
        snd_wnd: state.window.snd_wnd,
        max_window: state.window.max_window,
        rcv_wnd: state.window.rcv_wnd,
        rcv_wup: state.window.rcv_wup,
    };
    setsockopt(raw, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW, &w).map_err(sys("set TCP_REPAIR_WINDOW"))?;
    if !sent.is_empty() {
        // The queue must fit in the send buffer, or the write would wait for room that only
        // ACKs (which a socket in repair mode does not process) can make. Fixed at least as
        // large as the kernel's autotuning would go, so throughput does not suffer for it.
        let size = libc::c_int::try_from(sent.len().saturating_mul(2).max(SEND_BUFFER_FLOOR)).unwrap_or(libc::c_int::MAX);
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &size).map_err(sys("SO_SNDBUFFORCE"))?;
        setsockopt(raw, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, &TCP_SEND_QUEUE).map_err(sys("TCP_REPAIR_QUEUE"))?;
        for chunk in sent.chunks(REPAIR_QUEUE_CHUNK) {
            let mut rest = chunk;
            while !rest.is_empty() {
                // SAFETY: `rest` is valid for its length. In repair mode with the send queue
                // selected, the bytes are queued as already sent; nothing goes on the wire.
                // Never blocks: a full buffer is an error, not a hang.
                let n = unsafe { libc::send(raw, rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT) };
                if n <= 0 {
                    return Err(sys("fill the send queue")(io::Error::last_os_error()));
                }
                rest = &rest[n as usize..];
            }
        }
    }
    let off = match resume {
        Resume::WithProbe => TCP_REPAIR_OFF,
        Resume::Quiet => TCP_REPAIR_OFF_NO_WP,
    };
    setsockopt(raw, libc::SOL_TCP, libc::TCP_REPAIR, &off).map_err(sys("TCP_REPAIR off"))?;
    Ok(fd)
}

/// `SOCK_DESTROY` (include/uapi/linux/sock_diag.h) and its request layout.
const SOCK_DESTROY: u16 = 21;
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `INET_DIAG_NOCOOKIE`: match by address alone.
const INET_DIAG_NOCOOKIE: u32 = !0;

/// Aborts the kernel socket of the connection `local` ↔ `remote` in this namespace, whatever its
/// state (`SOCK_DESTROY` through sock_diag, what `ss -K` does). Returns whether one existed.
///
/// A participant restarted after a crash finds the dead process's sockets still there, orphaned
/// and retransmitting into the egress guard; one of them holds the 4-tuple a returning
/// connection needs, and restore fails with `EADDRNOTAVAIL` until it is gone. The abort's reset
/// is dropped by the guard like everything else the orphan sends.
///
/// The kernel's lookup falls back to a listening socket on `local` when no connection matches;
/// call this only when a restore has just found the 4-tuple taken, on an address nothing
/// listens on (the VIP on a participant).
pub fn destroy_socket(local: SocketAddrV4, remote: SocketAddrV4) -> io::Result<bool> {
    // SAFETY: plain socket(2); checked before use.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut msg = Vec::with_capacity(72);
    msg.extend_from_slice(&72u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.push(libc::AF_INET as u8);
    msg.push(libc::IPPROTO_TCP as u8);
    msg.extend_from_slice(&[0, 0]); // ext, pad
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    msg.extend_from_slice(&local.port().to_be_bytes());
    msg.extend_from_slice(&remote.port().to_be_bytes());
    let mut addr16 = |ip: Ipv4Addr| {
        msg.extend_from_slice(&ip.octets());
        msg.extend_from_slice(&[0; 12]);
    };
    addr16(*local.ip());
    addr16(*remote.ip());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // interface
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    msg.extend_from_slice(&INET_DIAG_NOCOOKIE.to_ne_bytes());
    debug_assert_eq!(msg.len(), 72);
    // SAFETY: msg is valid for its length; the kernel is the default destination.
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 256];
    // SAFETY: answer is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // nlmsghdr (16 bytes) of type NLMSG_ERROR, then the error code (0 = done).
    let n = n as usize;
    if n < 20 || u16::from_ne_bytes([answer[4], answer[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected sock_diag answer"));
    }
    match -i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]) {
        0 => Ok(true),
        libc::ENOENT => Ok(false),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Closes a restored socket without a FIN or RST (re-enters repair mode first). Used when the
/// main withdraws a handoff after the participant restored it.
pub fn close_silently(fd: OwnedFd) {
    if let Err(e) = setsockopt(fd.as_raw_fd(), libc::SOL_TCP, libc::TCP_REPAIR, &TCP_REPAIR_ON) {
        tracing::warn!(error = %e, "could not enter repair mode before a silent close");
    }
    drop(fd);
}

#[cfg(test)]
mod tests {
    //! Loopback round trips through the real kernel: dump a connection, close it silently,
    //! restore it on a new socket, and check the peer sees one unbroken byte stream.
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::IntoRawFd;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn need_root() -> bool {
        if is_root() {
            return true;
        }
        assert!(std::env::var("CI").as_deref() != Ok("true"), "TCP_REPAIR tests need root (CAP_NET_ADMIN) under CI");
        eprintln!("SKIPPED: TCP_REPAIR tests need root");
        false
    }

    #[test]
    fn dump_close_restore_keeps_the_stream() {
        if !need_root() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let mut req = [0u8; 18];
        server.read_exact(&mut req).expect("read");
        server.write_all(b"hello ").expect("write");
        let mut got = [0u8; 6];
        client.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello ");
        // Wait until the client's ACK empties our send queue.
        for _ in 0..100 {
            if check_quiescent(&server).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        check_quiescent(&server).expect("quiescent");

        let guard = RepairGuard::enter(&server).expect("repair on");
        let state = guard.dump().expect("dump");
        assert_eq!(SocketAddrV4::new(Ipv4Addr::LOCALHOST, addr.port()), state.local);
        assert!(state.timestamps && state.sack, "loopback negotiates timestamps and SACK: {state:?}");
        guard.close_silently();
        drop(server);
        drop(listener);

        let restored = restore(&state, Resume::Quiet).expect("restore");
        // The restored socket segments at the connection's MSS, not the 536-byte default.
        let mss = getsockopt::<libc::c_int>(restored.as_raw_fd(), libc::SOL_TCP, libc::TCP_MAXSEG).expect("TCP_MAXSEG");
        assert!(mss > 1000, "restored segment size {mss}, connection MSS {}", state.mss);
        let mut restored = TcpStream::from(restored);
        restored.write_all(b"world").expect("write after restore");
        let mut rest = [0u8; 5];
        client.read_exact(&mut rest).expect("read after restore");
        assert_eq!(&rest, b"world");
        client.write_all(b"ping").expect("client write");
        let mut ping = [0u8; 4];
        restored.read_exact(&mut ping).expect("restored read");
        assert_eq!(&ping, b"ping");
        // An orderly close from the restored side reaches the client as EOF, not a reset.
        drop(restored);
        let mut tail = Vec::new();
        client.read_to_end(&mut tail).expect("clean EOF");
        assert!(tail.is_empty());
    }

    #[test]
    fn frozen_for_a_move_reports_the_unacknowledged_start_and_unread_bytes() {
        if !need_root() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        server.write_all(b"0123456789").expect("write");
        let mut got = [0u8; 10];
        client.read_exact(&mut got).expect("read");
        client.write_all(b"next request").expect("client write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before = {
            let g = RepairGuard::enter(&server).expect("repair on");
            let t = g.dump().expect("dump");
            g.leave().expect("repair off");
            t
        };
        let g = RepairGuard::enter(&server).expect("repair on");
        let frozen = g.freeze_for_move().expect("freeze");
        assert_eq!(frozen.unacked, 0, "the client acknowledged everything");
        assert_eq!(frozen.in_flight, 0);
        assert_eq!(frozen.tcp.snd_seq, before.snd_seq);
        assert_eq!(frozen.unread, b"next request".to_vec());
        assert_eq!(frozen.tcp.rcv_seq, before.rcv_seq, "peeking in repair mode consumes nothing");
        // The send window is closed while the queues are read; the record has the real one.
        assert_eq!(frozen.tcp.window, before.window);
        assert!(frozen.tcp.window.snd_wnd > 0);
        let now = getsockopt::<RawRepairWindow>(server.as_raw_fd(), libc::SOL_TCP, libc::TCP_REPAIR_WINDOW).expect("window");
        assert_eq!(now.snd_wnd, 0, "nothing new may leave the frozen socket");
        g.close_silently();
    }

    #[test]
    fn a_socket_holding_the_four_tuple_is_destroyed() {
        if !need_root() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let v4 = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => panic!("v4 only"),
        };
        let (local, remote) = (v4(server.local_addr().expect("local")), v4(client.local_addr().expect("remote")));
        // The kernel's lookup falls back to a listener on the local address: none may exist.
        drop(listener);
        assert!(destroy_socket(local, remote).expect("destroy"));
        let mut buf = [0u8; 1];
        let err = (&server).read(&mut buf).expect_err("the socket was aborted");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED));
        assert!(!destroy_socket(local, remote).expect("second destroy"), "nothing left to destroy");
    }

    #[test]
    fn bytes_restored_as_sent_reach_the_peer_by_retransmission() {
        if !need_root() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let guard = RepairGuard::enter(&server).expect("repair on");
        let state = guard.dump().expect("dump");
        guard.close_silently();
        drop(server);
        drop(listener);
        // "in flight" bytes the client never got: the restored kernel must resend them itself.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        // More than the default send buffer: must not block.
        let restored = restore_with_sent(&state, Resume::Quiet, &big).expect("restore");
        close_silently(restored);
        let restored = restore_with_sent(&state, Resume::Quiet, b"in flight, ").expect("restore");
        let mut restored = TcpStream::from(restored);
        restored.write_all(b"then new").expect("write");
        client.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        let mut got = [0u8; 19];
        client.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"in flight, then new");
    }

    #[test]
    fn a_dump_with_known_addresses_equals_the_full_dump() {
        if !need_root() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, accepted_from) = listener.accept().expect("accept");
        let guard = RepairGuard::enter(&server).expect("repair on");
        let local = sockaddr_v4(server.as_raw_fd(), false).expect("local");
        let std::net::SocketAddr::V4(remote) = accepted_from else { panic!("v4 only") };
        assert_eq!(guard.dump_known(local, remote).expect("dump with known addresses"), guard.dump().expect("dump"));
        guard.close_silently();
    }

    #[test]
    fn quiescence_detects_unread_bytes() {
        if !need_root() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.write_all(b"abc").expect("write");
        std::thread::sleep(std::time::Duration::from_millis(20));
        match check_quiescent(&server) {
            Err(RepairError::RecvQueueNotEmpty { bytes: 3 }) => {}
            other => panic!("expected 3 unread bytes, got {other:?}"),
        }
    }

    #[test]
    fn silent_close_sends_no_reset() {
        if !need_root() {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let guard = RepairGuard::enter(&server).expect("repair");
        guard.close_silently();
        let raw = server.into_raw_fd();
        // SAFETY: raw came from into_raw_fd and is closed exactly once here.
        unsafe { libc::close(raw) };
        client.set_read_timeout(Some(std::time::Duration::from_millis(200))).expect("timeout");
        let mut buf = [0u8; 1];
        let err = (&client).read(&mut buf).expect_err("no FIN and no RST may arrive");
        assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "got {err:?}");
    }
}
