//! The Rust mirrors in `sluice_datapath::abi` must match the C structs byte for byte. The truth
//! is the BTF that clang wrote into the compiled objects, read back with bpftool.

use std::collections::HashMap;
use std::process::Command;

/// struct name -> (size, [(field, bit offset)])
fn btf_structs(object: &[u8]) -> HashMap<String, (usize, Vec<(String, usize)>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("object.o");
    std::fs::write(&path, object).unwrap();
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&path)
        .args(["format", "raw"])
        .output()
        .expect("bpftool is installed (make deps)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut structs = HashMap::new();
    type Struct = (String, usize, Vec<(String, usize)>);
    let mut current: Option<Struct> = None;
    for line in text.lines() {
        if line.starts_with('[') {
            if let Some((name, size, fields)) = current.take() {
                structs.insert(name, (size, fields));
            }
            // [10] STRUCT 'endpoint_info' size=24 vlen=5
            let mut words = line.split_whitespace().skip(1);
            if words.next() == Some("STRUCT") {
                let name = words.next().unwrap().trim_matches('\'').to_string();
                let size = words
                    .next()
                    .unwrap()
                    .trim_start_matches("size=")
                    .parse()
                    .unwrap();
                current = Some((name, size, Vec::new()));
            }
        } else if let Some((_, _, fields)) = current.as_mut() {
            // 'ifindex' type_id=7 bits_offset=0
            let mut words = line.split_whitespace();
            let name = words.next().unwrap().trim_matches('\'').to_string();
            let bits = words
                .find_map(|w| w.strip_prefix("bits_offset="))
                .unwrap()
                .parse()
                .unwrap();
            fields.push((name, bits));
        }
    }
    if let Some((name, size, fields)) = current.take() {
        structs.insert(name, (size, fields));
    }
    structs
}

#[test]
fn rust_mirrors_match_the_c_structs() {
    let mut btf = btf_structs(sluice_datapath::objects_for_tests::ENDPOINT);
    btf.extend(btf_structs(sluice_datapath::objects_for_tests::OVERLAY));
    for (name, size, fields) in sluice_datapath::abi::layouts() {
        let (c_size, c_fields) = btf
            .get(name)
            .unwrap_or_else(|| panic!("struct {name} is not in the objects' BTF"));
        assert_eq!(
            size, *c_size,
            "size of struct {name}: Rust {size}, C {c_size}"
        );
        let c_names: Vec<&str> = c_fields.iter().map(|(n, _)| n.as_str()).collect();
        let rust_names: Vec<&str> = fields.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(rust_names, c_names, "fields of struct {name}");
        for ((field, offset, _), (_, c_bits)) in fields.iter().zip(c_fields) {
            assert_eq!(
                offset * 8,
                *c_bits,
                "offset of {name}.{field}: Rust {offset} bytes, C {c_bits} bits"
            );
        }
    }
}
