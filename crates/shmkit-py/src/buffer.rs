//! The buffer protocol (PEP 3118) under the 3.10 stable ABI: reading a
//! caller's bytes-like object without a copy, and exporting a block as a
//! `memoryview` whose exporter keeps the mapping alive and tells the heap
//! which blocks have live views.
//!
//! `Py_buffer`, `PyObject_GetBuffer`, `PyBuffer_Release` and the buffer
//! slots of `PyType_FromSpec` entered the stable ABI in 3.11, so PyO3 offers
//! them only from there. Their layout and behaviour have not changed since
//! 3.3, and CPython accepts the buffer slots in a type spec since 3.9
//! (bpo-40724), so this module declares them itself for the 3.10 wheel.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

use crate::heap::Heap;

/// CPython's `Py_buffer` (the same layout from 3.3 through 3.14).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

const PYBUF_WRITABLE: c_int = 0x0001;
const PYBUF_FORMAT: c_int = 0x0004;
const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;

extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
    fn PyBuffer_IsContiguous(view: *const RawBuffer, order: c_char) -> c_int;
}

/// A caller's bytes-like object, its buffer held for as long as this lives
/// (the exporter keeps the bytes in place: a `bytearray` refuses to resize
/// while they are held). Tied to the interpreter lock: released with it.
pub struct HeldBytes<'py> {
    view: RawBuffer,
    contiguous: bool,
    _attached: PhantomData<Python<'py>>,
}

impl<'py> HeldBytes<'py> {
    /// Holds the buffer of `data`: anything with the buffer protocol
    /// (`bytes`, `bytearray`, `memoryview`, `array`, numpy arrays, strided
    /// ones too). Other objects raise the interpreter's own `TypeError`,
    /// and whatever the exporter raises passes through.
    pub fn new(data: &Bound<'py, PyAny>) -> PyResult<HeldBytes<'py>> {
        let mut view = RawBuffer {
            buf: ptr::null_mut(),
            obj: ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: ptr::null_mut(),
            shape: ptr::null_mut(),
            strides: ptr::null_mut(),
            suboffsets: ptr::null_mut(),
            internal: ptr::null_mut(),
        };
        // SAFETY: `data` is a live object (we hold the interpreter lock, as
        // the `Bound` proves) and `view` is a writable `Py_buffer`.
        if unsafe { PyObject_GetBuffer(data.as_ptr(), &mut view, PYBUF_STRIDES) } != 0 {
            return Err(PyErr::fetch(data.py()));
        }
        // SAFETY: a buffer filled by the call above.
        let contiguous = unsafe { PyBuffer_IsContiguous(&view, b'C' as c_char) } != 0;
        Ok(HeldBytes {
            view,
            contiguous,
            _attached: PhantomData,
        })
    }

    /// Bytes in the buffer.
    pub fn len(&self) -> usize {
        self.view.len.max(0) as usize
    }

    /// The bytes, when they lie in one piece.
    pub fn contiguous(&self) -> Option<RawBytes> {
        if !self.contiguous {
            return None;
        }
        if self.len() == 0 || self.view.buf.is_null() {
            return Some(RawBytes::EMPTY);
        }
        // A C-contiguous buffer is `len` readable bytes at `buf`, kept in
        // place until it is released (on drop, after this borrow).
        Some(RawBytes {
            ptr: self.view.buf.cast::<u8>(),
            len: self.len(),
        })
    }

    /// The layout of a buffer that is not in one piece, to copy it in C
    /// order without the interpreter (see [`Strided::copy_to`]).
    pub fn strided(&self) -> Strided {
        let ndim = self.view.ndim.max(0) as usize;
        let dims = |ptr: *const ffi::Py_ssize_t| -> Vec<isize> {
            if ptr.is_null() {
                return Vec::new();
            }
            // SAFETY: a `PYBUF_STRIDES` buffer has `ndim` shape and stride
            // entries, valid while it is held (and copied here).
            unsafe { std::slice::from_raw_parts(ptr, ndim) }.to_vec()
        };
        Strided {
            base: self.view.buf.cast(),
            itemsize: self.view.itemsize.max(0) as usize,
            shape: dims(self.view.shape),
            strides: dims(self.view.strides),
            len: self.len(),
        }
    }
}

/// A held buffer's bytes as an `ndim`-dimensional array of items: a
/// strided numpy view, say. Valid while the [`HeldBytes`] it came from is.
pub struct Strided {
    base: *const u8,
    itemsize: usize,
    shape: Vec<isize>,
    strides: Vec<isize>,
    len: usize,
}

// SAFETY: it names bytes that the `HeldBytes` it came from keeps in place;
// the copies that use it only read them.
unsafe impl Send for Strided {}
// SAFETY: as above.
unsafe impl Sync for Strided {}

impl Strided {
    /// Copies the items, in C order, to `target`; needs no interpreter
    /// lock.
    ///
    /// # Safety
    ///
    /// `target` must be valid for writes of `len` bytes, and the buffer
    /// must still be held. The two may overlap (a strided view of the
    /// target block): each item moves as a memmove.
    pub unsafe fn copy_to(&self, target: *mut u8) -> Result<(), &'static str> {
        let items = self.shape.iter().try_fold(1usize, |items, &n| {
            items.checked_mul(usize::try_from(n).ok()?)
        });
        if self.shape.len() != self.strides.len()
            || items.and_then(|items| items.checked_mul(self.itemsize)) != Some(self.len)
        {
            return Err("the buffer's shape and strides do not add up to its length");
        }
        if self.len == 0 {
            return Ok(());
        }
        let mut index = vec![0isize; self.shape.len()];
        let mut written = 0usize;
        loop {
            let at: isize = index.iter().zip(&self.strides).map(|(i, s)| i * s).sum();
            // SAFETY: the exporter vouches that every index within the
            // shape, times the strides, names an item inside its buffer;
            // `written + itemsize <= len` by the product checked above.
            unsafe { std::ptr::copy(self.base.offset(at), target.add(written), self.itemsize) };
            written += self.itemsize;
            // The next index, the last dimension fastest.
            let mut dim = self.shape.len();
            loop {
                if dim == 0 {
                    return Ok(());
                }
                dim -= 1;
                index[dim] += 1;
                if index[dim] < self.shape[dim] {
                    break;
                }
                index[dim] = 0;
            }
        }
    }
}

