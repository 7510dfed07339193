//! pod::setup / check / teardown (root). The "node" is a namespace too, and
//! pod functions run on a thread inside it, so nothing touches the host.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use common::{need_root, Namespaces};
use sluice_netdev::pod::{self, PodInterfaceSpec, GATEWAY};
use sluice_netdev::{sysctl_get, Error, Ipv4Net, NetHandle, Netns, Route, RTPROT_SLUICE};

fn spec(pod_ns: &Netns, container: &str, ip: &str) -> PodInterfaceSpec {
    PodInterfaceSpec {
        netns: pod_ns.path().to_path_buf(),
        ifname: "eth0".into(),
        host_ifname: pod::host_ifname(container, "eth0"),
        address: ip.parse().unwrap(),
        mtu: 1450,
    }
}

#[test]
fn setup_check_break_teardown() {
    if !need_root("setup_check_break_teardown") {
        return;
    }
    let mut g = Namespaces::new();
    let node = g.create("node");
    let podns = g.create("pod");
    let s = spec(&podns, "ctr-1", "10.244.1.5");

    let iface = node.run(|| pod::setup(&s)).unwrap().unwrap();
    assert_eq!(iface.host_ifname, s.host_ifname);
    assert_eq!(
        (iface.pod_ifname.as_str(), iface.address, iface.mtu),
        ("eth0", s.address, 1450)
    );

    // Inside the pod.
    let p = NetHandle::new(&podns).unwrap();
    let eth0 = p.link_info("eth0").unwrap().expect("eth0 in pod");
    assert!(eth0.up && p.link_info("lo").unwrap().unwrap().up);
    assert_eq!((eth0.mtu, eth0.mac), (1450, iface.pod_mac));
    assert_eq!(
        p.addresses("eth0").unwrap(),
        vec![Ipv4Net::new(s.address, 32).unwrap()]
    );
    let routes = p.routes(None).unwrap();
    assert!(
        routes.iter().any(|r| r.dst == Ipv4Net::default()
            && r.gateway == Some(GATEWAY)
            && r.dev.as_deref() == Some("eth0")
            && r.onlink),
        "{routes:?}"
    );
    assert!(routes
        .iter()
        .any(|r| r.dst == Ipv4Net::new(GATEWAY, 32).unwrap() && r.scope_link));
    assert_eq!(
        p.neighbours("eth0").unwrap(),
        vec![(GATEWAY, iface.host_mac)]
    );
    assert_eq!(
        p.list_links().unwrap().len(),
        2,
        "only lo and eth0 in the pod"
    );

    // On the node.
    let n = NetHandle::new(&node).unwrap();
    let host = n.link_info(&s.host_ifname).unwrap().expect("host veth");
    assert!(host.up);
    assert_eq!(
        (host.index, host.mac, host.mtu),
        (iface.host_ifindex, iface.host_mac, 1450)
    );
    let ours = n.routes(Some(RTPROT_SLUICE)).unwrap();
    assert_eq!(
        ours,
        vec![Route {
            dst: Ipv4Net::new(s.address, 32).unwrap(),
            dev: Some(s.host_ifname.clone()),
            scope_link: true,
            ..Route::default()
        }]
    );
    assert!(n
        .neighbours(&s.host_ifname)
        .unwrap()
        .contains(&(s.address, iface.pod_mac)));
    let conf = format!("net/ipv4/conf/{}", s.host_ifname);
    assert_eq!(
        sysctl_get(&node, &format!("{conf}/rp_filter")).unwrap(),
        "0"
    );
    assert_eq!(
        sysctl_get(&node, &format!("{conf}/forwarding")).unwrap(),
        "1"
    );
    // Only the veth and lo on the node: the temporary peer name is gone.
    assert_eq!(n.list_links().unwrap().len(), 2);

    let clean = node.run(|| pod::check(&iface, &s.netns)).unwrap().unwrap();
    assert!(clean.is_empty(), "{clean:?}");

    // Same ifname again (another attachment): AlreadyExists, nothing left.
    let dup = PodInterfaceSpec {
        host_ifname: pod::host_ifname("ctr-2", "eth0"),
        ..s.clone()
    };
    let e = node.run(|| pod::setup(&dup)).unwrap().unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    assert_eq!(n.link_index(&dup.host_ifname).unwrap(), None);
    assert_eq!(n.list_links().unwrap().len(), 2);

    // Break things; check must say what.
    assert!(p
        .delete_route(&Route {
            gateway: Some(GATEWAY),
            dev: Some("eth0".into()),
            protocol: 0,
            ..Route::default()
        })
        .unwrap());
    n.set_mtu(&s.host_ifname, 1400).unwrap();
    let problems = node.run(|| pod::check(&iface, &s.netns)).unwrap().unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("default route")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("MTU 1400")),
        "{problems:?}"
    );

    // Teardown twice.
    assert!(node
        .run(|| pod::teardown(&s.host_ifname, Some(s.address)))
        .unwrap()
        .unwrap());
    assert!(!node
        .run(|| pod::teardown(&s.host_ifname, Some(s.address)))
        .unwrap()
        .unwrap());
    assert_eq!(n.list_links().unwrap().len(), 1);
    assert_eq!(
        p.link_index("eth0").unwrap(),
        None,
        "pod end went with the host end"
    );
    let gone = node.run(|| pod::check(&iface, &s.netns)).unwrap().unwrap();
    assert!(gone.iter().any(|p| p.contains("eth0 missing")), "{gone:?}");
    assert!(
        gone.iter()
            .any(|p| p.contains("host veth") && p.contains("missing")),
        "{gone:?}"
    );
}

