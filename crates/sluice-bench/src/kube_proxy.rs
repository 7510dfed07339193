//! The rules kube-proxy's iptables and nftables proxiers write for a set of ClusterIP
//! Services, reproduced from their documented shapes so the comparison is against what a
//! real cluster runs: chain names hashed as kube-proxy hashes them, one `KUBE-SERVICES` rule
//! per service port, random-probability endpoint selection, masquerade marks, DNAT per
//! endpoint; and for nftables the `service-ips` verdict map with `numgen` dispatch.

use std::fmt::Write;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// One service port and its endpoints, as kube-proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// The port's name ("" for an unnamed single port).
    pub port_name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// "namespace/name:portname", kube-proxy's ServicePortName string.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 (standard alphabet) of `bytes`, without padding.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            out.push(BASE32[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The first 16 characters of base32(sha256(text)), as kube-proxy names its chains.
fn hash16(text: &str) -> String {
    base32(&Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// `KUBE-SVC-<hash>` of a service port.
pub fn service_chain(sp: &ServicePort) -> String {
    format!(
        "KUBE-SVC-{}",
        hash16(&(sp.port_name_string() + sp.protocol))
    )
}

/// `KUBE-SEP-<hash>` of one endpoint of a service port.
pub fn endpoint_chain(sp: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!(
            "{}{}{}:{}",
            sp.port_name_string(),
            sp.protocol,
            ep.0,
            ep.1
        ))
    )
}

/// The `KUBE-SERVICES` rule of a service port.
fn services_jump(sp: &ServicePort) -> String {
    format!(
        "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {p} -p {p} -d {ip}/32 --dport {port} -j {}",
        sp.port_name_string(),
        service_chain(sp),
        p = sp.protocol,
        ip = sp.cluster_ip,
        port = sp.port
    )
}

/// A service port's `KUBE-SVC-*` chain and its endpoints' `KUBE-SEP-*` chains: declarations
/// into `chains`, rules into `rules`.
fn service_chains(sp: &ServicePort, pod_cidr: &str, chains: &mut String, rules: &mut String) {
    let svc = service_chain(sp);
    let name = sp.port_name_string();
    let _ = writeln!(chains, ":{svc} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d {ip}/32 --dport {port} ! -s {pod_cidr} -j KUBE-MARK-MASQ",
        p = sp.protocol,
        ip = sp.cluster_ip,
        port = sp.port
    );
    let n = sp.endpoints.len();
    for (i, ep) in sp.endpoints.iter().enumerate() {
        let sep = endpoint_chain(sp, *ep);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let probability = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{name} -> {}:{}\"{probability} -j {sep}",
            ep.0, ep.1
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
            ep.0
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -m {p} -p {p} -j DNAT --to-destination {}:{}",
            ep.0,
            ep.1,
            p = sp.protocol
        );
    }
}

/// What kube-proxy's partial sync writes when one service port's endpoints change from
/// `before` to `all[changed]`: the whole `KUBE-SERVICES` chain again, the changed service's
/// chains, and the removal of endpoint chains that are gone.
pub fn iptables_update(
    all: &[ServicePort],
    changed: usize,
    before: &ServicePort,
    pod_cidr: &str,
) -> String {
    let after = &all[changed];
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::new();
    for sp in all {
        let _ = writeln!(rules, "{}", services_jump(sp));
    }
    rules.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    service_chains(after, pod_cidr, &mut chains, &mut rules);
    for ep in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let sep = endpoint_chain(before, *ep);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let _ = writeln!(rules, "-X {sep}");
    }
    chains + &rules + "COMMIT\n"
}

/// The `iptables-restore --noflush` input kube-proxy's iptables mode writes for `services`,
/// with `pod_cidr` the cluster's pod range (non-pod sources are masqueraded).
pub fn iptables_restore(services: &[ServicePort], pod_cidr: &str) -> String {
    let mut filter = String::from("*filter\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
    ] {
        let _ = writeln!(filter, ":{chain} - [0:0]");
    }
    filter.push_str(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-EXTERNAL-SERVICES\n\
         -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );

    let mut nat = String::from("*nat\n");
    let mut rules = String::new();
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(nat, ":{chain} - [0:0]");
    }
    rules.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    );
    for sp in services {
        let _ = writeln!(rules, "{}", services_jump(sp));
        service_chains(sp, pod_cidr, &mut nat, &mut rules);
    }
    rules.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    nat.push_str(&rules);
    nat.push_str("COMMIT\n");
    filter + &nat
}

