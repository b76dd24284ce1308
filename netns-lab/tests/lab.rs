//! End-to-end tests of real labs: they create namespaces, veths and qdiscs, so they need root.
//!
//! Without root a test is skipped with a loud message, unless `CI=true`, where missing root is
//! a failure. Each test uses its own lab name and its own /21 of 198.18.0.0/15, so tests run in
//! parallel with each other and with other crates' labs. A [`Cleanup`] guard removes the lab
//! even when an assertion fails halfway.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use baton_lab::{Lab, LabError, Role, Topology};
use common::{have_root, icmp_checksum, in_netns, namespaces_of, Cleanup};
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;

/// How long any single network check waits for an answer.
const NET_TIMEOUT: Duration = Duration::from_secs(3);

fn topology(name: &str, block: &str) -> Topology {
    Topology::default_topology()
        .with_name(name)
        .with_block(block.parse().expect("test block parses"))
}

/// Sends ICMP echo requests from namespace `ns` to `dst` and returns the source address of the
/// first matching echo reply.
fn ping(ns: &str, dst: Ipv4Addr) -> Result<Ipv4Addr, String> {
    ping_with_ttl(ns, dst).map(|(from, _)| from)
}

/// Like [`ping`], and also returns the TTL the reply arrived with: 64 from a host on the same
/// segment, one less per router crossed.
fn ping_with_ttl(ns: &str, dst: Ipv4Addr) -> Result<(Ipv4Addr, u8), String> {
    let fd: OwnedFd = in_netns(ns, || {
        socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Icmp,
        )
    })
    .map_err(|e| format!("raw socket: {e}"))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000))
        .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    let id: u16 = 0xba70;
    let deadline = Instant::now() + NET_TIMEOUT;
    for seq in 1u16.. {
        if Instant::now() >= deadline {
            break;
        }
        let mut request = vec![8, 0, 0, 0];
        request.extend_from_slice(&id.to_be_bytes());
        request.extend_from_slice(&seq.to_be_bytes());
        request.extend_from_slice(b"baton-lab echo");
        let checksum = icmp_checksum(&request);
        request[2..4].copy_from_slice(&checksum.to_be_bytes());
        let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
        sendto(fd.as_raw_fd(), &request, &to, MsgFlags::empty())
            .map_err(|e| format!("sendto: {e}"))?;
        let mut buf = [0u8; 1500];
        // Raw sockets see every ICMP packet for the namespace; wait for our reply.
        while let Ok((len, Some(from))) = recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
            let header_len = usize::from(buf[0] & 0x0f) * 4;
            let Some(icmp) = buf.get(header_len..len) else {
                continue;
            };
            if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                return Ok((from.ip(), buf[8]));
            }
        }
    }
    Err(format!("no echo reply from {dst} within {NET_TIMEOUT:?}"))
}

