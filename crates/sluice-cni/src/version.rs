//! CNI spec versions sluice speaks, and which commands each version allows.

use std::fmt;

use crate::error::{codes, CniError};

/// The newest version: used for VERSION output and for errors when the request's version is
/// unknown.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Versions accepted in `cniVersion`, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// The CNI commands (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SpecVersion {
    pub const ALL: [SpecVersion; 5] = [
        SpecVersion::V0_3_0,
        SpecVersion::V0_3_1,
        SpecVersion::V0_4_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    pub const CURRENT: SpecVersion = SpecVersion::V1_1_0;

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Like `parse`, but the error is the spec's code 1 naming the version and the supported list.
    pub fn parse_supported(s: &str) -> Result<Self, CniError> {
        Self::parse(s).ok_or_else(|| {
            CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!(
                    "incompatible CNI version {s:?}: sluice-cni supports {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })
    }

    pub fn as_str(self) -> &'static str {
        SUPPORTED_VERSIONS[self as usize]
    }

    /// CHECK appeared in 0.4.0; GC and STATUS in 1.1.0.
    pub fn allows(self, command: Command) -> bool {
        match command {
            Command::Add | Command::Del | Command::Version => true,
            Command::Check => self >= SpecVersion::V0_4_0,
            Command::Gc | Command::Status => self >= SpecVersion::V1_1_0,
        }
    }

    /// Errors with code 1 when `command` is newer than this version.
    pub fn require(self, command: Command) -> Result<(), CniError> {
        if self.allows(command) {
            return Ok(());
        }
        let since = match command {
            Command::Check => "0.4.0",
            _ => "1.1.0",
        };
        Err(CniError::new(
            codes::INCOMPATIBLE_VERSION,
            format!("config version {self} does not allow {command} (needs cniVersion >= {since})"),
        ))
    }

    /// Results before 1.0.0 carry `ips[].version` ("4"/"6").
    pub fn result_has_ip_version(self) -> bool {
        self < SpecVersion::V1_0_0
    }

    /// 1.1.0 added interface mtu/socketPath/pciID and route mtu/advmss/priority/table/scope.
    pub fn result_has_1_1_fields(self) -> bool {
        self >= SpecVersion::V1_1_0
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_order() {
        for s in SUPPORTED_VERSIONS {
            assert_eq!(SpecVersion::parse(s).unwrap().as_str(), s);
        }
        assert!(SpecVersion::V0_3_1 < SpecVersion::V0_4_0);
        assert_eq!(SpecVersion::CURRENT.as_str(), CURRENT_VERSION);
    }

    #[test]
    fn unknown_versions_are_code_1_naming_the_list() {
        for bad in ["0.2.0", "1.1", "2.0.0", ""] {
            let err = SpecVersion::parse_supported(bad).unwrap_err();
            assert_eq!(err.code, codes::INCOMPATIBLE_VERSION);
            assert!(err.msg.contains(&format!("{bad:?}")), "{}", err.msg);
            assert!(
                err.msg.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
                "{}",
                err.msg
            );
        }
    }

    #[test]
    fn commands_per_version() {
        use Command::*;
        let v = SpecVersion::parse;
        assert!(v("0.3.1").unwrap().allows(Add));
        assert!(!v("0.3.1").unwrap().allows(Check));
        assert!(v("0.4.0").unwrap().allows(Check));
        assert!(!v("1.0.0").unwrap().allows(Gc));
        assert!(!v("1.0.0").unwrap().allows(Status));
        assert!(v("1.1.0").unwrap().allows(Gc));
        assert!(v("1.1.0").unwrap().allows(Status));
        let err = v("1.0.0").unwrap().require(Status).unwrap_err();
        assert_eq!(err.code, codes::INCOMPATIBLE_VERSION);
        assert!(err.msg.contains("STATUS"), "{}", err.msg);
    }

    #[test]
    fn command_names() {
        for c in ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"] {
            assert_eq!(Command::parse(c).unwrap().as_str(), c);
        }
        assert_eq!(Command::parse("add"), None);
    }
}