fn nft_base(sp: &ServicePort) -> String {
    format!(
        "{}-{}/{}/{}/{}",
        &hash16(&(sp.port_name_string() + sp.protocol))[..8],
        sp.namespace,
        sp.name,
        sp.protocol,
        sp.port_name
    )
}

fn nft_service_chain(sp: &ServicePort) -> String {
    format!("service-{}", nft_base(sp))
}

fn nft_endpoint_chain(sp: &ServicePort, ep: (Ipv4Addr, u16)) -> String {
    let hash = hash16(&format!(
        "{}{}{}:{}",
        sp.port_name_string(),
        sp.protocol,
        ep.0,
        ep.1
    ));
    format!(
        "endpoint-{}-{}__{}/{}",
        &hash[..8],
        nft_base(sp),
        ep.0,
        ep.1
    )
}

/// A service chain (masquerade mark, `numgen` dispatch) and the chains of `new_endpoints`.
fn nft_service(
    sp: &ServicePort,
    pod_cidr: &str,
    new_endpoints: &[(Ipv4Addr, u16)],
    out: &mut String,
) {
    let svc = nft_service_chain(sp);
    let _ = writeln!(out, "add chain ip kube-proxy {svc}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {svc} ip daddr {} {} dport {} ip saddr != {pod_cidr} jump mark-for-masquerade",
        sp.cluster_ip, sp.protocol, sp.port
    );
    let mut arms = Vec::new();
    for (i, ep) in sp.endpoints.iter().enumerate() {
        let chain = nft_endpoint_chain(sp, *ep);
        if new_endpoints.contains(ep) {
            let _ = writeln!(out, "add chain ip kube-proxy {chain}");
            let _ = writeln!(
                out,
                "add rule ip kube-proxy {chain} ip saddr {} jump mark-for-masquerade",
                ep.0
            );
            let _ = writeln!(
                out,
                "add rule ip kube-proxy {chain} meta l4proto {} dnat to {}:{}",
                sp.protocol, ep.0, ep.1
            );
        }
        arms.push(format!("{i} : goto {chain}"));
    }
    if !arms.is_empty() {
        let _ = writeln!(
            out,
            "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}",
            arms.len(),
            arms.join(" , ")
        );
    }
}

/// What kube-proxy's nftables mode writes when one service port's endpoints change from
/// `before` to `after`: one transaction touching only that service's chains.
pub fn nftables_update(before: &ServicePort, after: &ServicePort, pod_cidr: &str) -> String {
    let mut out = format!("flush chain ip kube-proxy {}\n", nft_service_chain(after));
    let new: Vec<(Ipv4Addr, u16)> = after
        .endpoints
        .iter()
        .copied()
        .filter(|e| !before.endpoints.contains(e))
        .collect();
    nft_service(after, pod_cidr, &new, &mut out);
    for ep in before
        .endpoints
        .iter()
        .filter(|e| !after.endpoints.contains(e))
    {
        let _ = writeln!(
            out,
            "delete chain ip kube-proxy {}",
            nft_endpoint_chain(before, *ep)
        );
    }
    out
}

