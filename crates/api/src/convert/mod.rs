//! Conversions between the generated protobuf messages and the domain types of
//! `dnsfence-policy`.
//!
//! Decoding (`TryFrom<proto> for domain`) validates everything the domain types take for
//! granted: enum values, required sub-messages, addresses, CIDRs, domain patterns and port
//! ranges. A failure is an [`ApiError::Invalid`] whose `field` is the path from the converted
//! message (`allowlist.rules[2].match.ports[0].end`), so a bad message can be traced to the
//! offending field without a debugger. Encoding (`From<&domain> for proto`) cannot fail.
//!
//! Each area keeps a crate-private `decode_*` function per message that reports paths relative
//! to that message; the public `TryFrom` impls put the message's own name in front, and
//! enclosing messages put the field name in front instead.

pub mod event;
pub mod grants;
pub mod policy;
pub mod rules;
pub mod workload;

use std::fmt::Display;
use std::net::IpAddr;

use dnsfence_policy::allowlist::{DefaultPolicy, Verdict};

use crate::error::{ApiError, Within};
use crate::store::v1 as pb;

/// Decodes a proto enum carried as `i32`: unknown numbers and the zero are both rejected (zero
/// is `UNSPECIFIED` in every dnsfence enum, i.e. a sender that forgot to set the field).
pub(crate) fn known_enum<E>(value: i32, field: &str) -> Result<E, ApiError>
where
    E: TryFrom<i32>,
{
    if value == 0 {
        return Err(ApiError::invalid(field, "unspecified"));
    }
    E::try_from(value).map_err(|_| ApiError::invalid(field, format!("unknown value {value}")))
}

pub(crate) fn required<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::missing(field))
}

pub(crate) fn ip_addr(text: &str) -> Result<IpAddr, ApiError> {
    text.parse::<IpAddr>()
        .map_err(|e| ApiError::invalid("", format!("{text:?} is not an IP address ({e})")))
}

/// Decodes every element of a repeated field, naming the index of the first bad one.
pub(crate) fn decode_list<P, D>(
    items: Vec<P>,
    field: &str,
    decode: impl Fn(P) -> Result<D, ApiError>,
) -> Result<Vec<D>, ApiError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| decode(item).within(&format!("{field}[{i}]")))
        .collect()
}

pub(crate) fn ip_list(ips: Vec<String>, field: &str) -> Result<Vec<IpAddr>, ApiError> {
    decode_list(ips, field, |s| ip_addr(&s))
}

pub(crate) fn ip_texts(ips: &[IpAddr]) -> Vec<String> {
    ips.iter().map(ToString::to_string).collect()
}

/// `TryFrom` for an enclosing message: the decoder's relative paths get the message's name.
macro_rules! try_from_proto {
    ($proto:ty => $domain:ty, $decode:path, $root:literal) => {
        impl TryFrom<$proto> for $domain {
            type Error = $crate::error::ApiError;

            fn try_from(message: $proto) -> Result<Self, Self::Error> {
                $crate::error::Within::within($decode(message), $root)
            }
        }
    };
}
pub(crate) use try_from_proto;

/// `From<domain>` for callers that own the value, through the `From<&domain>` impl.
macro_rules! from_owned {
    ($domain:ty => $proto:ty) => {
        impl From<$domain> for $proto {
            fn from(value: $domain) -> Self {
                <$proto>::from(&value)
            }
        }
    };
}
pub(crate) use from_owned;

fn display_unknown(value: impl Display) -> String {
    format!("unknown value {value}")
}

impl From<DefaultPolicy> for pb::DefaultPolicy {
    fn from(value: DefaultPolicy) -> Self {
        match value {
            DefaultPolicy::DefaultAllow => pb::DefaultPolicy::DefaultAllow,
            DefaultPolicy::DefaultDeny => pb::DefaultPolicy::DefaultDeny,
        }
    }
}