impl Drop for HeldBytes<'_> {
    fn drop(&mut self) {
        // SAFETY: `view` was filled by a successful `PyObject_GetBuffer` and
        // is released once; the `'py` marker keeps this on the thread that
        // holds the interpreter lock.
        unsafe { PyBuffer_Release(&mut self.view) };
    }
}

/// Bytes another exporter holds: an address and a length, never a Rust
/// reference, because they may change while they are read (another
/// Python thread writes a `bytearray`) or be the very bytes a write
/// targets (`heap.write(offset, heap.view(offset))`). Copy them with
/// [`std::ptr::copy`], which allows the overlap.
#[derive(Clone, Copy)]
pub struct RawBytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl RawBytes {
    const EMPTY: RawBytes = RawBytes {
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// Copies the bytes to `target`, which may overlap them.
    ///
    /// # Safety
    ///
    /// The bytes stay readable and `target` stays writable for `len` bytes
    /// during the call.
    pub unsafe fn copy_to(self, target: *mut u8) {
        // SAFETY: forwarded from the caller; `copy` is a memmove.
        unsafe { std::ptr::copy(self.ptr, target, self.len) }
    }
}

/// The bytes of `data`: borrowed from a `bytes` object directly (the
/// common case, without a buffer request), else through the protocol.
pub enum DataArg<'a, 'py> {
    /// A `bytes` object's own storage.
    Bytes(&'a [u8]),
    /// Any other exporter's buffer.
    Held(HeldBytes<'py>),
}

impl<'a, 'py> DataArg<'a, 'py> {
    pub fn new(data: &'a Bound<'py, PyAny>) -> PyResult<DataArg<'a, 'py>> {
        match data.cast::<PyBytes>() {
            Ok(bytes) => Ok(DataArg::Bytes(bytes.as_bytes())),
            Err(_) => HeldBytes::new(data).map(DataArg::Held),
        }
    }

    /// Bytes in the data.
    pub fn len(&self) -> usize {
        match self {
            DataArg::Bytes(bytes) => bytes.len(),
            DataArg::Held(held) => held.len(),
        }
    }

    /// The bytes, when they lie in one piece.
    pub fn contiguous(&self) -> Option<RawBytes> {
        match self {
            DataArg::Bytes(bytes) => Some(RawBytes {
                ptr: bytes.as_ptr(),
                len: bytes.len(),
            }),
            DataArg::Held(held) => held.contiguous(),
        }
    }

    /// The held buffer, for a strided copy.
    pub fn held(&self) -> Option<&HeldBytes<'py>> {
        match self {
            DataArg::Bytes(_) => None,
            DataArg::Held(held) => Some(held),
        }
    }
}

/// The exporter behind every `view()`: one per view, kept alive by the
/// memoryview (and everything sliced or made from it) until the last of
/// them is gone, when the interpreter releases its buffer.
#[repr(C)]
struct BlockView {
    object: ffi::PyObject,
    /// `Arc::into_raw` of the heap: the mapping stays while a view lives.
    heap: *const Heap,
    /// The block the view lies in (the key of the heap's view counts).
    block: u64,
    buf: *mut u8,
    len: ffi::Py_ssize_t,
    /// 1: `strides` points here for one-dimensional byte views.
    itemsize: ffi::Py_ssize_t,
    readonly: bool,
}

static BLOCK_VIEW_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn block_view_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    BLOCK_VIEW_TYPE
        .get_or_try_init(py, || {
            let mut slots = [
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_dealloc,
                    pfunc: block_view_dealloc as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_bf_getbuffer,
                    pfunc: block_view_getbuffer as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_bf_releasebuffer,
                    pfunc: block_view_releasebuffer as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: ffi::Py_tp_doc,
                    pfunc: c"The exporter behind a shmkit view: one block's bytes, in the segment."
                        .as_ptr() as *mut c_void,
                },
                ffi::PyType_Slot {
                    slot: 0,
                    pfunc: ptr::null_mut(),
                },
            ];
            let mut spec = ffi::PyType_Spec {
                name: c"shmkit.BlockView".as_ptr(),
                basicsize: std::mem::size_of::<BlockView>() as c_int,
                itemsize: 0,
                flags: (ffi::Py_TPFLAGS_DEFAULT
                    | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION
                    | ffi::Py_TPFLAGS_IMMUTABLETYPE) as _,
                slots: slots.as_mut_ptr(),
            };
            // SAFETY: the spec and its slots are valid for the call (the
            // interpreter copies what it keeps; the doc and name are static).
            let made = unsafe { ffi::PyType_FromSpec(&mut spec) };
            // SAFETY: a new reference or null with an exception set.
            let made = unsafe { Bound::from_owned_ptr_or_err(py, made) }?;
            Ok(made.cast_into::<PyType>()?.unbind())
        })
        .map(|ty| ty.bind(py))
}