/// The `nft -f` input kube-proxy's nftables mode writes for `services`.
pub fn nftables(services: &[ServicePort], pod_cidr: &str) -> String {
    let mut out = String::from("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n");
    out.push_str(
        "add chain ip kube-proxy mark-for-masquerade\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
         add chain ip kube-proxy masquerading\n\
         add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n\
         add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }\n\
         add chain ip kube-proxy services\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add rule ip kube-proxy nat-output jump services\n\
         add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n\
         add rule ip kube-proxy nat-postrouting jump masquerading\n\
         add chain ip kube-proxy services-filter\n\
         add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }\n\
         add rule ip kube-proxy filter-forward ct state new jump services-filter\n",
    );
    for sp in services {
        nft_service(sp, pod_cidr, &sp.endpoints, &mut out);
        let _ = writeln!(
            out,
            "add element ip kube-proxy cluster-ips {{ {} }}",
            sp.cluster_ip
        );
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} . {} . {} : goto {} }}",
            sp.cluster_ip,
            sp.protocol,
            sp.port,
            nft_service_chain(sp)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<ServicePort> {
        (0..3u8)
            .map(|i| ServicePort {
                namespace: "bench".into(),
                name: format!("svc-{i}"),
                port_name: "http".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10 + i),
                port: 80,
                protocol: "tcp",
                endpoints: vec![
                    (Ipv4Addr::new(10, 244, 1, 2 + i), 8080),
                    (Ipv4Addr::new(10, 244, 2, 2 + i), 8080),
                ],
            })
            .collect()
    }

    #[test]
    fn base32_matches_rfc_4648_vectors() {
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foob"), "MZXW6YQ");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn chain_names_are_kube_proxy_hashes() {
        let sp = &three()[0];
        let svc = service_chain(sp);
        assert!(svc.starts_with("KUBE-SVC-") && svc.len() == 9 + 16, "{svc}");
        let expected = base32(&Sha256::digest(b"bench/svc-0:httptcp"))[..16].to_string();
        assert_eq!(svc, format!("KUBE-SVC-{expected}"));
        let sep = endpoint_chain(sp, sp.endpoints[0]);
        assert!(sep.starts_with("KUBE-SEP-") && sep.len() == 25);
        assert_ne!(sep, endpoint_chain(sp, sp.endpoints[1]));
    }

    #[test]
    fn iptables_rules_have_kube_proxys_shape() {
        let text = iptables_restore(&three(), "10.244.0.0/16");
        let nat = &text[text.find("*nat").unwrap()..];
        let services: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(
            services.len(),
            4,
            "one per service port, then nodeports last"
        );
        assert!(services[3].contains("--dst-type LOCAL -j KUBE-NODEPORTS"));
        assert!(services[0].contains(
            "-m comment --comment \"bench/svc-0:http cluster IP\" -m tcp -p tcp -d 10.96.0.10/32 --dport 80 -j KUBE-SVC-"
        ));
        let svc = service_chain(&three()[0]);
        let svc_rules: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(svc_rules.len(), 3, "masquerade mark + one per endpoint");
        assert!(svc_rules[0].ends_with("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        assert!(svc_rules[1]
            .contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"));
        assert!(
            !svc_rules[2].contains("statistic"),
            "the last endpoint is unconditional"
        );
        assert_eq!(nat.matches("-j DNAT --to-destination").count(), 6);
        assert!(nat.contains("-j DNAT --to-destination 10.244.1.2:8080"));
        assert!(nat.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"));
        assert!(nat.contains("-j MASQUERADE --random-fully"));
        assert!(text.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ));
        assert_eq!(text.matches("COMMIT").count(), 2);
        // Every chain used is declared.
        for l in nat.lines().filter(|l| l.starts_with("-A KUBE-")) {
            let chain = l.split_whitespace().nth(1).unwrap();
            assert!(nat.contains(&format!(":{chain} - [0:0]")), "{chain}");
        }
    }

    #[test]
    fn probabilities_follow_one_over_remaining() {
        let mut sp = three().remove(0);
        sp.endpoints = (0..3).map(|i| (Ipv4Addr::new(10, 244, 9, i), 80)).collect();
        let text = iptables_restore(&[sp], "10.244.0.0/16");
        assert!(text.contains("--probability 0.3333333333"));
        assert!(text.contains("--probability 0.5000000000"));
    }

    #[test]
    fn an_endpoint_change_rewrites_only_what_kube_proxy_rewrites() {
        let before = three();
        let mut after = before.clone();
        after[1].endpoints = vec![(Ipv4Addr::new(10, 244, 3, 9), 8080)];
        let ipt = iptables_update(&after, 1, &before[1], "10.244.0.0/16");
        assert_eq!(
            ipt.matches("-A KUBE-SERVICES").count(),
            4,
            "all jumps again"
        );
        assert_eq!(
            ipt.matches("-j DNAT").count(),
            1,
            "only the changed service"
        );
        assert!(ipt.contains("--to-destination 10.244.3.9:8080"));
        for old in &before[1].endpoints {
            assert!(ipt.contains(&format!("-X {}", endpoint_chain(&before[1], *old))));
        }
        let nft = nftables_update(&before[1], &after[1], "10.244.0.0/16");
        assert!(nft.starts_with("flush chain ip kube-proxy service-"));
        assert_eq!(nft.matches("dnat to").count(), 1);
        assert_eq!(nft.matches("delete chain").count(), 2);
        assert!(nft.contains("numgen random mod 1 vmap"));
    }

    #[test]
    fn nftables_rules_dispatch_through_a_verdict_map() {
        let text = nftables(&three(), "10.244.0.0/16");
        assert!(text.contains("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict"));
        assert_eq!(
            text.matches("add element ip kube-proxy service-ips")
                .count(),
            3
        );
        assert!(text.contains(
            "add element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 : goto service-"
        ));
        assert_eq!(text.matches("numgen random mod 2 vmap").count(), 3);
        assert_eq!(text.matches("dnat to ").count(), 6);
        assert!(text.contains("masquerade fully-random"));
        assert_eq!(
            text.matches("add element ip kube-proxy cluster-ips")
                .count(),
            3
        );
    }
}
