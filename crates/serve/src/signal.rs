//! [`shutdown_signal`]: SIGINT/SIGTERM as a shutdown future.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{Error, ErrorKind};

/// Exit code of a process ended by a second signal, as a shell reports
/// SIGINT.
pub const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

/// Installs SIGINT and SIGTERM handlers now and returns a future that
/// completes at the first of them: pass it to
/// [`Bound::serve`](crate::Bound::serve) to drain on a signal. A second
/// signal ends the process at once with exit code 130
/// ([`SECOND_SIGNAL_EXIT_CODE`]), for an operator who does not want to wait
/// for the drain.
///
/// Call it early (before binding and registering), so that a signal
/// arriving during start-up drains instead of killing the process. Needs a
/// tokio runtime.
///
/// ```no_run
/// # async fn demo() -> Result<(), etcdlb_serve::Error> {
/// let shutdown = etcdlb_serve::shutdown_signal()?;
/// shutdown.await; // SIGINT or SIGTERM
/// # Ok(()) }
/// ```
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Error::new(
                ErrorKind::Signal,
                format!("cannot install signal handlers: {e}"),
            ));
        }
    };
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        info!("signal received: draining (signal again to exit at once)");
        let _ = first_tx.send(());
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        warn!("second signal: exiting now");
        std::process::exit(SECOND_SIGNAL_EXIT_CODE);
    });
    Ok(async move {
        // A dropped sender means the runtime is going away: stop as well.
        let _ = first_rx.await;
    })
}