impl TryFrom<pb::DefaultPolicy> for DefaultPolicy {
    type Error = ApiError;

    fn try_from(value: pb::DefaultPolicy) -> Result<Self, ApiError> {
        match value {
            pb::DefaultPolicy::DefaultAllow => Ok(DefaultPolicy::DefaultAllow),
            pb::DefaultPolicy::DefaultDeny => Ok(DefaultPolicy::DefaultDeny),
            pb::DefaultPolicy::Unspecified => {
                Err(ApiError::invalid("default_policy", "unspecified"))
            }
        }
    }
}

/// Decodes a `default_policy` field: `UNSPECIFIED` means "the store's configured default",
/// which is `None` here rather than an error.
pub fn default_policy_from_proto(value: i32) -> Result<Option<DefaultPolicy>, ApiError> {
    match pb::DefaultPolicy::try_from(value) {
        Ok(pb::DefaultPolicy::Unspecified) => Ok(None),
        Ok(known) => DefaultPolicy::try_from(known).map(Some),
        Err(_) => Err(ApiError::invalid("default_policy", display_unknown(value))),
    }
}

/// The inverse of [`default_policy_from_proto`], as the `i32` the message field holds.
pub fn default_policy_to_proto(value: Option<DefaultPolicy>) -> i32 {
    match value {
        Some(policy) => pb::DefaultPolicy::from(policy) as i32,
        None => pb::DefaultPolicy::Unspecified as i32,
    }
}

impl From<Verdict> for pb::Verdict {
    fn from(value: Verdict) -> Self {
        match value {
            Verdict::Allow => pb::Verdict::Allow,
            Verdict::Deny => pb::Verdict::Deny,
        }
    }
}

impl TryFrom<pb::Verdict> for Verdict {
    type Error = ApiError;

    fn try_from(value: pb::Verdict) -> Result<Self, ApiError> {
        match value {
            pb::Verdict::Allow => Ok(Verdict::Allow),
            pb::Verdict::Deny => Ok(Verdict::Deny),
            pb::Verdict::Unspecified => Err(ApiError::invalid("verdict", "unspecified")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn default_policy_round_trip_and_unspecified() {
        for policy in [
            None,
            Some(DefaultPolicy::DefaultAllow),
            Some(DefaultPolicy::DefaultDeny),
        ] {
            let encoded = default_policy_to_proto(policy);
            assert_eq!(default_policy_from_proto(encoded).unwrap(), policy);
        }
        assert_eq!(default_policy_from_proto(0).unwrap(), None);
        let err = default_policy_from_proto(9).unwrap_err();
        assert_eq!(err.to_string(), "default_policy: unknown value 9");
        let err = DefaultPolicy::try_from(pb::DefaultPolicy::Unspecified).unwrap_err();
        assert_eq!(err.to_string(), "default_policy: unspecified");
    }

    #[test]
    fn verdict_round_trip() {
        for verdict in [Verdict::Allow, Verdict::Deny] {
            assert_eq!(
                Verdict::try_from(pb::Verdict::from(verdict)).unwrap(),
                verdict
            );
        }
        assert!(Verdict::try_from(pb::Verdict::Unspecified).is_err());
    }

    #[test]
    fn known_enum_rejects_zero_and_unknown() {
        let err = known_enum::<pb::Tier>(0, "tier").unwrap_err();
        assert_eq!(err.to_string(), "tier: unspecified");
        let err = known_enum::<pb::Tier>(42, "tier").unwrap_err();
        assert_eq!(err.to_string(), "tier: unknown value 42");
        assert_eq!(known_enum::<pb::Tier>(1, "tier").unwrap(), pb::Tier::Admin);
    }

    #[test]
    fn ip_list_names_the_index() {
        let err = ip_list(vec!["10.0.0.1".into(), "nope".into()], "ips").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ips[1]: \"nope\" is not an IP address"),
            "{err}"
        );
    }
}
