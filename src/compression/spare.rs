//! Encoder states kept per thread between answers: making and clearing a zstd context or a
//! deflate state (hundreds of KB of tables) costs more than compressing a 10 KB body.

use std::cell::RefCell;
use std::thread::LocalKey;

/// At most this many spare states of one kind per thread.
const MAX: usize = 8;

/// A thread's spare states of one kind.
pub type Pool<T> = LocalKey<RefCell<Vec<T>>>;

/// A spare state that `fits`, if the thread has one.
pub fn take<T: 'static>(pool: &'static Pool<T>, fits: impl Fn(&T) -> bool) -> Option<T> {
    pool.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(fits)?;
        Some(p.swap_remove(i))
    })
}

/// Keeps a finished answer's state (already reset) for the next, unless the thread has enough.
pub fn give_back<T: 'static>(pool: &'static Pool<T>, state: T) {
    pool.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < MAX {
            p.push(state);
        }
    });
}