/// A writable (or, for a read-only heap, read-only) `memoryview` of `len`
/// bytes at `buf`, inside the block at offset `block` of `heap`. The view
/// holds the heap (so the mapping) until the last memoryview made from it
/// is released, and counts as a live view of the block meanwhile.
///
/// The caller checked the block and calls this before anything can run
/// Python code: the view is counted first of all, so that a garbage
/// collection the allocations below may start, and a finalizer it runs
/// that frees the block, already find the block viewed.
pub fn block_memoryview<'py>(
    py: Python<'py>,
    heap: Arc<Heap>,
    block: u64,
    buf: NonNull<u8>,
    len: u64,
    readonly: bool,
) -> PyResult<Bound<'py, PyAny>> {
    heap.views().opened(block);
    let counted = ViewCount { heap, block };
    let len = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("view too long"))?;
    let ty = block_view_type(py)?;
    // SAFETY: `ty` is a live heap type whose instances are `BlockView`s;
    // the result is a new, zero-filled instance or null with an exception.
    let object = unsafe { ffi::PyType_GenericAlloc(ty.as_type_ptr(), 0) };
    // SAFETY: as above.
    let exporter = unsafe { Bound::from_owned_ptr_or_err(py, object) }?;
    // The exporter takes the count over: its deallocation ends it.
    let heap = counted.hand_over();
    // SAFETY: the instance is ours alone (just made), its storage a
    // `BlockView` whose Python header the allocation initialized.
    unsafe {
        let view = exporter.as_ptr().cast::<BlockView>();
        (*view).heap = Arc::into_raw(heap);
        (*view).block = block;
        (*view).buf = buf.as_ptr();
        (*view).len = len;
        (*view).itemsize = 1;
        (*view).readonly = readonly;
    }
    // SAFETY: `exporter` is a live object with the buffer protocol; the
    // memoryview takes its own reference to it.
    let memoryview = unsafe { ffi::PyMemoryView_FromObject(exporter.as_ptr()) };
    // SAFETY: a new reference or null with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, memoryview) }
}

