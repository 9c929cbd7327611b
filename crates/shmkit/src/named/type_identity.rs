//! What a named object records about its type, so that finding it as
//! another type is an error rather than a reinterpretation.

use std::fmt;

use crate::stable_hash::fnv1a as stable_hash;

/// Size, alignment and a hash of the type's path, as recorded with a named
/// object.
///
/// The path hash leaves out the crate name at the front of every path in
/// the type's name: a producer and a consumer that are separate programs
/// (separate crates) but share a module defining `common::Message` agree on
/// its identity, while `common::Message` and `common::Reply` differ. A type
/// renamed or moved to another module is a different type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TypeIdentity {
    pub size: u64,
    pub align: u64,
    pub hash: u64,
    /// The crate-free path, for messages and listings.
    pub name: String,
}

impl TypeIdentity {
    pub(crate) fn of<T>() -> TypeIdentity {
        let name = without_crate_names(std::any::type_name::<T>());
        TypeIdentity {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            hash: stable_hash(name.as_bytes()),
            name,
        }
    }
}

impl TypeIdentity {
    /// The identity of a type a binding describes by size, alignment and a
    /// name of its own.
    pub(crate) fn named(size: u64, align: u64, name: &str) -> TypeIdentity {
        TypeIdentity {
            size,
            align,
            hash: stable_hash(name.as_bytes()),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for TypeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ({} bytes, align {})",
            self.name, self.size, self.align
        )
    }
}

/// Drops the first segment of every `a::b::C` path in a type name:
/// `app::msg::Pair<core::num::Wrapping<u8>>` becomes
/// `msg::Pair<num::Wrapping<u8>>`. Paths without `::` (primitives) stay.
fn without_crate_names(type_name: &str) -> String {
    let mut out = String::with_capacity(type_name.len());
    let mut rest = type_name;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let (token, tail) = rest.split_at(end);
        match token.split_once("::") {
            Some((_crate_name, path)) => out.push_str(path),
            None => out.push_str(token),
        }
        // Copy the separator (`<`, `>`, `,`, space, `[`, `;`, `&`, ...).
        let mut chars = tail.chars();
        if let Some(separator) = chars.next() {
            out.push(separator);
        }
        rest = chars.as_str();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_are_dropped_from_every_path() {
        assert_eq!(
            without_crate_names("producer::common::Message"),
            "common::Message"
        );
        assert_eq!(
            without_crate_names(
                "app::msg::Pair<core::num::Wrapping<u8>, [alloc::string::String; 4]>"
            ),
            "msg::Pair<num::Wrapping<u8>, [string::String; 4]>"
        );
        assert_eq!(without_crate_names("u64"), "u64");
        assert_eq!(without_crate_names("[u8; 16]"), "[u8; 16]");
    }

    #[test]
    fn the_same_module_in_two_crates_has_one_identity() {
        let producer = stable_hash(without_crate_names("producer::common::Message").as_bytes());
        let consumer = stable_hash(without_crate_names("consumer::common::Message").as_bytes());
        let reply = stable_hash(without_crate_names("consumer::common::Reply").as_bytes());
        assert_eq!(producer, consumer);
        assert_ne!(producer, reply);
    }

    #[test]
    fn types_of_one_size_differ_by_name() {
        assert_ne!(TypeIdentity::of::<u64>(), TypeIdentity::of::<i64>());
        assert_ne!(TypeIdentity::of::<u64>(), TypeIdentity::of::<f64>());
        assert_eq!(TypeIdentity::of::<[u32; 2]>().size, 8);
        assert_eq!(TypeIdentity::of::<u64>(), TypeIdentity::of::<u64>());
    }
}
