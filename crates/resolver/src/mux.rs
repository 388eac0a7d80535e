//! One gRPC watch stream per etcd client, shared by the watches of every
//! prefix the client follows.
//!
//! etcd's `Watch` RPC is a bidirectional stream that can carry any number
//! of watches, told apart by their watch id (Go's clientv3 puts every watch
//! of a client on one stream). A [`Mux`] does the same: one task per client
//! owns the stream, sends each watch's create and cancel requests on it and
//! routes each response to its watch by id. The stream is opened with the
//! first watch, on whichever member the client's channel picks (a ready
//! one, with require-leader), and closed when the last watch is cancelled,
//! which is what ends etcd's watcher and watch stream.
//!
//! When the stream breaks (its member died, lost its leader, or the
//! connection failed), every watch on it is told at once, with the error;
//! each one's owner re-opens its watch from its own last revision, and the
//! first of them opens the new stream on another member. A watch etcd
//! cancels alone (compaction) is told alone. A watch whose owner falls
//! [`QUEUE`] responses behind is cancelled at etcd and its queue closed
//! after the responses already in it: its owner resumes it from the last
//! revision it applied, and the others never wait for it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Client, Error, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use futures::StreamExt as _;
use tokio::{sync::mpsc, time::timeout};
use tracing::{Instrument as _, debug};

/// How many responses a watch's owner may leave unread before the watch is
/// dropped from the stream (its owner then resumes it).
pub(crate) const QUEUE: usize = 64;

/// What a watch receives: etcd's responses for it, or why the stream that
/// carried it broke (shared: every watch on the stream gets the same).
type Delivery = Result<WatchResponse, Arc<Error>>;

/// The client's shared watch stream; clones share it.
#[derive(Clone)]
pub(crate) struct Mux {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// The task's commands; `None` until the first watch.
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
}

enum Command {
    Watch {
        id: i64,
        key: Vec<u8>,
        options: WatchOptions,
        deliver: mpsc::Sender<Delivery>,
        /// How long opening the stream or sending on it may take.
        limit: Duration,
    },
    Cancel {
        id: i64,
    },
}

/// A watch on the shared stream; dropping it cancels the watch at etcd.
pub(crate) struct Watch {
    id: i64,
    responses: mpsc::Receiver<Delivery>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Mux {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                commands: Mutex::new(None),
            }),
        }
    }

    /// Adds a watch of `key` with `options` (its watch id is set here) to
    /// the stream, opening the stream if there is none; `limit` bounds
    /// opening it and sending the request. The first response is etcd's
    /// answer to the creation (`created`, or `canceled` with the reason).
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub(crate) fn watch(&self, key: Vec<u8>, options: WatchOptions, limit: Duration) -> Watch {
        let (deliver, responses) = mpsc::channel(QUEUE);
        let mut commands = self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let sender = commands.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = Task::new(self.inner.client.clone());
            tokio::spawn(
                task.run(rx)
                    .instrument(tracing::debug_span!("watch_stream")),
            );
            tx
        });
        let id = next_id();
        // The task lives as long as a sender: this one is in `Inner`.
        let _ = sender.send(Command::Watch {
            id,
            key,
            options: options.with_watch_id(id),
            deliver,
            limit,
        });
        Watch {
            id,
            responses,
            commands: sender.clone(),
        }
    }
}

/// Watch ids, unique in this process (etcd wants them unique per stream and
/// non-zero; 0 asks etcd to pick one).
fn next_id() -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Watch {
    /// The next response of this watch: `Ok(None)` when the watch was
    /// dropped from the stream because its owner fell behind (resume it),
    /// `Err` when the stream broke or could not be opened.
    pub(crate) async fn message(&mut self) -> Result<Option<WatchResponse>, Error> {
        match self.responses.recv().await {
            Some(Ok(response)) => Ok(Some(response)),
            Some(Err(error)) => Err(Arc::try_unwrap(error)
                .unwrap_or_else(|shared| Error::WatchError(etcd::describe(&shared)))),
            None => Ok(None),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel { id: self.id });
    }
}

/// A watch on the stream.
struct Route {
    deliver: mpsc::Sender<Delivery>,
    /// etcd's id for it, once created (the one we asked for, on etcd 3.4
    /// and later).
    server: Option<i64>,
}

/// The open stream.
struct Stream {
    sender: WatchRequestSender,
    responses: WatchResponseStream,
}

/// The task that owns the stream.
struct Task {
    client: Client,
    stream: Option<Stream>,
    routes: HashMap<i64, Route>,
    /// Watches whose creation etcd has not answered yet, in the order they
    /// were sent: etcd answers creations in that order.
    creating: VecDeque<i64>,
    /// etcd's watch id → ours.
    ours: HashMap<i64, i64>,
    /// The longest `limit` a watch gave, for cancel requests.
    limit: Duration,
}