#[test]
fn setup_into_missing_netns_leaves_nothing() {
    if !need_root("setup_into_missing_netns_leaves_nothing") {
        return;
    }
    let mut g = Namespaces::new();
    let node = g.create("node");
    let missing = g.reserve("gone");
    let s = PodInterfaceSpec {
        netns: PathBuf::from("/run/netns").join(&missing),
        ifname: "eth0".into(),
        host_ifname: pod::host_ifname("ctr-missing", "eth0"),
        address: "10.244.9.9".parse().unwrap(),
        mtu: 1500,
    };
    let e = node.run(|| pod::setup(&s)).unwrap().unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert!(e.to_string().contains(&missing), "{e}");
    let n = NetHandle::new(&node).unwrap();
    assert_eq!(n.link_index(&s.host_ifname).unwrap(), None);
    assert_eq!(n.list_links().unwrap().len(), 1, "only lo");

    // Teardown of something never made, pod namespace gone: Ok(false).
    assert!(!node
        .run(|| pod::teardown(&s.host_ifname, Some(s.address)))
        .unwrap()
        .unwrap());
    let problems = node
        .run(|| {
            pod::check(
                &pod::PodInterface {
                    host_ifname: s.host_ifname.clone(),
                    host_ifindex: 0,
                    host_mac: [0; 6],
                    pod_ifname: "eth0".into(),
                    pod_mac: [0; 6],
                    address: s.address,
                    mtu: 1500,
                },
                &s.netns,
            )
        })
        .unwrap()
        .unwrap();
    assert!(
        problems.iter().any(|p| p.contains("does not exist")),
        "{problems:?}"
    );
}

#[test]
fn pod_to_pod_traffic_through_node() {
    if !need_root("pod_to_pod_traffic_through_node") {
        return;
    }
    let mut g = Namespaces::new();
    let node = g.create("node");
    let pa = g.create("pa");
    let pb = g.create("pb");
    let sa = spec(&pa, "ctr-a", "10.244.2.10");
    let sb = spec(&pb, "ctr-b", "10.244.2.11");
    node.run(|| pod::setup(&sa)).unwrap().unwrap();
    node.run(|| pod::setup(&sb)).unwrap().unwrap();

    let listener = pb
        .run(|| TcpListener::bind((sb.address, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
        peer.ip()
    });
    let mut c = pa
        .run(|| TcpStream::connect_timeout(&(sb.address, port).into(), Duration::from_secs(5)))
        .unwrap()
        .expect("pod a -> pod b TCP connect through the node");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(
        server.join().unwrap(),
        std::net::IpAddr::V4(sa.address),
        "no NAT on the way"
    );
    let _: Ipv4Addr = sa.address;
}
