//! The CNI_* environment: parsing and the spec's validation rules.
//!
//! Parsing takes a lookup function rather than reading the process environment so tests (and the
//! runtime) can feed any values.

use std::ffi::OsString;
use std::path::PathBuf;

use sluice_api::{AttachmentKey, PodRef};

use crate::error::CniError;
use crate::version::Command;

pub const CNI_COMMAND: &str = "CNI_COMMAND";
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
pub const CNI_NETNS: &str = "CNI_NETNS";
pub const CNI_IFNAME: &str = "CNI_IFNAME";
pub const CNI_ARGS: &str = "CNI_ARGS";
pub const CNI_PATH: &str = "CNI_PATH";

/// Every variable the spec defines, so a runtime can clear stale ones.
pub const ALL_VARS: [&str; 6] = [
    CNI_COMMAND,
    CNI_CONTAINERID,
    CNI_NETNS,
    CNI_IFNAME,
    CNI_ARGS,
    CNI_PATH,
];

/// The raw environment of one invocation; empty variables count as unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

/// What ADD/DEL/CHECK need, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentEnv {
    pub key: AttachmentKey,
    /// Required for ADD and CHECK; DEL may run after the namespace is gone.
    pub netns: Option<PathBuf>,
    pub pod: Option<PodRef>,
    pub args: Vec<(String, String)>,
    pub cni_path: Vec<PathBuf>,
}

impl CniEnv {
    pub fn from_process() -> Result<Self, CniError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads and checks CNI_COMMAND; other variables are validated per command by `attachment`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, CniError> {
        let get = |name: &str| -> Result<Option<String>, CniError> {
            match lookup(name) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|v| {
                    CniError::invalid_env(name, &v.to_string_lossy(), "not valid UTF-8")
                }),
            }
        };
        let command = match get(CNI_COMMAND)? {
            None => return Err(CniError::missing_env(CNI_COMMAND)),
            Some(c) => Command::parse(&c).ok_or_else(|| {
                CniError::invalid_env(
                    CNI_COMMAND,
                    &c,
                    "not one of ADD, DEL, CHECK, GC, STATUS, VERSION",
                )
            })?,
        };
        Ok(Self {
            command,
            container_id: get(CNI_CONTAINERID)?,
            netns: get(CNI_NETNS)?,
            ifname: get(CNI_IFNAME)?,
            args: get(CNI_ARGS)?,
            path: get(CNI_PATH)?,
        })
    }

    /// Validates the variables ADD, DEL and CHECK need. ADD and CHECK require CNI_NETNS and
    /// CNI_PATH; DEL requires only the container id and interface name.
    pub fn attachment(&self) -> Result<AttachmentEnv, CniError> {
        let needs_netns = matches!(self.command, Command::Add | Command::Check);
        let container_id = required(CNI_CONTAINERID, self.container_id.as_deref())?;
        validate_container_id(container_id)
            .map_err(|why| CniError::invalid_env(CNI_CONTAINERID, container_id, &why))?;
        let ifname = required(CNI_IFNAME, self.ifname.as_deref())?;
        validate_ifname(ifname).map_err(|why| CniError::invalid_env(CNI_IFNAME, ifname, &why))?;
        let netns = match (&self.netns, needs_netns) {
            (None, true) => return Err(CniError::missing_env(CNI_NETNS)),
            (netns, _) => netns.as_ref().map(PathBuf::from),
        };
        if needs_netns {
            required(CNI_PATH, self.path.as_deref())?;
        }
        let args = parse_cni_args(self.args.as_deref().unwrap_or(""))?;
        Ok(AttachmentEnv {
            key: AttachmentKey {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            },
            netns,
            pod: pod_ref(&args),
            args,
            cni_path: split_cni_path(self.path.as_deref().unwrap_or("")),
        })
    }
}

fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, CniError> {
    value.ok_or_else(|| CniError::missing_env(name))
}

/// Spec: not empty, first character alphanumeric, then alphanumerics, `_`, `.` or `-`.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err("must start with an alphanumeric character".into())
        }
        Some(_) => {}
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!(
            "character {c:?} is not allowed (only alphanumerics, '_', '.', '-')"
        ));
    }
    Ok(())
}