#[test]
fn lab_routes_the_vip_returns_directly_and_tears_down() {
    const NAME: &str = "labt1";
    if !have_root("lab_routes_the_vip_returns_directly_and_tears_down") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let lab = Lab::up(&topology(NAME, "198.19.248.0/21")).expect("lab comes up");
    let vip = Ipv4Addr::new(203, 0, 113, 10);
    assert_eq!(lab.vip(), vip);
    assert_eq!(lab.name(), NAME);
    assert_eq!(
        namespaces_of(NAME),
        ["router", "main", "p-fra", "p-iad", "p-sin", "c-fra", "c-iad", "c-sin"]
            .iter()
            .map(|node| format!("{NAME}-{node}"))
            .collect()
    );

    let c_fra = lab.node("c-fra").expect("c-fra").clone();
    let p_fra = lab.node("p-fra").expect("p-fra").clone();
    assert_eq!(c_fra.addr, Ipv4Addr::new(198, 19, 252, 2));
    assert_eq!(p_fra.addr, Ipv4Addr::new(198, 19, 249, 2));
    assert_eq!(lab.nodes_with_role(Role::Client).len(), 3);
    assert_eq!(lab.nodes_with_role(Role::Router)[0].ns, "labt1-router");

    // A client pings the VIP; the main answers it.
    assert_eq!(ping(&c_fra.ns, vip), Ok(vip));
    // A client reaches a participant's own address, by ICMP and by TCP.
    assert_eq!(ping(&c_fra.ns, p_fra.addr), Ok(p_fra.addr));
    let listener =
        in_netns(&p_fra.ns, move || TcpListener::bind((p_fra.addr, 0))).expect("listener in p-fra");
    let target = listener.local_addr().expect("listener address");
    let mut client = in_netns(&c_fra.ns, move || {
        TcpStream::connect_timeout(&target, NET_TIMEOUT)
    })
    .expect("c-fra connects to p-fra");
    let (mut served, peer) = listener.accept().expect("p-fra accepts");
    assert_eq!(peer.ip(), IpAddr::V4(c_fra.addr));
    served.write_all(b"from p-fra").expect("write");
    drop(served);
    let mut reply = String::new();
    client.read_to_string(&mut reply).expect("read");
    assert_eq!(reply, "from p-fra");

    // Direct return: a participant sends from the VIP straight to a client, and the router
    // forwards it although its route to the VIP points at the main.
    let receiver = in_netns(&c_fra.ns, move || UdpSocket::bind((c_fra.addr, 0))).expect("bind");
    receiver
        .set_read_timeout(Some(NET_TIMEOUT))
        .expect("timeout");
    let to = receiver.local_addr().expect("receiver address");
    let sender = in_netns(&p_fra.ns, move || UdpSocket::bind((vip, 0))).expect("bind VIP");
    sender.send_to(b"direct", to).expect("send");
    let mut buf = [0u8; 16];
    let (len, from) = receiver
        .recv_from(&mut buf)
        .expect("datagram from the VIP arrives");
    assert_eq!(&buf[..len], b"direct");
    assert_eq!(
        from,
        SocketAddr::V4(SocketAddrV4::new(
            vip,
            sender.local_addr().expect("addr").port()
        ))
    );

    // The participant's direct-return sysctls and the router's forwarding.
    let sysctls = lab
        .run(
            "p-fra",
            &[
                "sysctl",
                "-n",
                "net.ipv4.conf.all.arp_ignore",
                "net.ipv4.conf.eth0.arp_ignore",
                "net.ipv4.conf.all.arp_announce",
                "net.ipv4.conf.eth0.arp_announce",
                "net.ipv4.conf.all.rp_filter",
                "net.ipv4.conf.eth0.rp_filter",
            ],
        )
        .expect("sysctl in p-fra");
    assert_eq!(
        String::from_utf8_lossy(&sysctls.stdout),
        "1\n1\n2\n2\n0\n0\n"
    );
    let forwarding = lab
        .run(
            "router",
            &[
                "sysctl",
                "-n",
                "net.ipv4.ip_forward",
                "net.ipv4.conf.all.rp_filter",
            ],
        )
        .expect("sysctl in router");
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout), "1\n0\n");
    let lo = lab
        .run("p-sin", &["ip", "-o", "-4", "addr", "show", "lo"])
        .expect("ip addr");
    assert!(String::from_utf8_lossy(&lo.stdout).contains("inet 203.0.113.10/32"));

    // The main's link is rate limited in both directions.
    for (node, dev) in [("main", "eth0"), ("router", "veth0")] {
        let qdisc = lab
            .run(node, &["tc", "qdisc", "show", "dev", dev])
            .expect("tc");
        let text = String::from_utf8_lossy(&qdisc.stdout);
        assert!(
            text.contains("tbf") && text.contains("rate 10Gbit"),
            "{node} {dev}: {text}"
        );
    }

    // command() runs inside the node's namespace, and run() reports failures with stderr.
    let output = lab
        .command("c-iad", "ip")
        .expect("command")
        .args(["-o", "-4", "addr", "show", "eth0"])
        .output()
        .expect("ip runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("inet 198.19.253.2/24"));
    match lab.run("c-iad", &["ip", "link", "show", "nosuch0"]) {
        Err(LabError::Command { stderr, .. }) => assert!(stderr.contains("nosuch0"), "{stderr}"),
        other => panic!("expected a command error, got {other:?}"),
    }
    assert!(matches!(
        lab.command("nosuch", "true"),
        Err(LabError::NoSuchNode { .. })
    ));

    // The lab's GeoIP database maps every client to its city.
    let reader = maxminddb::Reader::open_readfile(lab.geoip_path()).expect("geoip opens");
    for (node, city) in [
        ("c-fra", "Mainz"),
        ("c-iad", "Washington"),
        ("c-sin", "Johor Bahru"),
    ] {
        let addr = lab.node(node).expect("client").addr;
        let found: maxminddb::geoip2::City = reader.lookup(IpAddr::V4(addr)).expect("found");
        let names = found.city.and_then(|c| c.names).unwrap_or_default();
        assert_eq!(names.get("en").copied(), Some(city), "{node}");
        let location = found.location.expect("location");
        let expected = lab
            .node(node)
            .expect("client")
            .location
            .clone()
            .expect("location");
        assert_eq!(
            (location.latitude, location.longitude),
            (Some(expected.lat), Some(expected.lon))
        );
    }

    // Another process finds the lab through its state file; dropping that handle keeps it.
    let opened = Lab::open(NAME).expect("open");
    assert_eq!(opened.nodes(), lab.nodes());
    drop(opened);
    assert_eq!(namespaces_of(NAME).len(), 8);

    // Down kills what runs in the lab, and removes pins, state and namespaces.
    let mut sleeper = lab
        .command("c-sin", "sleep")
        .expect("command")
        .arg("600")
        .spawn()
        .expect("spawn");
    std::fs::create_dir_all(lab.pin_dir().join("maps")).expect("pin dir");
    let state_dir = lab.state_dir().to_owned();
    let pin_dir = lab.pin_dir();
    assert!(state_dir.join("state.json").exists());
    lab.down().expect("down");
    let status = sleeper.wait().expect("sleeper exits");
    assert!(!status.success(), "sleep was stopped: {status:?}");
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
    assert!(!state_dir.exists(), "{} remains", state_dir.display());
    assert!(!pin_dir.exists(), "{} remains", pin_dir.display());
    assert!(matches!(Lab::open(NAME), Err(LabError::NoSuchLab { .. })));
    Lab::down_by_name(NAME).expect("down of a lab that is gone is fine");
}

