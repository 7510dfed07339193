//! MAC address text form ("aa:bb:cc:dd:ee:ff").

/// Parse `aa:bb:cc:dd:ee:ff` (also accepts `-` as separator, any case).
/// Returns `None` on anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for byte in out.iter_mut() {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Format as lowercase `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mac = [0xaa, 0xbb, 0x0c, 0x01, 0xee, 0xff];
        assert_eq!(format_mac(mac), "aa:bb:0c:01:ee:ff");
        assert_eq!(parse_mac("aa:bb:0c:01:ee:ff"), Some(mac));
        assert_eq!(parse_mac("AA-BB-C-1-EE-FF"), Some(mac));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "gg:bb:cc:dd:ee:ff",
            "aaa:bb:cc:dd:ee:f",
            "aa::cc:dd:ee:ff",
        ] {
            assert_eq!(parse_mac(s), None, "{s}");
        }
    }
}
