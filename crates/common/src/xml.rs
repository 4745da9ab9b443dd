//! Limits for XML from the network, shared by the daemons' parsers.

use quick_xml::events::BytesStart;

/// Attributes one element may have. The elements of libvirt's domain XML and of
/// oVirt's API have a handful; the bound keeps attribute handling linear in the size
/// of a document (checking for duplicates is quadratic in the count).
pub const MAX_ATTRIBUTES: usize = 64;

/// `Err(n)` when the element has more than [`MAX_ATTRIBUTES`] attributes (`n` is
/// where counting stopped). Counts without the duplicate check: linear.
pub fn check_attribute_count(e: &BytesStart<'_>) -> Result<(), usize> {
    let n = e
        .attributes()
        .with_checks(false)
        .take(MAX_ATTRIBUTES + 1)
        .count();
    if n > MAX_ATTRIBUTES {
        Err(n)
    } else {
        Ok(())
    }
}