#[test]
fn up_cleans_a_crashed_lab_and_spares_other_labs() {
    const NAME: &str = "labt2";
    const OTHER: &str = "labt2-b";
    if !have_root("up_cleans_a_crashed_lab_and_spares_other_labs") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let _cleanup_other = Cleanup(OTHER);

    // A lab that "crashed": still up, its state file lost, plus a stray namespace.
    Lab::up(&topology(NAME, "198.19.240.0/21"))
        .expect("first up")
        .keep();
    std::fs::remove_dir_all(Path::new("/run/baton-lab").join(NAME)).expect("drop state");
    baton_lab::netns::tool("ip", &["netns", "add", "labt2-stray"]).expect("stray namespace");
    // Another lab whose namespaces share the `labt2-` prefix.
    let other = Lab::up(&topology(OTHER, "198.19.232.0/21")).expect("other lab up");
    let other_namespaces = namespaces_of(OTHER);
    assert_eq!(other_namespaces.len(), 8);

    let lab = Lab::up(&topology(NAME, "198.19.240.0/21")).expect("up over the crashed lab");
    let mine = namespaces_of(NAME);
    assert!(
        !mine.contains("labt2-stray"),
        "the stray namespace was removed"
    );
    assert!(
        other_namespaces.is_subset(&mine),
        "the other lab's namespaces are untouched"
    );
    assert_eq!(mine.len(), 16);
    assert_eq!(
        ping(&lab.node("c-sin").expect("c-sin").ns, lab.vip()),
        Ok(lab.vip())
    );

    lab.down().expect("down");
    assert_eq!(
        namespaces_of(NAME),
        other_namespaces,
        "only the other lab is left"
    );
    assert_eq!(
        ping(&other.node("c-iad").expect("c-iad").ns, other.vip()),
        Ok(other.vip())
    );
    other.down().expect("other down");
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
}

