//! Turning off the veth offloads that would hand a delay line frames it cannot forward.
//!
//! With its offloads on, a veth passes 64 KiB TCP "super-frames" (TSO/GSO) with unfinished
//! checksums (checksum offload) straight to its peer. A delay line reads frames with an
//! AF_PACKET socket and writes them out again on its other veth, where such a frame would be
//! bigger than the MTU and carry a wrong checksum. So the two veth ends that send into a delay
//! line (the node's `eth0` and the router's `veth<i>`) get every `tx-checksum-*` and
//! `*-segmentation` feature turned off, which makes the kernel segment and checksum in software
//! before a frame leaves, and the delay line's own two ends get GRO off, so that no frames are
//! merged before the delay line reads them. Every frame a delay line sees is then one wire
//! frame of at most the MTU with a valid checksum, and loss and jitter apply per packet.
//!
//! (`PACKET_VNET_HDR` would carry super-frames through with their offload metadata instead,
//! which is cheaper, but then one "lost packet" would be dozens of lost segments and jitter
//! would move whole bursts: not the link the topology describes.)
//!
//! This is what `ethtool -K <iface> tx off tso off gso off gro off` does, through the same
//! `SIOCETHTOOL` ioctl, by feature name, so that it needs no host tool. It never changes a
//! feature it was not asked to, and never an interface outside the given namespace.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::lab::LabError;
use crate::netns::in_namespace;

/// `ETHTOOL_GSSET_INFO`: how many strings a string set has.
const ETHTOOL_GSSET_INFO: u32 = 0x37;
/// `ETHTOOL_GSTRINGS`: the strings of a string set.
const ETHTOOL_GSTRINGS: u32 = 0x1b;
/// `ETHTOOL_GFEATURES`: available, requested and active features.
const ETHTOOL_GFEATURES: u32 = 0x3a;
/// `ETHTOOL_SFEATURES`: request features on or off.
const ETHTOOL_SFEATURES: u32 = 0x3b;
/// The string set of feature names (`ETH_SS_FEATURES`).
const ETH_SS_FEATURES: u32 = 4;
/// Length of one ethtool string (`ETH_GSTRING_LEN`).
const ETH_GSTRING_LEN: usize = 32;
/// Most feature names we accept from the kernel; it has about 70.
const MAX_FEATURES: usize = 1024;

/// Which end of a delay line's link an interface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Sends frames into a delay line: no checksum or segmentation offload.
    Sender,
    /// One of the delay line's own ends: no receive offload (GRO, LRO) merging frames.
    DelayLine,
}

impl End {
    /// Whether feature `name` (as `ethtool -k` lists it) must be off on this end.
    pub fn must_be_off(self, name: &str) -> bool {
        match self {
            End::Sender => {
                name.starts_with("tx-checksum")
                    || name.ends_with("-segmentation")
                    || name.starts_with("tx-gso-")
            }
            End::DelayLine => matches!(
                name,
                "rx-gro" | "rx-lro" | "rx-gro-hw" | "rx-gro-list" | "rx-udp-gro-forwarding"
            ),
        }
    }
}

/// `struct ethtool_sset_info` asking for one string set.
#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    data: [u32; 1],
}

/// What we use of one block of `struct ethtool_gfeatures` (32 features).
#[derive(Debug, Clone, Copy, Default)]
struct GetFeaturesBlock {
    /// Features that can be changed.
    available: u32,
    /// Features that are on.
    active: u32,
}

/// One block of `struct ethtool_sfeatures` (32 features).
#[derive(Debug, Clone, Copy, Default)]
struct SetFeaturesBlock {
    valid: u32,
    requested: u32,
}

/// An ethtool ioctl on one interface.
struct Ethtool {
    socket: OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
}