impl Task {
    fn new(client: Client) -> Self {
        Self {
            client,
            stream: None,
            routes: HashMap::new(),
            creating: VecDeque::new(),
            ours: HashMap::new(),
            limit: Duration::from_secs(5),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let response = async {
                match &mut self.stream {
                    Some(stream) => stream.responses.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Watch { id, key, options, deliver, limit }) => {
                        self.limit = limit;
                        self.add(id, key, options, deliver, limit).await;
                    }
                    Some(Command::Cancel { id }) => self.cancel(id).await,
                    // Every resolver and watch is gone.
                    None => return,
                },
                response = response => match response {
                    Some(Ok(response)) => self.route(response).await,
                    Some(Err(error)) => self.broken(Arc::new(error)),
                    None => self.broken(Arc::new(Error::WatchError(
                        "etcd ended the watch stream".into(),
                    ))),
                },
            }
        }
    }

    async fn add(
        &mut self,
        id: i64,
        key: Vec<u8>,
        options: WatchOptions,
        deliver: mpsc::Sender<Delivery>,
        limit: Duration,
    ) {
        if deliver.is_closed() {
            // Its owner gave up already.
            return;
        }
        let sent = match &mut self.stream {
            Some(stream) => timeout(limit, stream.sender.watch(key, Some(options))).await,
            None => {
                let mut client = self.client.clone();
                match timeout(limit, client.watch(key, Some(options))).await {
                    Ok(Ok(stream)) => {
                        let (sender, responses) = stream.split();
                        debug!("opened the watch stream");
                        self.stream = Some(Stream { sender, responses });
                        Ok(Ok(()))
                    }
                    Ok(Err(error)) => {
                        // No stream, so this watch alone is told.
                        let _ = deliver.try_send(Err(Arc::new(error)));
                        return;
                    }
                    Err(elapsed) => Err(elapsed),
                }
            }
        };
        self.routes.insert(
            id,
            Route {
                deliver,
                server: None,
            },
        );
        self.creating.push_back(id);
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.broken(Arc::new(error)),
            Err(_) => self.broken(Arc::new(timed_out(limit))),
        }
    }

    async fn cancel(&mut self, id: i64) {
        let Some(route) = self.routes.remove(&id) else {
            return;
        };
        if self.routes.is_empty() {
            // The last watch: closing the stream ends it at etcd.
            self.close();
            return;
        }
        // Still being created: cancelled when etcd says it is.
        if let Some(server) = route.server {
            self.ours.remove(&server);
            self.send_cancel(server).await;
        }
    }

    async fn send_cancel(&mut self, server: i64) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        match timeout(self.limit, stream.sender.cancel(server)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.broken(Arc::new(error)),
            Err(_) => self.broken(Arc::new(timed_out(self.limit))),
        }
    }

    /// Hands `response` to its watch.
    async fn route(&mut self, response: WatchResponse) {
        let server = response.watch_id();
        let id = if response.created() {
            let Some(id) = self.creating.pop_front() else {
                debug!(server, "a watch creation nobody asked for");
                return;
            };
            if !response.canceled() {
                self.ours.insert(server, id);
                match self.routes.get_mut(&id) {
                    Some(route) => route.server = Some(server),
                    None => {
                        // Cancelled while it was being created.
                        self.ours.remove(&server);
                        self.send_cancel(server).await;
                        return;
                    }
                }
            }
            id
        } else {
            match self.ours.get(&server) {
                Some(&id) => id,
                // A watch we cancelled, or a progress notification.
                None => return,
            }
        };
        if response.canceled() {
            // etcd sends nothing more for it.
            self.ours.remove(&server);
            if let Some(route) = self.routes.remove(&id) {
                let _ = route.deliver.try_send(Ok(response));
            }
            if self.routes.is_empty() {
                self.close();
            }
            return;
        }
        let Some(route) = self.routes.get(&id) else {
            return;
        };
        if route.deliver.try_send(Ok(response)).is_err() {
            // Its owner is gone or fell behind: drop it from the stream;
            // its queue ends after what is in it, and it resumes from there.
            debug!(server, "dropping a watch whose owner fell behind");
            self.routes.remove(&id);
            self.ours.remove(&server);
            if self.routes.is_empty() {
                self.close();
            } else {
                self.send_cancel(server).await;
            }
        }
    }

    /// The stream broke: every watch on it is told why, and the next watch
    /// opens a new one.
    fn broken(&mut self, error: Arc<Error>) {
        debug!(%error, watches = self.routes.len(), "the watch stream broke");
        self.stream = None;
        self.creating.clear();
        self.ours.clear();
        for (_, route) in self.routes.drain() {
            // A full queue is closed instead: its owner resumes all the same.
            let _ = route.deliver.try_send(Err(error.clone()));
        }
    }

    fn close(&mut self) {
        debug!("closing the watch stream: no watch left");
        self.stream = None;
        self.creating.clear();
        self.ours.clear();
    }
}

fn timed_out(limit: Duration) -> Error {
    Error::WatchError(format!("etcd did not answer within {limit:?}"))
}
