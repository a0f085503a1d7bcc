//! Shutdown signals as events: SIGTERM and SIGINT are blocked and collected by a dedicated
//! thread with `sigwait`, so no handler ever runs in signal context and the event loop sees a
//! signal as one more message on its channel.

use std::sync::mpsc::Sender;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGTERM and SIGINT in the calling thread (and the threads it spawns later) and starts
/// a thread that sends `wrap(signal)` for each, so that no handler runs in signal context.
pub fn install_signal_thread<E: Send + 'static>(
    tx: Sender<E>,
    wrap: fn(i32) -> E,
) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    // Blocked before the thread starts: a signal arriving in between stays pending for it.
    set.thread_block().context("pthread_sigmask")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                // An error (EINVAL) cannot happen with a valid set; wait again like before.
                if let Ok(sig) = set.wait()
                    && tx.send(wrap(sig as i32)).is_err()
                {
                    return;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_numbers_are_the_kernel_ones() {
        // Callers match on the libc numbers they receive through `wrap`.
        assert_eq!(Signal::SIGTERM as i32, libc::SIGTERM);
        assert_eq!(Signal::SIGINT as i32, libc::SIGINT);
    }
}