#[test]
fn up_refuses_a_namespace_that_another_lab_owns() {
    const NAME: &str = "labt3";
    const OTHER: &str = "labt3-x";
    if !have_root("up_refuses_a_namespace_that_another_lab_owns") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let _cleanup_other = Cleanup(OTHER);
    // Lab `labt3` with node `x-c1` and lab `labt3-x` with node `c1` both want `labt3-x-c1`.
    let mine = Topology::from_yaml(
        "name: labt3\nblock: 198.19.224.0/21\nvip: 203.0.113.10\nnodes:\n\
         - { name: main, role: main }\n- { name: x-c1, role: client }\n",
    )
    .expect("topology");
    let theirs = Topology::from_yaml(
        "name: labt3-x\nblock: 198.19.216.0/21\nvip: 203.0.113.10\nnodes:\n\
         - { name: main, role: main }\n- { name: c1, role: client }\n",
    )
    .expect("topology");
    let other = Lab::up(&theirs).expect("other lab up");
    match Lab::up(&mine) {
        Err(LabError::NamespaceTaken { ns, owner }) => {
            assert_eq!((ns.as_str(), owner.as_str()), ("labt3-x-c1", OTHER));
        }
        other => panic!("expected NamespaceTaken, got {other:?}"),
    }
    let expected: BTreeSet<String> = ["labt3-x-c1", "labt3-x-main", "labt3-x-router"]
        .map(str::to_owned)
        .into();
    assert_eq!(
        namespaces_of(NAME),
        expected,
        "nothing of labt3 was built, nothing of labt3-x lost"
    );
    assert!(!Path::new("/run/baton-lab/labt3").exists());
    assert_eq!(
        ping(&other.node("c1").expect("c1").ns, other.vip()),
        Ok(other.vip())
    );
    other.down().expect("down");
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
}

#[test]
fn cli_brings_a_lab_up_runs_commands_in_it_and_takes_it_down() {
    const NAME: &str = "labt4";
    if !have_root("cli_brings_a_lab_up_runs_commands_in_it_and_takes_it_down") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_baton-lab"))
            .args(args)
            .output()
            .expect("baton-lab runs")
    };
    let up = cli(&["up", "--name", NAME, "--block", "198.19.208.0/21"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let status = cli(&["status", "--name", NAME]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let table = String::from_utf8_lossy(&status.stdout);
    let c_sin = table
        .lines()
        .find(|line| line.starts_with("c-sin "))
        .expect("c-sin row");
    let cells: Vec<&str> = c_sin
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells,
        [
            "c-sin",
            "client",
            "labt4-c-sin",
            "198.19.214.2/24",
            "Johor Bahru, MY",
            "0"
        ]
    );

    let exec = cli(&[
        "exec", "c-fra", "--name", NAME, "--", "ip", "-o", "-4", "addr", "show", "eth0",
    ]);
    assert!(exec.status.success());
    assert!(String::from_utf8_lossy(&exec.stdout).contains("inet 198.19.212.2/24"));
    let exit = cli(&["exec", "c-fra", "--name", NAME, "--", "sh", "-c", "exit 3"]);
    assert_eq!(exit.status.code(), Some(3), "exec passes the exit code on");
    let missing = cli(&["exec", "nosuch", "--name", NAME, "--", "true"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no node `nosuch`"));

    let down = cli(&["down", "--name", NAME]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
    let status = cli(&["status", "--name", NAME]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("no lab named `labt4` is up"));
}

/// The link-local multicast group of the LAN test.
const LAN_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 66, 1);

/// The UDP port of the LAN test.
const LAN_PORT: u16 = 7381;

/// A UDP socket in `ns` on 0.0.0.0:[`LAN_PORT`] that has joined [`LAN_GROUP`] on `addr`.
fn lan_receiver(ns: &str, addr: Ipv4Addr) -> UdpSocket {
    let socket = in_netns(ns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, LAN_PORT))?;
        socket.join_multicast_v4(&LAN_GROUP, &addr)?;
        Ok::<_, std::io::Error>(socket)
    })
    .unwrap_or_else(|error| panic!("receiver in {ns}: {error}"));
    socket
        .set_read_timeout(Some(NET_TIMEOUT))
        .expect("read timeout");
    socket
}