/// A view counted in the heap's record until it drops, unless handed
/// over to the exporter, which then ends it.
struct ViewCount {
    heap: Arc<Heap>,
    block: u64,
}

impl ViewCount {
    fn hand_over(self) -> Arc<Heap> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the heap is moved out once.
        unsafe { std::ptr::read(&this.heap) }
    }
}

impl Drop for ViewCount {
    fn drop(&mut self) {
        self.heap.views().closed(self.block);
    }
}

/// `bf_getbuffer`.
unsafe extern "C" fn block_view_getbuffer(
    object: *mut ffi::PyObject,
    view: *mut RawBuffer,
    flags: c_int,
) -> c_int {
    // SAFETY: the interpreter calls this with its lock held, on a live
    // `BlockView` (only `block_memoryview` makes them, and it sets every
    // field before the first export).
    let this = unsafe { &mut *object.cast::<BlockView>() };
    let refuse = |message: &std::ffi::CStr| {
        // SAFETY: the lock is held; the message is a static C string.
        unsafe { ffi::PyErr_SetString(ffi::PyExc_BufferError, message.as_ptr()) };
        -1
    };
    if view.is_null() {
        return refuse(c"a shmkit view needs a buffer to fill");
    }
    if this.heap.is_null() {
        return refuse(c"this shmkit view is not attached to a heap");
    }
    if flags & PYBUF_WRITABLE != 0 && this.readonly {
        return refuse(c"the segment is attached read-only");
    }
    // SAFETY: `view` is the caller's writable `Py_buffer`; the pointers
    // stored in it point into `this`, which the reference in `obj` keeps
    // alive until the buffer is released.
    unsafe {
        let view = &mut *view;
        view.buf = this.buf.cast();
        ffi::Py_IncRef(object);
        view.obj = object;
        view.len = this.len;
        view.itemsize = 1;
        view.readonly = c_int::from(this.readonly);
        view.ndim = 1;
        view.format = if flags & PYBUF_FORMAT != 0 {
            c"B".as_ptr().cast_mut()
        } else {
            ptr::null_mut()
        };
        view.shape = if flags & PYBUF_ND == PYBUF_ND {
            &mut this.len
        } else {
            ptr::null_mut()
        };
        view.strides = if flags & PYBUF_STRIDES == PYBUF_STRIDES {
            &mut this.itemsize
        } else {
            ptr::null_mut()
        };
        view.suboffsets = ptr::null_mut();
        view.internal = ptr::null_mut();
    }
    0
}

/// `bf_releasebuffer`: nothing to do: the exporter counts as a view for
/// its whole life, and each buffer it exported holds a reference to it.
unsafe extern "C" fn block_view_releasebuffer(_object: *mut ffi::PyObject, _view: *mut RawBuffer) {}

unsafe extern "C" fn block_view_dealloc(object: *mut ffi::PyObject) {
    // SAFETY: the interpreter deallocates a `BlockView` whose reference
    // count reached zero, so nothing else uses it; the heap reference came
    // from `Arc::into_raw` and is given back once.
    unsafe {
        let this = &mut *object.cast::<BlockView>();
        if !this.heap.is_null() {
            // The view ends with its exporter (every buffer it exported
            // held a reference to it, so none is out any more).
            (*this.heap).views().closed(this.block);
            drop(Arc::from_raw(this.heap));
            this.heap = ptr::null();
        }
        let ty = ffi::Py_TYPE(object);
        let free = ffi::PyType_GetSlot(ty, ffi::Py_tp_free);
        if !free.is_null() {
            let free: ffi::freefunc = std::mem::transmute(free);
            free(object.cast());
        }
        // Instances of a heap type hold a reference to it.
        ffi::Py_DecRef(ty.cast());
    }
}
