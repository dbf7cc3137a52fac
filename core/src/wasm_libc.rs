//! What the JPEG 2000 decoder of [`crate::dicom`] needs from a C library,
//! on wasm32 where there is none. openjp2 is translated from C and calls
//! malloc, calloc, realloc, free and strcpy: `tinyrlibc` provides them in
//! Rust on the Rust allocator. And it frees code blocks it never allocated
//! (null pointers) through Rust's `dealloc`, which the native allocator
//! (C's free) forgives and wasm's traps on: the allocator below forgives
//! it too. Every wasm build that links the core gets both.
use tinyrlibc as _;

use std::alloc::{GlobalAlloc, Layout, System};

/// The standard allocator, except that freeing a null pointer does
/// nothing, as C's `free(NULL)`.
struct NullFreeTolerant;

unsafe impl GlobalAlloc for NullFreeTolerant {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !ptr.is_null() {
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: NullFreeTolerant = NullFreeTolerant;
