//! NUMA placement: which memory nodes this machine has, and binding a range
//! of memory to one of them.
//!
//! On a machine with several NUMA nodes, memory close to the cores that use
//! it is faster. [`bind`] asks the kernel (`mbind` with `MPOL_BIND`) to take
//! the pages of a range from one node, and to move the pages already there.
//! [`Segment::bind_to_numa_node`](crate::Segment::bind_to_numa_node) does
//! this for a whole segment.
//!
//! Most machines have a single node. There, binding to it (node 0) is a
//! documented no-op that reports [`NumaBinding::SingleNode`]; a kernel built
//! without NUMA support counts as a single node 0. A node that is not online
//! is always an error ([`Error::NumaNodeOffline`]), on any machine, so code
//! that asks for a node that does not exist learns so on a laptop too.
//!
//! ```
//! use shmkit::{numa, BumpAllocator, SegmentAllocator, SegmentOptions};
//!
//! let nodes = numa::online_nodes()?;
//! assert_eq!(numa::node_count()?, nodes.len());
//!
//! let allocator = BumpAllocator::create(&SegmentOptions::private().size(1 << 20))?;
//! let binding = allocator.segment().bind_to_numa_node(nodes[0])?;
//! assert_eq!(binding.node(), nodes[0]);
//!
//! // One past the last online node is never online.
//! let missing = nodes[nodes.len() - 1] + 1;
//! assert!(allocator.segment().bind_to_numa_node(missing).is_err());
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::io;
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Where the kernel lists the online nodes, as a list like `0-3,5`.
const ONLINE_NODES_PATH: &str = "/sys/devices/system/node/online";

/// One more than the largest node number Linux supports (`MAX_NUMNODES` is
/// at most `1 << 10`). It bounds the work a corrupt node list can cause.
const NODE_LIMIT: u32 = 1 << 10;

/// What [`bind`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NumaBinding {
    /// The kernel now takes the range's pages from `node`, and has moved
    /// there the pages that were already present and that only this process
    /// maps.
    Bound {
        /// The node the range is bound to.
        node: u32,
    },
    /// Nothing was done: `node` is this machine's only node (or the kernel
    /// has no NUMA support), so every page is on it already.
    SingleNode {
        /// The only node.
        node: u32,
    },
}

impl NumaBinding {
    /// The node the range's memory comes from.
    pub fn node(self) -> u32 {
        match self {
            NumaBinding::Bound { node } | NumaBinding::SingleNode { node } => node,
        }
    }
}

/// The NUMA nodes that are online, in ascending order.
///
/// Read from the kernel's list (`/sys/devices/system/node/online`); a kernel
/// without NUMA support has no such list and counts as the single node 0.
/// A list that cannot be read or parsed is an [`Error::Io`].
pub fn online_nodes() -> Result<Vec<u32>> {
    match std::fs::read_to_string(ONLINE_NODES_PATH) {
        Ok(text) => parse_node_list(&text).map_err(|reason| Error::Io {
            context: format!("parsing the NUMA node list {ONLINE_NODES_PATH} ({text:?})"),
            source: io::Error::new(io::ErrorKind::InvalidData, reason),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(vec![0]),
        Err(source) => Err(Error::Io {
            context: format!("reading the NUMA node list {ONLINE_NODES_PATH}"),
            source,
        }),
    }
}

/// How many NUMA nodes are online: 1 on most machines.
pub fn node_count() -> Result<usize> {
    online_nodes().map(|nodes| nodes.len())
}

/// Parses a kernel node list such as `0-3,5` (a trailing newline allowed)
/// into sorted, distinct node numbers. An empty list, an empty item, a
/// reversed range or a number at or past [`NODE_LIMIT`] is refused.
fn parse_node_list(text: &str) -> std::result::Result<Vec<u32>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the list is empty".to_owned());
    }
    let mut nodes = Vec::new();
    for item in text.split(',') {
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (parse_node(first)?, parse_node(last)?),
            None => {
                let node = parse_node(item)?;
                (node, node)
            }
        };
        if first > last {
            return Err(format!("range `{item}` runs backwards"));
        }
        nodes.extend(first..=last);
    }
    nodes.sort_unstable();
    nodes.dedup();
    Ok(nodes)
}

fn parse_node(text: &str) -> std::result::Result<u32, String> {
    // `u32::from_str` would take a leading `+`; a node number is digits only.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a node number"));
    }
    match text.parse::<u32>() {
        Ok(node) if node < NODE_LIMIT => Ok(node),
        _ => Err(format!(
            "node `{text}` is past the largest Linux supports ({})",
            NODE_LIMIT - 1
        )),
    }
}

/// Widens `len` bytes at `addr` to whole pages, as `mbind` requires: the
/// page-aligned start and the length up to the end of the last page.
fn page_span(addr: usize, len: usize, page: usize) -> Result<(usize, usize)> {
    let end = addr
        .checked_add(len)
        .and_then(|end| end.checked_next_multiple_of(page))
        .ok_or_else(|| Error::invalid_size("the range runs past the end of the address space"))?;
    let start = addr - addr % page;
    Ok((start, end - start))
}