/// The next datagram on `socket`, with its sender.
fn next_datagram(socket: &UdpSocket, who: &str) -> (String, SocketAddr) {
    let mut buf = [0u8; 64];
    let (len, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|error| panic!("{who} received nothing: {error}"));
    (String::from_utf8_lossy(&buf[..len]).into_owned(), from)
}

/// `(interface, address)` of every IPv4 address in the namespace of `node`.
fn ipv4_addresses(lab: &Lab, node: &str) -> BTreeSet<(String, String)> {
    let output = lab
        .run(node, &["ip", "-o", "-4", "addr", "show"])
        .expect("ip addr");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            // `3: lan0    inet 198.19.128.1/24 brd ... scope global lan0 ...`
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[1].to_owned(), fields[3].to_owned())
        })
        .collect()
}

/// Which of `names` exist as interfaces in this (the root) namespace.
fn root_interfaces(names: &[&str]) -> BTreeSet<String> {
    let output = baton_lab::netns::tool("ip", &["-o", "link", "show"]).expect("ip link");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| names.contains(&name.as_str()))
        .collect()
}

#[test]
fn lan_members_share_a_segment_and_the_router_routes_the_rest() {
    const NAME: &str = "lantest";
    if !have_root("lan_members_share_a_segment_and_the_router_routes_the_rest") {
        return;
    }
    let _cleanup = Cleanup(NAME);
    let ours = ["lan0", "veth0", "veth1", "veth2", "veth3"];
    let in_root_before = root_interfaces(&ours);
    // c1 opens the LAN, so the router's address on link 0 is on the bridge; the main comes
    // between the members and keeps the second /24 of the block.
    let topology = Topology::from_yaml(
        "name: lantest\nblock: 198.19.128.0/21\nvip: 203.0.113.10\nnodes:\n\
         - { name: c1, role: client, lan: office }\n\
         - { name: main, role: main }\n\
         - { name: c2, role: client, lan: office, rate: 100mbit }\n\
         - { name: c3, role: client, lan: office }\n",
    )
    .expect("topology");
    let lab = Lab::up(&topology).expect("lab comes up");
    let node = |name: &str| lab.node(name).expect("node").clone();
    let (c1, c2, c3, main) = (node("c1"), node("c2"), node("c3"), node("main"));
    let addresses: Vec<_> = lab
        .nodes()
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                n.addr.to_string(),
                n.gateway.to_string(),
                n.subnet.to_string(),
            )
        })
        .collect();
    let expected = [
        ("router", "198.19.128.1", "198.19.128.1", "198.19.128.0/21"),
        ("c1", "198.19.128.2", "198.19.128.1", "198.19.128.0/24"),
        ("main", "198.19.129.2", "198.19.129.1", "198.19.129.0/24"),
        ("c2", "198.19.128.3", "198.19.128.1", "198.19.128.0/24"),
        ("c3", "198.19.128.4", "198.19.128.1", "198.19.128.0/24"),
    ]
    .map(|(name, addr, gateway, subnet)| {
        (name, addr.to_owned(), gateway.to_owned(), subnet.to_owned())
    });
    assert_eq!(addresses, expected);
    assert_eq!(lab.node("router").expect("router").iface, "lan0");

    // The nodes hold those addresses; in the router the LAN's address is on the bridge and
    // the members' veths have none.
    let pairs = |rows: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        rows.iter()
            .map(|&(dev, addr)| (dev.to_owned(), addr.to_owned()))
            .collect()
    };
    assert_eq!(
        ipv4_addresses(&lab, "router"),
        pairs(&[
            ("lo", "127.0.0.1/8"),
            ("lan0", "198.19.128.1/24"),
            ("veth1", "198.19.129.1/24"),
        ])
    );
    for (name, addr) in [
        ("c1", "198.19.128.2/24"),
        ("c2", "198.19.128.3/24"),
        ("c3", "198.19.128.4/24"),
        ("main", "198.19.129.2/24"),
    ] {
        let mut expected = pairs(&[("lo", "127.0.0.1/8"), ("eth0", addr)]);
        if name == "main" {
            expected.insert(("lo".to_owned(), "203.0.113.10/32".to_owned()));
        }
        assert_eq!(ipv4_addresses(&lab, name), expected, "{name}");
    }
    let bridge = lab
        .run("router", &["ip", "-d", "-o", "link", "show", "lan0"])
        .expect("ip link");
    let bridge = String::from_utf8_lossy(&bridge.stdout);
    assert!(
        bridge.contains("bridge ")
            && bridge.contains("mcast_snooping 0")
            && bridge.contains("state UP"),
        "{bridge}"
    );
    let ports = lab
        .run("router", &["ip", "-o", "link", "show", "master", "lan0"])
        .expect("ip link");
    let ports: BTreeSet<String> = String::from_utf8_lossy(&ports.stdout)
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect();
    assert_eq!(ports, ["veth0", "veth2", "veth3"].map(str::to_owned).into());
    let rp_filter = lab
        .run("router", &["sysctl", "-n", "net.ipv4.conf.lan0.rp_filter"])
        .expect("sysctl");
    assert_eq!(String::from_utf8_lossy(&rp_filter.stdout), "0\n");

    // A LAN member's rate shapes both ends of its own port.
    for (node, dev) in [("c2", "eth0"), ("router", "veth2")] {
        let qdisc = lab
            .run(node, &["tc", "qdisc", "show", "dev", dev])
            .expect("tc");
        let text = String::from_utf8_lossy(&qdisc.stdout);
        assert!(
            text.contains("tbf") && text.contains("rate 100Mbit"),
            "{node} {dev}: {text}"
        );
    }

    // Members reach each other directly (no TTL spent), the main through the router.
    assert_eq!(ping_with_ttl(&c1.ns, c2.addr), Ok((c2.addr, 64)));
    assert_eq!(ping_with_ttl(&c3.ns, c1.addr), Ok((c1.addr, 64)));
    assert_eq!(ping_with_ttl(&c1.ns, main.addr), Ok((main.addr, 63)));
    assert_eq!(ping_with_ttl(&main.ns, c3.addr), Ok((c3.addr, 63)));
    assert_eq!(ping(&c2.ns, lab.vip()), Ok(lab.vip()));

    // Link-local multicast and the subnet broadcast from c1 reach c2 and c3.
    let receivers = [
        ("c2", lan_receiver(&c2.ns, c2.addr)),
        ("c3", lan_receiver(&c3.ns, c3.addr)),
    ];
    let at_main = lan_receiver(&main.ns, main.addr);
    let c1_addr = c1.addr;
    let sender = in_netns(&c1.ns, move || UdpSocket::bind((c1_addr, 0))).expect("sender");
    sender.set_broadcast(true).expect("SO_BROADCAST");
    let from = sender.local_addr().expect("sender address");
    let broadcast = Ipv4Addr::new(198, 19, 128, 255);
    // TTL 8 too: even a datagram allowed to cross routers stays on the LAN, because the
    // router does no multicast routing.
    for (ttl, to, payload) in [
        (1, LAN_GROUP, "multicast ttl 1"),
        (8, LAN_GROUP, "multicast ttl 8"),
        (1, broadcast, "broadcast"),
    ] {
        sender.set_multicast_ttl_v4(ttl).expect("IP_MULTICAST_TTL");
        sender
            .send_to(payload.as_bytes(), (to, LAN_PORT))
            .expect("send");
        for (who, receiver) in &receivers {
            assert_eq!(
                next_datagram(receiver, who),
                (payload.to_owned(), from),
                "{who}"
            );
        }
    }
    // The main got none of them: the first datagram it sees is a unicast sent after them all,
    // which the router does forward.
    sender
        .send_to(b"unicast", (main.addr, LAN_PORT))
        .expect("send unicast");
    assert_eq!(
        next_datagram(&at_main, "main"),
        ("unicast".to_owned(), from)
    );
    at_main
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    let late = at_main.recv_from(&mut buf);
    assert!(
        late.as_ref().is_err_and(|error| matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "main received more: {late:?}"
    );

    // Down removes the bridge with the router's namespace and leaves nothing behind.
    let state_dir = lab.state_dir().to_owned();
    lab.down().expect("down");
    assert_eq!(namespaces_of(NAME), BTreeSet::new());
    assert!(!state_dir.exists(), "{} remains", state_dir.display());
    assert_eq!(root_interfaces(&ours), in_root_before);
}
