//! Namespaces, links, addresses, routes, neighbours, sysctls (root).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{need_root, Namespaces};
use sluice_netdev::{
    sysctl_get, sysctl_set, Error, Ipv4Net, NetHandle, Netns, Route, RTPROT_KERNEL, RTPROT_SLUICE,
};

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Veth `a_if` in `a` <-> `b_if` in `b`, both up, with the given addresses.
fn veth_between(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    let ha = NetHandle::new(a).unwrap();
    let hb = NetHandle::new(b).unwrap();
    ha.create_veth(a_if, b_if).unwrap();
    ha.move_to_netns(b_if, b).unwrap();
    ha.add_address(a_if, net(a_addr)).unwrap();
    hb.add_address(b_if, net(b_addr)).unwrap();
    ha.set_up(a_if).unwrap();
    hb.set_up(b_if).unwrap();
}

/// TCP echo of one message and a UDP round trip from `client_ns` to `server_ip`.
pub fn assert_tcp_udp(client_ns: &Netns, server_ns: &Netns, server_ip: Ipv4Addr) {
    let listener = server_ns
        .run(|| TcpListener::bind((server_ip, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    // connect() happens inside the client namespace; the socket stays there.
    let mut c = client_ns
        .run(|| TcpStream::connect_timeout(&(server_ip, port).into(), Duration::from_secs(5)))
        .unwrap()
        .unwrap_or_else(|e| panic!("TCP connect to {server_ip}:{port}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    server.join().unwrap();

    let us = server_ns
        .run(|| UdpSocket::bind((server_ip, 0)))
        .unwrap()
        .unwrap();
    let uc = client_ns
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    us.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    uc.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    uc.send_to(b"ping", us.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = us.recv_from(&mut buf).expect("UDP datagram to server");
    assert_eq!(&buf[..n], b"ping");
    us.send_to(b"pong", from).unwrap();
    let (n, _) = uc.recv_from(&mut buf).expect("UDP reply to client");
    assert_eq!(&buf[..n], b"pong");
}

#[test]
fn netns_lifecycle() {
    if !need_root("netns_lifecycle") {
        return;
    }
    let mut g = Namespaces::new();
    let ns = g.create("life");
    let name = ns.name().unwrap().to_string();
    assert_eq!(ns.path(), std::path::Path::new("/run/netns").join(&name));
    assert!(Netns::list().unwrap().contains(&name));

    let again = Netns::create(&name).unwrap_err();
    assert!(matches!(again, Error::AlreadyExists(_)), "{again}");

    let opened = Netns::open(&name).unwrap();
    assert_eq!(opened.name(), Some(name.as_str()));
    let by_path = Netns::from_path(ns.path()).unwrap();
    assert_eq!(by_path.name(), Some(name.as_str()));

    // Loopback is up and is the only link in a fresh namespace.
    let h = NetHandle::new(&opened).unwrap();
    let links = h.list_links().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(h.link_info("lo").unwrap().unwrap().up);

    // A different namespace from ours: its lo has another inode at least.
    let here = Netns::current().unwrap();
    let inode =
        |n: &Netns| std::fs::metadata(n.path()).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    assert_ne!(inode(&here).unwrap(), inode(&ns).unwrap());

    Netns::delete(&name).unwrap();
    assert!(!Netns::list().unwrap().contains(&name));
    assert!(Netns::open(&name).unwrap_err().is_not_found());
    assert!(Netns::from_path(ns.path()).unwrap_err().is_not_found());
    Netns::delete(&name).unwrap(); // idempotent
    assert!(matches!(
        Netns::create("a/b"),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn veth_tcp_and_udp() {
    if !need_root("veth_tcp_and_udp") {
        return;
    }
    let mut g = Namespaces::new();
    let a = g.create("a");
    let b = g.create("b");
    veth_between(&a, "va", "10.99.0.1/24", &b, "vb", "10.99.0.2/24");

    let ha = NetHandle::new(&a).unwrap();
    let hb = NetHandle::new(&b).unwrap();
    let va = ha.link_info("va").unwrap().unwrap();
    assert_eq!(va.kind.as_deref(), Some("veth"));
    assert!(va.up);
    assert_eq!(ha.link_index("vb").unwrap(), None, "vb moved away");
    assert!(hb.link_index("vb").unwrap().is_some());
    assert_eq!(hb.addresses("vb").unwrap(), vec![net("10.99.0.2/24")]);
    // Adding again is fine.
    hb.add_address("vb", net("10.99.0.2/24")).unwrap();

    hb.set_mtu("vb", 1400).unwrap();
    hb.set_mac("vb", [0x02, 0, 0, 0, 0, 0x42]).unwrap();
    let vb = hb.link_info("vb").unwrap().unwrap();
    assert_eq!((vb.mtu, vb.mac), (1400, [0x02, 0, 0, 0, 0, 0x42]));

    assert_tcp_udp(&a, &b, "10.99.0.2".parse().unwrap());
    assert_tcp_udp(&b, &a, "10.99.0.1".parse().unwrap());

    // Errors name things and map to the right variants.
    let e = ha.create_veth("va", "other").unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    let e = ha.set_up("nosuchdev").unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().contains("nosuchdev"),
        "{e}"
    );
    assert!(matches!(
        ha.create_veth("much-too-long-name", "x"),
        Err(Error::InvalidArgument(_))
    ));

    ha.set_down("va").unwrap();
    assert!(!ha.link_info("va").unwrap().unwrap().up);
    ha.rename("va", "va2").unwrap();
    assert_eq!(ha.link_index("va").unwrap(), None);
    assert_eq!(ha.link_index("va2").unwrap(), Some(va.index));
    assert!(ha.delete_link("va2").unwrap());
    assert_eq!(
        hb.link_index("vb").unwrap(),
        None,
        "peer deleted with its veth"
    );
    assert!(!ha.delete_link("va2").unwrap());
}

#[test]
fn bridge_with_two_veths() {
    if !need_root("bridge_with_two_veths") {
        return;
    }
    let mut g = Namespaces::new();
    let sw = g.create("sw");
    let x = g.create("x");
    let y = g.create("y");
    let h = NetHandle::new(&sw).unwrap();
    h.create_bridge("br0").unwrap();
    for (port, peer, ns, addr) in [
        ("px", "ex", &x, "10.97.0.1/24"),
        ("py", "ey", &y, "10.97.0.2/24"),
    ] {
        h.create_veth(port, peer).unwrap();
        h.move_to_netns(peer, ns).unwrap();
        h.set_master(port, "br0").unwrap();
        h.set_up(port).unwrap();
        let hn = NetHandle::new(ns).unwrap();
        hn.add_address(peer, net(addr)).unwrap();
        hn.set_up(peer).unwrap();
    }
    let br = h.link_info("br0").unwrap().unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up);
    for port in ["px", "py"] {
        assert_eq!(
            h.link_info(port).unwrap().unwrap().master,
            Some(br.index),
            "{port}"
        );
    }
    assert_tcp_udp(&x, &y, "10.97.0.2".parse().unwrap());
}

#[test]
fn vxlan_external() {
    if !need_root("vxlan_external") {
        return;
    }
    let mut g = Namespaces::new();
    let ns = g.create("vx");
    let h = NetHandle::new(&ns).unwrap();
    let mac = [0x02, 0x5c, 0, 0, 0, 1];
    h.create_vxlan_external("sluice_vxlan", 8472, 1450, mac)
        .unwrap();
    let l = h.link_info("sluice_vxlan").unwrap().unwrap();
    assert_eq!(l.kind.as_deref(), Some("vxlan"));
    assert!(l.noarp(), "NOARP not set: flags {:#x}", l.flags);
    assert_eq!((l.mtu, l.mac, l.up), (1450, mac, false));
    h.set_up("sluice_vxlan").unwrap();
    assert!(h.link_info("sluice_vxlan").unwrap().unwrap().up);
    let e = h
        .create_vxlan_external("sluice_vxlan", 8472, 1450, mac)
        .unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    assert!(h.delete_link("sluice_vxlan").unwrap());
}

#[test]
fn routes_by_protocol() {
    if !need_root("routes_by_protocol") {
        return;
    }
    let mut g = Namespaces::new();
    let a = g.create("ra");
    let b = g.create("rb");
    veth_between(&a, "r0", "10.98.0.1/24", &b, "r1", "10.98.0.2/24");
    let h = NetHandle::new(&a).unwrap();

    let via = Route {
        dst: net("10.200.0.0/16"),
        gateway: Some("10.98.0.2".parse().unwrap()),
        ..Route::default()
    };
    let dev = Route {
        dst: net("10.201.0.0/24"),
        dev: Some("r0".into()),
        scope_link: true,
        mtu: Some(1400),
        ..Route::default()
    };
    let onlink = Route {
        dst: net("0.0.0.0/0"),
        gateway: Some("169.254.1.1".parse().unwrap()),
        dev: Some("r0".into()),
        onlink: true,
        ..Route::default()
    };
    for r in [&via, &dev, &onlink, &via] {
        h.replace_route(r).unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    let mut ours = h.routes(Some(RTPROT_SLUICE)).unwrap();
    ours.sort_by_key(|r| r.dst);
    let mut via_read = via.clone();
    via_read.dev = Some("r0".into()); // the kernel resolves the device
    assert_eq!(ours, vec![onlink.clone(), via_read, dev.clone()]);

    let all = h.routes(None).unwrap();
    assert!(
        all.iter()
            .any(|r| r.dst == net("10.98.0.0/24") && r.protocol == RTPROT_KERNEL),
        "{all:?}"
    );

    // Replace changes the gateway in place.
    let via2 = Route {
        gateway: Some("10.98.0.3".parse().unwrap()),
        ..via.clone()
    };
    h.replace_route(&via2).unwrap();
    let got: Vec<_> = h
        .routes(Some(RTPROT_SLUICE))
        .unwrap()
        .into_iter()
        .filter(|r| r.dst == via.dst)
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].gateway, via2.gateway);

    assert!(h.delete_route(&via2).unwrap());
    assert!(!h.delete_route(&via2).unwrap());
    assert!(h.delete_route(&dev).unwrap());
    assert!(h.delete_route(&onlink).unwrap());
    assert!(h.routes(Some(RTPROT_SLUICE)).unwrap().is_empty());
    assert!(!h
        .delete_route(&Route {
            dev: Some("gone0".into()),
            ..dev.clone()
        })
        .unwrap());

    let bad = Route {
        dst: net("10.0.0.1/8"),
        dev: Some("r0".into()),
        ..Route::default()
    };
    assert!(matches!(
        h.replace_route(&bad),
        Err(Error::InvalidArgument(_))
    ));
    let e = h
        .replace_route(&Route {
            dev: Some("gone0".into()),
            ..dev
        })
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[test]
fn neighbours_replace() {
    if !need_root("neighbours_replace") {
        return;
    }
    let mut g = Namespaces::new();
    let a = g.create("na");
    let b = g.create("nb");
    veth_between(&a, "n0", "10.96.0.1/24", &b, "n1", "10.96.0.2/24");
    let h = NetHandle::new(&a).unwrap();
    let ip: Ipv4Addr = "10.96.0.77".parse().unwrap();
    h.replace_neighbour("n0", ip, [2, 0, 0, 0, 0, 1]).unwrap();
    assert!(h
        .neighbours("n0")
        .unwrap()
        .contains(&(ip, [2, 0, 0, 0, 0, 1])));
    h.replace_neighbour("n0", ip, [2, 0, 0, 0, 0, 2]).unwrap();
    let n = h.neighbours("n0").unwrap();
    assert!(
        n.contains(&(ip, [2, 0, 0, 0, 0, 2])) && !n.contains(&(ip, [2, 0, 0, 0, 0, 1])),
        "{n:?}"
    );
    assert!(h.neighbours("nosuch").unwrap_err().is_not_found());
}

#[test]
fn sysctl_per_namespace() {
    if !need_root("sysctl_per_namespace") {
        return;
    }
    let mut g = Namespaces::new();
    let a = g.create("sa");
    let b = g.create("sb");
    sysctl_set(&a, "net/ipv4/ip_forward", "1").unwrap();
    assert_eq!(sysctl_get(&a, "net/ipv4/ip_forward").unwrap(), "1");
    assert_eq!(sysctl_get(&a, "net.ipv4.ip_forward").unwrap(), "1");
    // Per namespace: b is untouched.
    assert_eq!(sysctl_get(&b, "net/ipv4/ip_forward").unwrap(), "0");
    sysctl_set(&a, "net.ipv4.conf.lo.rp_filter", "0").unwrap();
    assert!(sysctl_get(&a, "net/ipv4/nosuch")
        .unwrap_err()
        .is_not_found());
    assert!(matches!(
        sysctl_set(&a, "net/../../etc/x", "1"),
        Err(Error::InvalidArgument(_))
    ));
}
