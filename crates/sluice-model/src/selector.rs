//! Kubernetes label selectors (matchLabels + matchExpressions), validated once at parse time so
//! matching never has to report errors.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Empty for Exists and DoesNotExist.
    pub values: BTreeSet<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // Absent keys satisfy NotIn, as in Kubernetes.
            Operator::NotIn => !value.is_some_and(|v| self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A conjunction: every label pair and every requirement must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

/// Validates a selector; errors start with `field` (e.g. `spec.podSelector`) and name the value.
pub fn parse(selector: &K8sSelector, field: &str) -> Result<LabelSelector, String> {
    let mut out = LabelSelector::default();
    for (k, v) in selector.match_labels.iter().flatten() {
        check_key(k).map_err(|m| format!("{field}.matchLabels: key {k:?} {m}"))?;
        check_value(v).map_err(|m| format!("{field}.matchLabels[{k:?}]: value {v:?} {m}"))?;
        out.match_labels.insert(k.clone(), v.clone());
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        check_key(&e.key).map_err(|m| format!("{at}.key: {:?} {m}", e.key))?;
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(format!(
                    "{at}.operator: {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                ))
            }
        };
        let values = e.values.clone().unwrap_or_default();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(format!(
                    "{at}.values: operator {} needs at least one value",
                    e.operator
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(format!(
                    "{at}.values: {values:?} must be empty for operator {}",
                    e.operator
                ))
            }
            _ => {}
        }
        for (j, v) in values.iter().enumerate() {
            check_value(v).map_err(|m| format!("{at}.values[{j}]: {v:?} {m}"))?;
        }
        out.match_expressions.push(Requirement {
            key: e.key.clone(),
            operator,
            values: values.into_iter().collect(),
        });
    }
    Ok(out)
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// The name part of a label key, and every non-empty label value: at most 63 characters,
/// alphanumeric at both ends, `-`, `_`, `.` allowed inside.
fn check_name(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("is longer than 63 characters".into());
    }
    let ends = s.starts_with(alnum) && s.ends_with(alnum);
    if !ends || !s.chars().all(|c| alnum(c) || "-_.".contains(c)) {
        return Err(
            "must be alphanumeric at both ends with only '-', '_', '.' and alphanumerics inside"
                .into(),
        );
    }
    Ok(())
}

/// A Kubernetes qualified name: `[dns-subdomain/]name`.
pub fn check_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            check_subdomain(prefix).map_err(|m| format!("has a prefix that {m}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("has an empty name".into());
    }
    check_name(name).map_err(|m| format!("is not a qualified name: its name part {m}"))
}

pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|m| format!("is not a label value: it {m}"))
}