/// Linux interface name rules: 1–15 bytes, not "." or "..", no '/', ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "is {} bytes long; Linux allows at most 15",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("must not be \".\" or \"..\"".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("must not contain {c:?}"));
    }
    Ok(())
}

/// `K=V;K=V`. An empty string means no arguments; a pair without `=` or with an empty key is
/// code 4.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::invalid_env(
                CNI_ARGS,
                raw,
                &format!("{pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

/// The Kubernetes pod, when both K8S_POD_NAMESPACE and K8S_POD_NAME are given.
pub fn pod_ref(args: &[(String, String)]) -> Option<PodRef> {
    let find = |key: &str| {
        args.iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    Some(PodRef {
        namespace: find("K8S_POD_NAMESPACE")?,
        name: find("K8S_POD_NAME")?,
    })
}

/// CNI_PATH is ':'-separated on Linux; empty entries are dropped.
pub fn split_cni_path(raw: &str) -> Vec<PathBuf> {
    raw.split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::codes;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        CniEnv::from_lookup(|name| map.get(name).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-1.x_y"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        key: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = base.iter().copied().filter(|(k, _)| *k != key).collect();
        v.push((key, value));
        v
    }

    #[test]
    fn full_add_environment_parses() {
        let a = env(ADD).unwrap().attachment().unwrap();
        assert_eq!(a.key.container_id, "abc-1.x_y");
        assert_eq!(a.key.ifname, "eth0");
        assert_eq!(a.netns, Some(PathBuf::from("/run/netns/p")));
        assert_eq!(
            a.pod,
            Some(PodRef {
                namespace: "default".into(),
                name: "web-0".into()
            })
        );
        assert_eq!(
            a.cni_path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(a.args.len(), 3);
    }

    #[test]
    fn missing_or_unknown_command_is_code_4() {
        let err = env(&[]).unwrap_err();
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(err.msg.contains("CNI_COMMAND"));
        let err = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(err.msg.contains("FROB"), "{}", err.msg);
    }

    #[test]
    fn add_requires_each_variable() {
        for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let err = env(&with(ADD, var, "")).unwrap().attachment().unwrap_err();
            assert_eq!(err.code, codes::INVALID_ENV);
            assert!(err.msg.contains(var), "{var}: {}", err.msg);
        }
    }

    #[test]
    fn del_needs_no_netns_or_path() {
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        let a = env(&vars).unwrap().attachment().unwrap();
        assert_eq!(a.netns, None);
        assert!(a.cni_path.is_empty());
        assert_eq!(a.pod, None);
    }

    #[test]
    fn container_id_rules() {
        for ok in ["a", "0abc", "a_b.c-d", "ABC123"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "a;b", "é"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
        let err = env(&with(ADD, "CNI_CONTAINERID", "-bad"))
            .unwrap()
            .attachment()
            .unwrap_err();
        assert!(
            err.msg.contains("CNI_CONTAINERID") && err.msg.contains("-bad"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn ifname_rules() {
        for ok in ["eth0", "a", "net1.100", "x23456789012345"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "x234567890123456",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
        let err = env(&with(ADD, "CNI_IFNAME", "eth:0"))
            .unwrap()
            .attachment()
            .unwrap_err();
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(
            err.msg.contains("CNI_IFNAME") && err.msg.contains("eth:0"),
            "{}",
            err.msg
        );
    }

    #[test]
    fn cni_args_parsing() {
        assert_eq!(parse_cni_args("").unwrap(), vec![]);
        assert_eq!(
            parse_cni_args("A=1;;B=x=y").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        let err = parse_cni_args("A=1;oops").unwrap_err();
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(
            err.msg.contains("CNI_ARGS") && err.msg.contains("oops"),
            "{}",
            err.msg
        );
        assert!(parse_cni_args("=v").is_err());
        assert_eq!(pod_ref(&parse_cni_args("K8S_POD_NAME=a").unwrap()), None);
    }

    #[test]
    fn non_utf8_is_code_4() {
        use std::os::unix::ffi::OsStringExt;
        let err = CniEnv::from_lookup(|name| match name {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_NETNS" => Some(OsString::from_vec(vec![0xff, 0xfe])),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(err.code, codes::INVALID_ENV);
        assert!(err.msg.contains("CNI_NETNS"), "{}", err.msg);
    }
}