impl Ethtool {
    fn new(socket: OwnedFd, iface: &str) -> io::Result<Ethtool> {
        let mut name = [0; libc::IFNAMSIZ];
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an interface name",
            ));
        }
        for (to, from) in name.iter_mut().zip(iface.bytes()) {
            *to = from as libc::c_char;
        }
        Ok(Ethtool { socket, name })
    }

    /// Runs `SIOCETHTOOL` with `data`, a buffer that starts with the ethtool command.
    fn ioctl(&self, data: *mut u8) -> io::Result<libc::c_int> {
        let mut request = libc::ifreq {
            ifr_name: self.name,
            ifr_ifru: libc::__c_anonymous_ifr_ifru {
                ifru_data: data.cast(),
            },
        };
        // SAFETY: `request` names the interface and points at a buffer that the caller sized
        // for the command it holds; the kernel reads and writes only within it.
        let result =
            unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }

    /// The feature names, in bit order.
    fn feature_names(&self) -> io::Result<Vec<String>> {
        let mut info = SsetInfo {
            cmd: ETHTOOL_GSSET_INFO,
            reserved: 0,
            sset_mask: 1 << ETH_SS_FEATURES,
            data: [0],
        };
        self.ioctl(std::ptr::from_mut(&mut info).cast())?;
        let count = usize::try_from(info.data[0]).unwrap_or(usize::MAX);
        if info.sset_mask == 0 || count > MAX_FEATURES {
            return Err(io::Error::other("no usable feature string set"));
        }
        // `struct ethtool_gstrings`: cmd, string_set, len, then the strings; u32 words keep
        // the header aligned.
        let mut buffer = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
        buffer[0] = ETHTOOL_GSTRINGS;
        buffer[1] = ETH_SS_FEATURES;
        buffer[2] = u32::try_from(count).unwrap_or(0);
        self.ioctl(buffer.as_mut_ptr().cast())?;
        let bytes: Vec<u8> = buffer[3..]
            .iter()
            .flat_map(|word| word.to_ne_bytes())
            .collect();
        Ok(bytes
            .chunks(ETH_GSTRING_LEN)
            .map(|chunk| {
                let end = chunk.iter().position(|&b| b == 0).unwrap_or(chunk.len());
                String::from_utf8_lossy(&chunk[..end]).into_owned()
            })
            .collect())
    }

    /// The feature blocks for `count` features.
    fn features(&self, count: usize) -> io::Result<Vec<GetFeaturesBlock>> {
        let blocks = count.div_ceil(32);
        // `struct ethtool_gfeatures`: cmd, size, then the blocks (four u32 each).
        let mut buffer = vec![0u32; 2 + blocks * 4];
        buffer[0] = ETHTOOL_GFEATURES;
        buffer[1] = u32::try_from(blocks).unwrap_or(0);
        self.ioctl(buffer.as_mut_ptr().cast())?;
        Ok(buffer[2..]
            .chunks_exact(4)
            // available, requested, active, never_changed
            .map(|block| GetFeaturesBlock {
                available: block[0],
                active: block[2],
            })
            .collect())
    }

    /// Requests every feature in `off` (bit masks per block) off.
    fn turn_off(&self, off: &[SetFeaturesBlock]) -> io::Result<()> {
        let mut buffer = vec![0u32; 2 + off.len() * 2];
        buffer[0] = ETHTOOL_SFEATURES;
        buffer[1] = u32::try_from(off.len()).unwrap_or(0);
        for (words, block) in buffer[2..].chunks_exact_mut(2).zip(off) {
            words[0] = block.valid;
            words[1] = block.requested;
        }
        // A positive result (ETHTOOL_F_WISH and friends) means "not exactly as asked"; the
        // caller reads the features back and judges.
        self.ioctl(buffer.as_mut_ptr().cast()).map(drop)
    }
}

/// The names among `names` that are active in `blocks` and must be off on `end`.
fn active_offenders(names: &[String], blocks: &[GetFeaturesBlock], end: End) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .filter(|(bit, name)| {
            let block = blocks.get(bit / 32).copied().unwrap_or_default();
            block.active & (1 << (bit % 32)) != 0 && end.must_be_off(name)
        })
        .map(|(_, name)| name.clone())
        .collect()
}

fn offload_error(ns: &str, iface: &str, reason: String) -> LabError {
    LabError::Offload {
        ns: ns.to_owned(),
        iface: iface.to_owned(),
        reason,
    }
}

/// An ethtool handle on `iface` in namespace `ns`, with the kernel's feature names.
fn open(ns: &str, iface: &str) -> Result<(Ethtool, Vec<String>), LabError> {
    let socket = in_namespace(ns, || {
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
    })?
    .map_err(|error| offload_error(ns, iface, format!("socket: {error}")))?;
    let ethtool =
        Ethtool::new(socket, iface).map_err(|error| offload_error(ns, iface, error.to_string()))?;
    let names = ethtool
        .feature_names()
        .map_err(|error| offload_error(ns, iface, format!("reading feature names: {error}")))?;
    Ok((ethtool, names))
}