/// DNS-1123 subdomain: lowercase labels of alphanumerics and '-', joined by '.', ≤253 chars.
fn check_subdomain(s: &str) -> Result<(), String> {
    let lower = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.starts_with(lower)
        && s.ends_with(lower)
        && s.chars().all(|c| lower(c) || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err("is not a DNS subdomain".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sel(yaml: &str) -> Result<LabelSelector, String> {
        parse(&serde_saphyr::from_str(yaml).unwrap(), "spec.podSelector")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubernetes_semantics() {
        let s = sel("matchLabels: {app: web}\nmatchExpressions:\n- {key: tier, operator: NotIn, values: [db]}\n- {key: example.com/team, operator: Exists}").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("example.com/team", "a")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "db"),
            ("example.com/team", "")
        ])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(sel("{}").unwrap().matches(&labels(&[])));
        let dne = sel("matchExpressions: [{key: a, operator: DoesNotExist}]").unwrap();
        assert!(dne.matches(&labels(&[("b", "1")])) && !dne.matches(&labels(&[("a", "")])));
    }

    #[test]
    fn errors_name_field_and_value() {
        let cases = [
            (
                "matchExpressions: [{key: a, operator: in, values: [x]}]",
                "spec.podSelector.matchExpressions[0].operator: \"in\" is not one of",
            ),
            (
                "matchExpressions: [{key: a, operator: In}]",
                "spec.podSelector.matchExpressions[0].values: operator In needs at least one value",
            ),
            (
                "matchExpressions: [{key: a, operator: Exists}, {key: a, operator: Exists, values: [x]}]",
                "spec.podSelector.matchExpressions[1].values: [\"x\"] must be empty",
            ),
            (
                "matchLabels: {\"-a\": x}",
                "spec.podSelector.matchLabels: key \"-a\"",
            ),
            (
                "matchLabels: {a: \"x y\"}",
                "spec.podSelector.matchLabels[\"a\"]: value \"x y\"",
            ),
            (
                "matchLabels: {\"Example.com/a\": x}",
                "key \"Example.com/a\" has a prefix that is not a DNS subdomain",
            ),
            (
                "matchExpressions: [{key: a, operator: In, values: [ok, \"bad!\"]}]",
                "spec.podSelector.matchExpressions[0].values[1]: \"bad!\"",
            ),
            (
                "matchExpressions: [{key: \"a/\", operator: Exists}]",
                "spec.podSelector.matchExpressions[0].key: \"a/\" has an empty name",
            ),
        ];
        for (yaml, want) in cases {
            let e = sel(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: got {e}");
        }
        let long = "a".repeat(64);
        let e = sel(&format!("matchLabels: {{{long}: x}}")).unwrap_err();
        assert!(e.contains("longer than 63"), "{e}");
        assert!(sel("matchLabels: {\"example.com/a_b.c-d\": \"\", A9: Z_z}").is_ok());
    }

    fn small_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(
            prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
            prop::sample::select(vec!["1", "2", "3"]).prop_map(String::from),
            0..4,
        )
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        (
            prop::sample::select(vec!["a", "b", "c"]),
            0..4usize,
            proptest::collection::btree_set(
                prop::sample::select(vec!["1", "2", "3"]).prop_map(String::from),
                1..3,
            ),
        )
            .prop_map(|(key, op, values)| {
                let operator = [
                    Operator::In,
                    Operator::NotIn,
                    Operator::Exists,
                    Operator::DoesNotExist,
                ][op];
                let values = match operator {
                    Operator::In | Operator::NotIn => values,
                    _ => BTreeSet::new(),
                };
                Requirement {
                    key: key.into(),
                    operator,
                    values,
                }
            })
    }

    fn with(r: &Requirement, operator: Operator) -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                operator,
                ..r.clone()
            }],
        }
    }

    proptest! {
        #[test]
        fn match_labels_equal_in_with_one_value(l in small_labels(), k in "[abc]", v in "[123]") {
            let a = LabelSelector { match_labels: BTreeMap::from([(k.clone(), v.clone())]), match_expressions: vec![] };
            let b = LabelSelector { match_labels: BTreeMap::new(), match_expressions: vec![Requirement { key: k, operator: Operator::In, values: BTreeSet::from([v]) }] };
            prop_assert_eq!(a.matches(&l), b.matches(&l));
        }

        #[test]
        fn negations(l in small_labels(), r in requirement()) {
            prop_assert_eq!(with(&r, Operator::NotIn).matches(&l), !with(&r, Operator::In).matches(&l));
            prop_assert_eq!(with(&r, Operator::DoesNotExist).matches(&l), !with(&r, Operator::Exists).matches(&l));
        }

        #[test]
        fn a_selector_is_the_conjunction_of_its_parts(
            l in small_labels(),
            ml in small_labels(),
            rs in proptest::collection::vec(requirement(), 0..4),
        ) {
            let whole = LabelSelector { match_labels: ml.clone(), match_expressions: rs.clone() };
            let parts = ml.iter().all(|(k, v)| l.get(k) == Some(v)) && rs.iter().all(|r| r.matches(&l));
            prop_assert_eq!(whole.matches(&l), parts);
            // The empty selector matches everything.
            prop_assert!(LabelSelector::default().matches(&l));
        }

        /// What parse accepts round-trips through the Kubernetes shape unchanged.
        #[test]
        fn parse_keeps_valid_selectors(ml in small_labels(), rs in proptest::collection::vec(requirement(), 0..4)) {
            let k8s = K8sSelector {
                match_labels: Some(ml.clone()),
                match_expressions: Some(rs.iter().map(|r| k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: r.key.clone(),
                    operator: format!("{:?}", r.operator),
                    values: Some(r.values.iter().cloned().collect()),
                }).collect()),
            };
            let parsed = parse(&k8s, "s").unwrap();
            prop_assert_eq!(parsed, LabelSelector { match_labels: ml, match_expressions: rs });
        }
    }
}