/// A node mask with the bit for `node` set, in the kernel's layout (an
/// array of `unsigned long`, lowest node in the lowest bit of the first).
fn node_mask(node: u32) -> Vec<libc::c_ulong> {
    let bits = libc::c_ulong::BITS;
    let mut mask = vec![0; (node / bits) as usize + 1];
    mask[(node / bits) as usize] = 1 << (node % bits);
    mask
}

/// Binds the pages that hold `len` bytes at `ptr` to NUMA node `node`.
///
/// From now on the kernel takes the range's new pages from `node` only
/// (`MPOL_BIND`), and it moves there the pages already present that this
/// process alone maps (`MPOL_MF_MOVE`); pages shared with other processes
/// stay where they are. Policy is per page, so the range is widened to
/// whole pages: bytes that share a page with the range are bound too (a
/// page-aligned mapping, such as a segment, loses nothing to this).
///
/// * On a machine with a single node (or a kernel without NUMA support),
///   binding to that node changes nothing and returns
///   [`NumaBinding::SingleNode`].
/// * A node that is not online is [`Error::NumaNodeOffline`], on every
///   machine.
/// * An empty range, or one that wraps around the address space, is
///   [`Error::InvalidSize`].
/// * Memory that is not mapped, or a kernel that refuses (a container that
///   forbids `mbind`, say), is [`Error::Io`].
///
/// Binding changes only where pages live, never their contents, so any
/// range may be passed safely.
pub fn bind(ptr: NonNull<u8>, len: usize, node: u32) -> Result<NumaBinding> {
    if len == 0 {
        return Err(Error::invalid_size("cannot bind an empty range to a node"));
    }
    let page = crate::os::memory::page_size() as usize;
    let (start, span) = page_span(ptr.as_ptr() as usize, len, page)?;
    let online = online_nodes()?;
    if !online.contains(&node) {
        return Err(Error::NumaNodeOffline { node, online });
    }
    if online.len() == 1 {
        return Ok(NumaBinding::SingleNode { node });
    }
    let Err(err) = crate::os::memory::bind_pages(start, span, &node_mask(node)) else {
        return Ok(NumaBinding::Bound { node });
    };
    if err.raw_os_error() == Some(libc::ENOSYS) {
        // A kernel without NUMA support: all memory is one node.
        return Ok(NumaBinding::SingleNode { node });
    }
    Err(Error::Io {
        context: format!("binding {span} bytes at {start:#x} to NUMA node {node}"),
        source: err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_nodes_and_ranges() {
        assert_eq!(parse_node_list("0"), Ok(vec![0]));
        assert_eq!(parse_node_list("0\n"), Ok(vec![0]));
        assert_eq!(parse_node_list("0-3,5"), Ok(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_node_list("2,0-1\n"), Ok(vec![0, 1, 2]));
        assert_eq!(parse_node_list("4-4"), Ok(vec![4]));
        assert_eq!(parse_node_list("0-2,1-3"), Ok(vec![0, 1, 2, 3]));
        assert_eq!(parse_node_list("1023"), Ok(vec![1023]));
    }

    #[test]
    fn refuses_malformed_lists() {
        for text in [
            "",
            "\n",
            " ",
            "a",
            "0-",
            "-1",
            "1-",
            "3-1",
            "0,,1",
            "0,",
            ",0",
            "1-2-3",
            "+1",
            "0x1",
            "0 - 3",
            "1024",
            "0-4294967295",
            "99999999999",
            "0;1",
        ] {
            assert!(
                parse_node_list(text).is_err(),
                "{text:?} parsed as {:?}",
                parse_node_list(text)
            );
        }
    }

    #[test]
    fn page_span_widens_to_whole_pages() {
        assert_eq!(page_span(8192, 4096, 4096).unwrap(), (8192, 4096));
        assert_eq!(page_span(8192 + 100, 10, 4096).unwrap(), (8192, 4096));
        assert_eq!(page_span(8192 + 4000, 200, 4096).unwrap(), (8192, 8192));
        assert_eq!(page_span(4096, 1, 4096).unwrap(), (4096, 4096));
        assert!(matches!(
            page_span(usize::MAX - 10, 100, 4096),
            Err(Error::InvalidSize { .. })
        ));
        // The last page of the address space cannot be rounded up to.
        assert!(page_span(usize::MAX - 10, 5, 4096).is_err());
    }

    #[test]
    fn node_mask_sets_exactly_one_bit() {
        let bits = libc::c_ulong::BITS;
        assert_eq!(node_mask(0), vec![1]);
        assert_eq!(node_mask(3), vec![0b1000]);
        let mask = node_mask(bits + 1);
        assert_eq!(mask, vec![0, 0b10]);
        let mask = node_mask(NODE_LIMIT - 1);
        assert_eq!(mask.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        assert_eq!(mask.len(), (NODE_LIMIT / bits) as usize);
    }

    #[test]
    fn binding_reports_its_node() {
        assert_eq!(NumaBinding::Bound { node: 3 }.node(), 3);
        assert_eq!(NumaBinding::SingleNode { node: 0 }.node(), 0);
    }
}
