//! NUMA binding: the single-node no-op, offline nodes, odd ranges, segments,
//! and (on a machine with several nodes) the real `mbind`.

mod common;

use std::ptr::NonNull;

use shmkit::numa::{self, NumaBinding};
use shmkit::{BumpAllocator, Error, LinearAlloc, SegmentAllocator, SegmentOptions};

/// `get_mempolicy` flag (uapi `linux/mempolicy.h`): report the policy of
/// the page at an address rather than the thread's.
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;

/// Anonymous private memory of `len` bytes, page aligned, freed on drop.
struct Pages {
    ptr: NonNull<u8>,
    len: usize,
}

impl Pages {
    fn new(len: usize) -> Pages {
        // SAFETY: a fresh anonymous mapping touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        Pages {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` readable, writable bytes owned by
        // `self`, borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no borrow outlives
        // `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// A node number that is not online here: 7 when it is not, else one past
/// the last online node.
fn offline_node() -> u32 {
    let nodes = numa::online_nodes().unwrap();
    if nodes.contains(&7) {
        nodes.last().unwrap() + 1
    } else {
        7
    }
}

/// How many `nodeN` entries the kernel shows, counted without the parser
/// under test; none at all on a kernel without NUMA support.
fn node_directories() -> usize {
    match std::fs::read_dir("/sys/devices/system/node") {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| {
                name.strip_prefix("node")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count(),
        Err(_) => 0,
    }
}

#[test]
fn online_nodes_are_sorted_distinct_and_counted() {
    let nodes = numa::online_nodes().unwrap();
    assert!(!nodes.is_empty());
    assert!(nodes.windows(2).all(|pair| pair[0] < pair[1]), "{nodes:?}");
    assert_eq!(numa::node_count().unwrap(), nodes.len());
    // Every online node has its directory (memory-less nodes included).
    assert!(node_directories() >= nodes.len() || node_directories() == 0);
}

#[test]
fn binding_the_only_node_is_a_no_op_and_memory_stays_usable() {
    let nodes = numa::online_nodes().unwrap();
    let page = page_size();
    let mut pages = Pages::new(4 * page);
    pages.bytes()[..page].fill(0x5a); // one page already touched

    let binding = numa::bind(pages.ptr, pages.len, nodes[0]).unwrap();
    assert_eq!(binding.node(), nodes[0]);
    if nodes.len() == 1 {
        assert_eq!(binding, NumaBinding::SingleNode { node: nodes[0] });
    } else {
        assert_eq!(binding, NumaBinding::Bound { node: nodes[0] });
    }

    assert!(pages.bytes()[..page].iter().all(|&b| b == 0x5a));
    pages.bytes().fill(0xc3);
    assert!(pages.bytes().iter().all(|&b| b == 0xc3));
}

#[test]
fn a_node_that_is_not_online_is_an_error() {
    let node = offline_node();
    let pages = Pages::new(page_size());
    let err = numa::bind(pages.ptr, pages.len, node).unwrap_err();
    match &err {
        Error::NumaNodeOffline {
            node: asked,
            online,
        } => {
            assert_eq!(*asked, node);
            assert_eq!(*online, numa::online_nodes().unwrap());
        }
        other => panic!("expected NumaNodeOffline, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("NUMA node {node} is not online")),
        "{message}"
    );
    // Far past anything Linux supports, too.
    assert!(matches!(
        numa::bind(pages.ptr, pages.len, u32::MAX),
        Err(Error::NumaNodeOffline { .. })
    ));
}

#[test]
fn an_unaligned_range_binds_its_pages() {
    let node = numa::online_nodes().unwrap()[0];
    let page = page_size();
    let mut pages = Pages::new(3 * page);
    pages.bytes().fill(1);
    // Starts and ends inside pages: widened to the two pages it touches.
    // SAFETY: `page - 100` is inside the mapping.
    let inside = unsafe { NonNull::new_unchecked(pages.ptr.as_ptr().add(page - 100)) };
    let binding = numa::bind(inside, 200, node).unwrap();
    assert_eq!(binding.node(), node);
    assert!(pages.bytes().iter().all(|&b| b == 1));
}

#[test]
fn an_empty_or_wrapping_range_is_invalid() {
    let node = numa::online_nodes().unwrap()[0];
    let pages = Pages::new(page_size());
    assert!(matches!(
        numa::bind(pages.ptr, 0, node),
        Err(Error::InvalidSize { .. })
    ));
    // Refused before any system call sees the address.
    let near_the_end = NonNull::new((usize::MAX - 10) as *mut u8).unwrap();
    assert!(matches!(
        numa::bind(near_the_end, 100, node),
        Err(Error::InvalidSize { .. })
    ));
}

#[test]
fn a_segment_binds_to_a_node() {
    let node = numa::online_nodes().unwrap()[0];
    let allocator = BumpAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    let before = allocator.make_handle(0x1234_u64).unwrap();

    let binding = allocator.segment().bind_to_numa_node(node).unwrap();
    assert_eq!(binding.node(), node);
    if numa::node_count().unwrap() == 1 {
        assert_eq!(binding, NumaBinding::SingleNode { node });
    }

    // The segment still works: old data is intact, new data can be placed.
    let old = allocator.segment().resolve(before).unwrap();
    // SAFETY: resolved, aligned, in bounds; nobody else writes it.
    assert_eq!(unsafe { *old.as_ptr() }, 0x1234);
    let after = allocator.make_handle(0x5678_u64).unwrap();
    let new = allocator.segment().resolve(after).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { *new.as_ptr() }, 0x5678);

    assert!(matches!(
        allocator.segment().bind_to_numa_node(offline_node()),
        Err(Error::NumaNodeOffline { .. })
    ));
}

/// The policy the kernel holds for the page at `addr`: mode and node mask.
fn policy_at(addr: *const u8) -> (libc::c_int, Vec<libc::c_ulong>) {
    let mut mode: libc::c_int = -1;
    let mut mask: Vec<libc::c_ulong> = vec![0; 1024 / libc::c_ulong::BITS as usize];
    let max_node = (mask.len() * libc::c_ulong::BITS as usize) as libc::c_ulong;
    // SAFETY: `mode` and `mask` (`max_node` bits) are writable for the call,
    // which only reads the policy of the page at `addr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            max_node,
            addr,
            MPOL_F_ADDR,
        )
    };
    assert_eq!(rc, 0, "get_mempolicy: {}", std::io::Error::last_os_error());
    (mode, mask)
}

fn mask_has(mask: &[libc::c_ulong], node: u32) -> bool {
    let bits = libc::c_ulong::BITS;
    mask[(node / bits) as usize] & (1 << (node % bits)) != 0
}

#[test]
fn several_nodes_bind_for_real() {
    let nodes = numa::online_nodes().unwrap();
    if nodes.len() < 2 {
        // Make sure the early return is the machine's truth, not a parser
        // that lost nodes.
        assert!(
            node_directories() <= 1,
            "the kernel shows {} node directories, online_nodes() says {nodes:?}",
            node_directories()
        );
        eprintln!(
            "several_nodes_bind_for_real: skipped, this machine has one NUMA node ({nodes:?}); \
             a real mbind to another node needs two"
        );
        return;
    }
    let page = page_size();
    let target = *nodes.last().unwrap();
    let mut pages = Pages::new(8 * page);
    pages.bytes().fill(7); // touched first, so MPOL_MF_MOVE has work to do

    let binding = numa::bind(pages.ptr, pages.len, target).unwrap();
    assert_eq!(binding, NumaBinding::Bound { node: target });

    for index in [0, 7] {
        // SAFETY: inside the mapping.
        let (mode, mask) = policy_at(unsafe { pages.ptr.as_ptr().add(index * page) });
        assert_eq!(mode, libc::MPOL_BIND, "page {index}");
        assert!(mask_has(&mask, target), "page {index}: {mask:?}");
        for other in nodes.iter().filter(|&&n| n != target) {
            assert!(!mask_has(&mask, *other), "page {index} also on {other}");
        }
    }
    assert!(pages.bytes().iter().all(|&b| b == 7));
}
