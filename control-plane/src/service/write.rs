//! The one write path of every kind (DESIGN §3, STYLE §13): store write (revision bumped,
//! outbox flag set, one atomic operation) → broker work and a confirmed publish → answer →
//! outbox flag cleared.
//!
//! Concurrent writes of one object in this instance are combined: they queue on the
//! object's slot, and whichever task runs next takes the whole queue, applies the changes one
//! after another to the current document (each getting its own revision), writes the result
//! in ONE compare-and-swap, publishes the final state ONCE, and answers each writer with the
//! document at its own revision. Twenty clients updating one app cost one store round trip
//! and one confirm per batch instead of a compare-and-swap storm, and revisions still go up
//! by exactly one per acknowledged change. When the compare-and-swap fails (another instance,
//! or this one's follow-up repair, wrote in between), the batch is applied again to what the
//! store holds.
//!
//! Each batch runs in a task of its own (tracked, so that shutdown waits for it): a caller
//! that goes away (a client disconnecting, a request timeout) never abandons a half-done
//! write of other callers.
//!
//! Round trips kept off a write's path: while writes of an object keep coming (the slot
//! lives while anyone waits on it), the slot remembers what the last batch wrote, so the next
//! batch goes straight to the compare-and-swap; a lone writer reads first. And a write is
//! answered before its outbox flag is cleared (a flag left set only makes the outbox
//! republish a state agents already have).

use super::resource::{Lifecycle, Resource};
use super::{Service, ServiceError, Stored};
use crate::error::{AmqpError, StoreError};
use crate::store::Record;
use nebula_protocol::Name;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// A change function: the new document from the current one, or a rejection whose reason
/// the caller kept (see [`Service::update`]). Called again when the batch is re-applied.
pub(crate) type ChangeFn<R> = Box<dyn Fn(&R) -> Result<R, Rejected> + Send + Sync>;

/// Marks a change its caller refused; the caller holds its own error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rejected;

pub(crate) enum Change<R> {
    Create(R),
    Update { change: ChangeFn<R>, revise: bool },
    Delete,
}

impl<R> Change<R> {
    fn is_update(&self) -> bool {
        matches!(self, Self::Update { .. })
    }
}

struct Op<R> {
    change: Change<R>,
    done: oneshot::Sender<Result<Option<R>, ServiceError>>,
}

/// The write queues of one kind, one slot per object name.
pub(crate) struct Writes<R> {
    slots: Mutex<HashMap<Name, Arc<Slot<R>>>>,
}

impl<R> Default for Writes<R> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<R> std::fmt::Debug for Writes<R> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Writes")
            .field("objects", &lock(&self.slots).len())
            .finish()
    }
}

