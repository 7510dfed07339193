//! The CNI ADD result, its conversion between spec versions, and building it from the agent's
//! `Attachment`.
//!
//! One type covers every supported version: fields that only some versions have are optional
//! and `for_version` sets or strips them. Unknown fields (from other plugins in a chain) are
//! kept in `extra` so a prevResult passes through unchanged.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_api::Attachment;

use crate::error::{codes, CniError};
use crate::version::SpecVersion;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for a container-side interface; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// 1.1.0+.
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// 1.1.0+.
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6"; only in results before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    // The rest are 1.1.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// Decodes a result (e.g. a prevResult) of any supported version; failure is code 6.
    pub fn from_json(value: &Value) -> Result<Self, CniError> {
        Self::deserialize(value).map_err(|e| {
            CniError::new(
                codes::DECODE_FAILURE,
                "cannot decode CNI result (prevResult)",
            )
            .with_details(e.to_string())
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The result as `version` writes it: `ips[].version` before 1.0.0, the 1.1.0 interface and
    /// route fields only from 1.1.0.
    pub fn for_version(mut self, version: SpecVersion) -> Self {
        self.cni_version = version.as_str().to_string();
        for ip in &mut self.ips {
            ip.version = version.result_has_ip_version().then(|| {
                if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                }
                .to_string()
            });
        }
        if !version.result_has_1_1_fields() {
            for iface in &mut self.interfaces {
                iface.mtu = None;
                iface.socket_path = None;
                iface.pci_id = None;
            }
            for route in &mut self.routes {
                route.mtu = None;
                route.advmss = None;
                route.priority = None;
                route.table = None;
                route.scope = None;
            }
        }
        self
    }

    /// What sluice made for one attachment: the host-side veth, the pod-side interface (index 1)
    /// in `netns`, its address and routes.
    pub fn from_attachment(attachment: &Attachment, ifname: &str, netns: &Path) -> Self {
        let mtu = (attachment.mtu > 0).then_some(attachment.mtu);
        let interfaces = vec![
            Interface {
                name: attachment.host_ifname.clone(),
                mac: attachment.host_mac.clone(),
                mtu,
                ..Default::default()
            },
            Interface {
                name: ifname.to_string(),
                mac: attachment.pod_mac.clone(),
                mtu,
                sandbox: netns.to_string_lossy().into_owned(),
                ..Default::default()
            },
        ];
        let ips = vec![IpConfig {
            version: None,
            address: IpNet::V4(attachment.address),
            gateway: Some(IpAddr::V4(attachment.gateway)),
            interface: Some(1),
            extra: Map::new(),
        }];
        let routes = attachment
            .routes
            .iter()
            .map(|(dst, gw)| route_v4(*dst, *gw))
            .collect();
        Self {
            cni_version: String::new(),
            interfaces,
            ips,
            routes,
            dns: Dns::default(),
            extra: Map::new(),
        }
    }

    /// Chaining: appends `ours` after what earlier plugins reported, shifting our interface
    /// indices past theirs. A non-empty DNS from `ours` replaces theirs.
    pub fn append(&mut self, ours: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(ours.routes);
        if !ours.dns.is_empty() {
            self.dns = ours.dns;
        }
    }

    /// Index of the container-side interface named `ifname`, if listed.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && !i.sandbox.is_empty())
    }
}

fn route_v4(dst: ipnet::Ipv4Net, gw: Ipv4Addr) -> Route {
    Route {
        dst: IpNet::V4(dst),
        gw: (!gw.is_unspecified()).then_some(IpAddr::V4(gw)),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
        extra: Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_api::AttachmentKey;

    fn attachment() -> Attachment {
        Attachment {
            key: AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            address: "10.9.0.2/32".parse().unwrap(),
            gateway: "169.254.1.1".parse().unwrap(),
            mtu: 1450,
            host_ifname: "lxc1234".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            routes: vec![("0.0.0.0/0".parse().unwrap(), "169.254.1.1".parse().unwrap())],
        }
    }

    fn ours() -> CniResult {
        CniResult::from_attachment(&attachment(), "eth0", Path::new("/run/netns/p"))
    }

    #[test]
    fn v1_1_0_result_shape() {
        assert_eq!(
            ours().for_version(SpecVersion::V1_1_0).to_json(),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "lxc1234", "mac": "02:00:00:00:00:01", "mtu": 1450},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "mtu": 1450, "sandbox": "/run/netns/p"}
                ],
                "ips": [{"address": "10.9.0.2/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
            })
        );
    }

    #[test]
    fn v1_0_0_drops_the_1_1_fields() {
        let v = ours().for_version(SpecVersion::V1_0_0).to_json();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["interfaces"][1],
            json!({"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/p"})
        );
        assert_eq!(v["ips"][0].get("version"), None);
    }

    #[test]
    fn pre_1_0_results_carry_ip_version() {
        for version in [
            SpecVersion::V0_3_0,
            SpecVersion::V0_3_1,
            SpecVersion::V0_4_0,
        ] {
            let v = ours().for_version(version).to_json();
            assert_eq!(v["cniVersion"], version.as_str());
            assert_eq!(
                v["ips"][0],
                json!({"version": "4", "address": "10.9.0.2/32", "gateway": "169.254.1.1", "interface": 1})
            );
            assert_eq!(v["interfaces"][0].get("mtu"), None);
        }
        let mut v6 = ours();
        v6.ips[0].address = "fd00::2/128".parse().unwrap();
        assert_eq!(
            v6.for_version(SpecVersion::V0_4_0).ips[0]
                .version
                .as_deref(),
            Some("6")
        );
    }

    #[test]
    fn upgrading_an_old_result_drops_ip_version() {
        let old = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.0.0.5/24"}],
            "custom": {"kept": true}
        });
        let r = CniResult::from_json(&old)
            .unwrap()
            .for_version(SpecVersion::V1_1_0);
        assert_eq!(
            r.to_json(),
            json!({"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.5/24"}], "custom": {"kept": true}})
        );
    }

    #[test]
    fn append_shifts_interface_indices_and_keeps_prev() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "br0", "mac": "aa:bb:cc:dd:ee:ff"}, {"name": "net0", "sandbox": "/ns"}],
            "ips": [{"address": "192.168.1.5/24", "interface": 1}],
            "dns": {"nameservers": ["10.0.0.10"]}
        });
        let mut r = CniResult::from_json(&prev).unwrap();
        r.append(ours());
        let v = r.for_version(SpecVersion::V1_1_0).to_json();
        assert_eq!(v["interfaces"].as_array().unwrap().len(), 4);
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["ips"][1]["interface"], 3);
        assert_eq!(v["interfaces"][3]["name"], "eth0");
        assert_eq!(v["dns"], json!({"nameservers": ["10.0.0.10"]}));
    }

    #[test]
    fn undecodable_result_is_code_6() {
        let err = CniResult::from_json(&json!({"ips": [{"address": "not-an-ip"}]})).unwrap_err();
        assert_eq!(err.code, codes::DECODE_FAILURE);
        assert!(CniResult::from_json(&json!([1])).is_err());
    }

    #[test]
    fn sandbox_interface_lookup() {
        let r = ours();
        assert_eq!(r.sandbox_interface("eth0"), Some(1));
        assert_eq!(r.sandbox_interface("lxc1234"), None);
    }
}