/// Turns off, on interface `iface` in namespace `ns`, the offloads that `end` must not have,
/// and checks that they are off.
pub fn turn_off(ns: &str, iface: &str, end: End) -> Result<(), LabError> {
    let (ethtool, names) = open(ns, iface)?;
    let read = |ethtool: &Ethtool| {
        ethtool
            .features(names.len())
            .map_err(|error| offload_error(ns, iface, format!("reading features: {error}")))
    };
    let before = read(&ethtool)?;
    let mut off = vec![SetFeaturesBlock::default(); before.len()];
    for (bit, name) in names.iter().enumerate() {
        let mask = 1 << (bit % 32);
        let available = before
            .get(bit / 32)
            .is_some_and(|block| block.available & mask != 0);
        if available && end.must_be_off(name) {
            off[bit / 32].valid |= mask;
        }
    }
    if off.iter().any(|block| block.valid != 0) {
        ethtool
            .turn_off(&off)
            .map_err(|error| offload_error(ns, iface, format!("setting features: {error}")))?;
    }
    let left = active_offenders(&names, &read(&ethtool)?, end);
    if !left.is_empty() {
        return Err(offload_error(
            ns,
            iface,
            format!("cannot turn off {}", left.join(", ")),
        ));
    }
    tracing::debug!(ns, iface, ?end, "offloads off");
    Ok(())
}

/// `ETHTOOL_SGRO`: turn generic receive offload on or off.
const ETHTOOL_SGRO: u32 = 0x2c;

/// Turns generic receive offload of `iface` in namespace `ns` on or off (`ethtool -K <iface>
/// gro on|off`). On a veth, GRO gives the device a NAPI context of its own.
pub fn set_gro(ns: &str, iface: &str, on: bool) -> Result<(), LabError> {
    let (ethtool, _) = open(ns, iface)?;
    let mut value = [ETHTOOL_SGRO, u32::from(on)];
    ethtool
        .ioctl(value.as_mut_ptr().cast())
        .map_err(|error| offload_error(ns, iface, format!("setting GRO: {error}")))?;
    Ok(())
}

/// The features of `iface` in namespace `ns` that are on and that `end` must not have; empty
/// after [`turn_off`]. For tests and diagnostics.
pub fn offenders(ns: &str, iface: &str, end: End) -> Result<Vec<String>, LabError> {
    let (ethtool, names) = open(ns, iface)?;
    let blocks = ethtool
        .features(names.len())
        .map_err(|error| offload_error(ns, iface, format!("reading features: {error}")))?;
    Ok(active_offenders(&names, &blocks, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_lose_checksum_and_segmentation_offloads_only() {
        for name in [
            "tx-checksum-ip-generic",
            "tx-checksum-ipv4",
            "tx-tcp-segmentation",
            "tx-tcp6-segmentation",
            "tx-udp-segmentation",
            "tx-generic-segmentation",
            "tx-gso-list",
            "tx-gso-partial",
        ] {
            assert!(End::Sender.must_be_off(name), "{name}");
            assert!(!End::DelayLine.must_be_off(name), "{name}");
        }
        for name in [
            "tx-scatter-gather",
            "rx-checksum",
            "highdma",
            "tx-vlan-hw-insert",
        ] {
            assert!(!End::Sender.must_be_off(name), "{name}");
        }
        for name in ["rx-gro", "rx-lro", "rx-gro-list", "rx-udp-gro-forwarding"] {
            assert!(End::DelayLine.must_be_off(name), "{name}");
            assert!(!End::Sender.must_be_off(name), "{name}");
        }
    }

    #[test]
    fn offenders_are_the_active_features_that_must_be_off() {
        let names: Vec<String> = [
            "tx-scatter-gather",
            "tx-checksum-ip-generic",
            "tx-tcp-segmentation",
        ]
        .map(str::to_owned)
        .into();
        let blocks = [GetFeaturesBlock {
            available: 0b111,
            active: 0b011,
        }];
        assert_eq!(
            active_offenders(&names, &blocks, End::Sender),
            ["tx-checksum-ip-generic"]
        );
        assert_eq!(
            active_offenders(&names, &blocks, End::DelayLine),
            Vec::<String>::new()
        );
    }
}