struct Slot<R> {
    queue: Mutex<Vec<Op<R>>>,
    /// Held by the task that runs the queue, so one object's batches never overlap. It
    /// guards what this instance last wrote of the object, `None` when unknown.
    runner: tokio::sync::Mutex<Option<Stored<R>>>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a push, a take or a map update: consistent even after a panic.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<R: Lifecycle> Writes<R> {
    fn slot(&self, name: &Name) -> Arc<Slot<R>> {
        Arc::clone(lock(&self.slots).entry(name.clone()).or_insert_with(|| {
            Arc::new(Slot {
                queue: Mutex::new(Vec::new()),
                runner: tokio::sync::Mutex::new(None),
            })
        }))
    }

    /// Drops the slot of an object nobody is writing, so that the map does not grow with
    /// every name ever written.
    fn release(&self, name: &Name, slot: &Arc<Slot<R>>) {
        let mut slots = lock(&self.slots);
        // The map's reference and ours: nobody else holds it, and nobody can take it
        // while the map is locked.
        if Arc::strong_count(slot) == 2 && lock(&slot.queue).is_empty() {
            slots.remove(name);
        }
    }

    /// Queues `change` on `name`'s slot and waits for its outcome.
    ///
    /// Refused before anything is stored while the broker link has no connection (it is
    /// reconnecting, or the cluster has lost its majority): the client gets a 503 and the
    /// store stays as it was. Checked again when the write's turn comes (it may have queued
    /// behind a batch that waited on a dying connection). Only a write already stored when the
    /// connection fails ends stored but unconfirmed (503 too); the outbox publishes it.
    pub(crate) async fn submit(
        &self,
        service: &Service,
        name: &Name,
        change: Change<R>,
    ) -> Result<Option<R>, ServiceError> {
        if !service.broker.is_connected() {
            return Err(not_connected());
        }
        let slot = self.slot(name);
        let (done, outcome) = oneshot::channel();
        lock(&slot.queue).push(Op { change, done });
        let service = service.clone();
        let name = name.clone();
        let tasks = service.tasks.clone();
        tasks.spawn(async move {
            let mut last = slot.runner.lock().await;
            let batch = std::mem::take(&mut *lock(&slot.queue));
            if !batch.is_empty() {
                run(&service, &name, batch, &mut last).await;
            }
            drop(last);
            R::writes(&service).release(&name, &slot);
        });
        outcome
            .await
            .unwrap_or_else(|_| Err(ServiceError::Interrupted))
    }
}

/// What a write gets when there is no broker connection to publish it on.
fn not_connected() -> ServiceError {
    ServiceError::Amqp(AmqpError::Unavailable("the write was not stored".into()))
}

/// Runs a batch in order: consecutive updates together, each create or delete on its own.
/// `last` is what this instance last wrote of the object, kept up to date here.
async fn run<R: Lifecycle>(
    service: &Service,
    name: &Name,
    batch: Vec<Op<R>>,
    last: &mut Option<Stored<R>>,
) {
    let _publishing = service.publishing.enter(R::KIND, name.as_str());
    let mut ops = batch.into_iter().peekable();
    while let Some(op) = ops.next() {
        if !service.broker.is_connected() {
            let _ = op.done.send(Err(not_connected()));
            continue;
        }
        match op.change {
            Change::Create(document) => {
                *last = None;
                match create(service, document).await {
                    Ok(stored) => {
                        let _ = op.done.send(Ok(Some(stored.document.clone())));
                        *last = Some(stored.clone());
                        spawn_settle(service, stored);
                    }
                    Err(error) => {
                        let _ = op.done.send(Err(error));
                    }
                }
            }
            Change::Delete => {
                *last = None;
                let result = delete::<R>(service, name).await.map(|()| None);
                let _ = op.done.send(result);
            }
            Change::Update { .. } => {
                let mut updates = vec![op];
                while ops.peek().is_some_and(|next| next.change.is_update()) {
                    updates.extend(ops.next());
                }
                let known = last.take();
                *last = update(service, name, updates, known).await;
            }
        }
    }
}

/// A record of `document` as the write path stores it: flagged for the outbox.
fn record_of<R: Resource>(
    document: &R,
    detach: &[Name],
    tombstone: bool,
) -> Result<Record, StoreError> {
    Ok(Record {
        name: document.name().to_string(),
        version: 0,
        pending_publish: true,
        tombstone,
        body: document.to_body(detach)?,
    })
}

/// Stores and publishes a new object; the caller answers, then settles it.
async fn create<R: Lifecycle>(
    service: &Service,
    mut document: R,
) -> Result<Stored<R>, ServiceError> {
    R::check(service, None, &document).await?;
    let incarnation = service
        .store
        .next_incarnation()
        .await
        .map_err(|error| service.store_error(error))?;
    document.created(incarnation);
    let record = record_of(&document, &[], false).map_err(|error| service.store_error(error))?;
    let version = loop {
        match service.store.insert(R::KIND, &record).await {
            Ok(()) => break 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(error) => return Err(service.store_error(error)),
        }
        // The name had an object before: re-create over its tombstone, so that the record's
        // versions keep going up (see `Record::tombstone`).
        let Some(tombstone) = service.read::<R>(document.name()).await? else {
            // An insert of another instance not visible to this read yet: a moment later.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if !tombstone.tombstone {
            return Err(R::exists(document.name().clone()));
        }
        let version = tombstone.version;
        if tombstone.pending_publish {
            // A delete an instance died in the middle of: finish it first.
            R::finish_delete(service, tombstone).await?;
        }
        // The new incarnation starts with a fresh exchange: one re-declared by a write that
        // raced the old delete could still hold the old incarnation's bindings.
        if let Some(exchange) = R::exchange(document.name()) {
            service.delete_exchange(&exchange).await?;
        }
        match service.store.replace(R::KIND, version, &record).await {
            Ok(version) => break version,
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
            Err(error) => return Err(service.store_error(error)),
        }
    };
    let stored = Stored {
        version,
        pending_publish: true,
        tombstone: false,
        document,
        detach: Vec::new(),
    };
    tracing::info!(kind = R::KIND.label(), name = %stored.document.name(), version = %stored.document.version(), "created");
    publish(service, &stored).await?;
    Ok(stored)
}

/// Applies a batch of updates (see the module docs), answers each, and returns what was
/// written (`None` when nothing was, or it is unknown).
async fn update<R: Lifecycle>(
    service: &Service,
    name: &Name,
    mut ops: Vec<Op<R>>,
    mut known: Option<Stored<R>>,
) -> Option<Stored<R>> {
    let (stored, outcomes) = loop {
        let remembered = known.is_some();
        let current = match known.take() {
            Some(current) => current,
            None => match service.read::<R>(name).await {
                Ok(Some(stored)) if !stored.tombstone => stored,
                Ok(_) => {
                    answer_all(ops, || Err(R::not_found(name.clone())));
                    return None;
                }
                Err(error) => {
                    answer_all(ops, || Err(error.clone()));
                    return None;
                }
            },
        };
        let mut state = current.document.clone();
        let mut outcomes: Vec<Result<R, ServiceError>> = Vec::with_capacity(ops.len());
        for op in &ops {
            let Change::Update { change, revise } = &op.change else {
                unreachable!("an update batch holds updates only")
            };
            let outcome = match change(&state) {
                Ok(mut next) => {
                    next.follows(&state, *revise);
                    R::check(service, Some(&state), &next).await.map(|()| next)
                }
                Err(Rejected) => Err(ServiceError::Rejected),
            };
            if let Ok(next) = &outcome {
                state = next.clone();
            }
            outcomes.push(outcome);
        }
        if outcomes.iter().all(Result::is_err) {
            if remembered {
                // Refused on what this instance remembered, which no compare-and-swap has
                // checked: decide again on what the store holds.
                continue;
            }
            for (op, outcome) in ops.drain(..).zip(outcomes) {
                let _ = op.done.send(outcome.map(Some));
            }
            return Some(current);
        }
        match write_successor(service, &current, state).await {
            Ok(stored) => break (stored, outcomes),
            // Another instance wrote in between (or what this one remembered is out of
            // date): apply the batch again to what the store holds.
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => {
                answer_all(ops, || Err(R::not_found(name.clone())));
                return None;
            }
            Err(error) => {
                let error = service.store_error(error);
                answer_all(ops, || Err(error.clone()));
                return None;
            }
        }
    };
    tracing::debug!(
        kind = R::KIND.label(),
        name = %name,
        version = %stored.document.version(),
        changes = outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
        "changed"
    );
    service.metrics.write_batch(outcomes.len());
    let published = publish(service, &stored).await;
    for (op, outcome) in ops.into_iter().zip(outcomes) {
        let answer = match (&published, outcome) {
            (Ok(()), outcome) => outcome.map(Some),
            (Err(error), Ok(_)) => Err(error.clone()),
            (Err(_), Err(error)) => Err(error),
        };
        let _ = op.done.send(answer);
    }
    match published {
        Ok(()) => {
            spawn_settle(service, stored.clone());
            // The broker has unbound what this write detached.
            Some(Stored {
                detach: Vec::new(),
                ..stored
            })
        }
        Err(_) => None,
    }
}

/// The links to remove at the broker after this write: everything the previous version
/// linked or still had to unlink, that the new one does not link.
fn detach_list<R: Resource>(previous: &Stored<R>, next: &R) -> Vec<Name> {
    let keep = next.links();
    let mut detach: Vec<Name> = previous
        .document
        .links()
        .into_iter()
        .chain(previous.detach.iter().cloned())
        .filter(|name| !keep.contains(name))
        .collect();
    detach.sort();
    detach.dedup();
    detach
}

fn answer_all<R>(ops: Vec<Op<R>>, outcome: impl Fn() -> Result<Option<R>, ServiceError>) {
    for op in ops {
        let _ = op.done.send(outcome());
    }
}

/// Publishes a stored write. A broker 404 means another instance deleted the object
/// meanwhile: its own delete supersedes this write, so the caller hears that the object is
/// gone.
async fn publish<R: Lifecycle>(service: &Service, stored: &Stored<R>) -> Result<(), ServiceError> {
    match R::publish(service, stored).await {
        Ok(()) => Ok(()),
        Err(ServiceError::Amqp(error)) if error.is_not_found() => {
            let name = stored.document.name().clone();
            tracing::info!(kind = R::KIND.label(), name = %name, error = %error, "deleted while being written");
            Err(R::not_found(name))
        }
        Err(error) => Err(error),
    }
}

/// After the callers were answered, in a task of its own so that the object's next batch
/// does not wait for it: [`settle`].
fn spawn_settle<R: Lifecycle>(service: &Service, stored: Stored<R>) {
    let service = service.clone();
    let tasks = service.tasks.clone();
    tasks.spawn(async move {
        let name = stored.document.name().clone();
        let _publishing = service.publishing.enter(R::KIND, name.as_str());
        if let Err(error) = settle(&service, stored).await {
            tracing::warn!(kind = R::KIND.label(), name = %name, error = %error, "settling a write failed; its outbox flag stays for the outbox");
        }
    });
}

/// Makes the follow-up change the store needs, if any (see [`Lifecycle::repair`]), then
/// clears the outbox flag of the last version written — in that order, so that a flag is
/// only ever cleared once nothing is left to do, and an instance dying in between leaves the
/// work to the outbox (which settles too). Everything is a compare-and-swap on the version:
/// when another batch wrote first, the flag and the repair are its to handle.
pub(crate) async fn settle<R: Lifecycle>(
    service: &Service,
    stored: Stored<R>,
) -> Result<(), ServiceError> {
    let mut current = stored;
    // A bounded number of follow-ups: each one is a new revision that is itself checked.
    for _ in 0..4 {
        let Some(mut next) = R::repair(service, &current).await? else {
            break;
        };
        next.follows(&current.document, true);
        match write_successor(service, &current, next).await {
            Ok(written) => {
                tracing::warn!(kind = R::KIND.label(), name = %written.document.name(), version = %written.document.version(), "repaired after a concurrent change");
                current = written;
                publish(service, &current).await?;
            }
            // Someone else wrote meanwhile; their write runs its own repair.
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => return Ok(()),
            Err(error) => return Err(service.store_error(error)),
        }
    }
    clear_pending(service, &current).await
}

/// Writes `next` over `current` with one compare-and-swap on `current`'s version, flagged for
/// the outbox, with the links it detaches. The store's error as it is (a conflict or a
/// missing record is the caller's to decide on).
async fn write_successor<R: Resource>(
    service: &Service,
    current: &Stored<R>,
    next: R,
) -> Result<Stored<R>, StoreError> {
    let detach = detach_list(current, &next);
    let record = record_of(&next, &detach, false)?;
    let version = service
        .store
        .replace(R::KIND, current.version, &record)
        .await?;
    Ok(Stored {
        version,
        pending_publish: true,
        tombstone: false,
        document: next,
        detach,
    })
}

/// Clears the outbox flag of a published write (and, with it, the links it had to remove:
/// the broker has removed them). `false` from the store means a newer version exists, whose
/// writer clears its own flag.
pub(crate) async fn clear_pending<R: Resource>(
    service: &Service,
    stored: &Stored<R>,
) -> Result<(), ServiceError> {
    let mut record = record_of(&stored.document, &[], stored.tombstone)
        .map_err(|error| service.store_error(error))?;
    record.version = stored.version;
    service
        .store
        .clear_pending(R::KIND, &record)
        .await
        .map(|_| ())
        .map_err(|error| service.store_error(error))
}

async fn delete<R: Lifecycle>(service: &Service, name: &Name) -> Result<(), ServiceError> {
    let tombstone = loop {
        let current = match service.read::<R>(name).await? {
            Some(stored) if !stored.tombstone => stored,
            _ => return Err(R::not_found(name.clone())),
        };
        let record = record_of(&current.document, &current.detach, true)
            .map_err(|error| service.store_error(error))?;
        match service
            .store
            .replace(R::KIND, current.version, &record)
            .await
        {
            Ok(version) => {
                break Stored {
                    version,
                    pending_publish: true,
                    tombstone: true,
                    ..current
                };
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::NotFound { .. }) => return Err(R::not_found(name.clone())),
            Err(error) => return Err(service.store_error(error)),
        }
    };
    R::finish_delete(service, tombstone).await
}

/// Drops a deleted object's exchange (and with it every binding to and from it) — unless the
/// record is no longer this tombstone: a re-create over it (here or on another instance)
/// owns the exchange now, and dropping it would cut the new incarnation's devices off.
pub(crate) async fn delete_exchange_unless_revived<R: Lifecycle>(
    service: &Service,
    tombstone: &Stored<R>,
) -> Result<(), ServiceError> {
    let name = tombstone.document.name();
    match service.read::<R>(name).await {
        Ok(Some(current)) if current.tombstone && current.version == tombstone.version => {}
        Ok(_) => {
            tracing::info!(kind = R::KIND.label(), name = %name, "re-created while its delete finished; its exchange stays");
            return Ok(());
        }
        Err(error) => return Err(error),
    }
    match R::exchange(name) {
        Some(exchange) => service.delete_exchange(&exchange).await,
        None => Ok(()),
    }
}
