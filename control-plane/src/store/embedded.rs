//! The embedded store: a redb database file in `NEBULA_DATA_DIR`.
//!
//! redb commits are durable (fsync'd) and crash-safe, and it runs one write transaction at a
//! time, so a compare-and-swap inside one write transaction is atomic. redb is blocking; every
//! call runs on tokio's blocking pool. One control-plane instance per data directory (redb
//! locks the file).

use super::{Kind, Record, Store};
use crate::error::StoreError;
use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const FILE_NAME: &str = "nebula.redb";

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.collection())
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    database: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `directory`, creating the tables.
    pub fn open(directory: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(directory).map_err(unavailable)?;
        let database = Database::create(directory.join(FILE_NAME)).map_err(unavailable)?;
        let transaction = database.begin_write().map_err(unavailable)?;
        for kind in Kind::ALL {
            transaction.open_table(table(kind)).map_err(unavailable)?;
        }
        transaction.commit().map_err(unavailable)?;
        Ok(Self {
            database: Arc::new(database),
        })
    }

    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let database = Arc::clone(&self.database);
        tokio::task::spawn_blocking(move || work(&database))
            .await
            .map_err(unavailable)?
    }
}

fn decode(kind: Kind, name: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        kind: kind.label(),
        name: name.to_string(),
        reason: error.to_string(),
    })
}

fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(unavailable)
}

/// Runs `change` on the current record inside one write transaction and commits what it
/// returns: `Some(record)` to write, `None` to delete. The closure's error aborts.
fn modify<R>(
    database: &Database,
    kind: Kind,
    name: &str,
    change: impl FnOnce(Option<Record>) -> Result<(Option<Option<Record>>, R), StoreError>,
) -> Result<R, StoreError> {
    let transaction = database.begin_write().map_err(unavailable)?;
    let result = {
        let mut opened = transaction.open_table(table(kind)).map_err(unavailable)?;
        let current = match opened.get(name).map_err(unavailable)? {
            Some(guard) => Some(decode(kind, name, guard.value())?),
            None => None,
        };
        let (write, result) = change(current)?;
        match write {
            Some(Some(record)) => {
                opened
                    .insert(name, encode(&record)?.as_slice())
                    .map_err(unavailable)?;
            }
            Some(None) => {
                opened.remove(name).map_err(unavailable)?;
            }
            None => {}
        }
        result
    };
    transaction.commit().map_err(unavailable)?;
    Ok(result)
}

fn read_all(
    database: &Database,
    kind: Kind,
    only_pending: bool,
) -> Result<Vec<Record>, StoreError> {
    let transaction = database.begin_read().map_err(unavailable)?;
    let opened = transaction.open_table(table(kind)).map_err(unavailable)?;
    let mut records = Vec::new();
    for entry in opened.iter().map_err(unavailable)? {
        let (key, value) = entry.map_err(unavailable)?;
        let record = decode(kind, key.value(), value.value())?;
        if !only_pending || record.pending_publish {
            records.push(record);
        }
    }
    Ok(records)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|database| {
            database.begin_read().map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError> {
        let name = name.to_string();
        self.blocking(move |database| {
            let transaction = database.begin_read().map_err(unavailable)?;
            let opened = transaction.open_table(table(kind)).map_err(unavailable)?;
            match opened.get(name.as_str()).map_err(unavailable)? {
                Some(guard) => Ok(Some(decode(kind, &name, guard.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.blocking(move |database| read_all(database, kind, false))
            .await
    }

    async fn insert(&self, kind: Kind, record: &Record) -> Result<(), StoreError> {
        let record = Record {
            version: 1,
            ..record.clone()
        };
        self.blocking(move |database| {
            let name = record.name.clone();
            modify(database, kind, &name, |current| match current {
                Some(_) => Err(StoreError::AlreadyExists {
                    kind: kind.label(),
                    name: name.clone(),
                }),
                None => Ok((Some(Some(record)), ())),
            })
        })
        .await
    }

    async fn replace(
        &self,
        kind: Kind,
        expected_version: u64,
        record: &Record,
    ) -> Result<u64, StoreError> {
        let record = Record {
            version: expected_version + 1,
            ..record.clone()
        };
        self.blocking(move |database| {
            let name = record.name.clone();
            modify(database, kind, &name, |current| match current {
                None => Err(StoreError::NotFound {
                    kind: kind.label(),
                    name: name.clone(),
                }),
                Some(current) if current.version != expected_version => Err(StoreError::Conflict {
                    kind: kind.label(),
                    name: name.clone(),
                    expected: expected_version,
                }),
                Some(_) => Ok((Some(Some(record)), expected_version + 1)),
            })
        })
        .await
    }

    async fn clear_pending(
        &self,
        kind: Kind,
        name: &str,
        version: u64,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.blocking(move |database| {
            modify(database, kind, &name, |current| match current {
                Some(mut current) if current.version == version => {
                    current.pending_publish = false;
                    Ok((Some(Some(current)), true))
                }
                _ => Ok((None, false)),
            })
        })
        .await
    }

    async fn delete(
        &self,
        kind: Kind,
        name: &str,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.blocking(move |database| {
            modify(database, kind, &name, |current| match current {
                None => Err(StoreError::NotFound {
                    kind: kind.label(),
                    name: name.clone(),
                }),
                Some(current) if current.version != expected_version => Err(StoreError::Conflict {
                    kind: kind.label(),
                    name: name.clone(),
                    expected: expected_version,
                }),
                Some(_) => Ok((Some(None), ())),
            })
        })
        .await
    }

    async fn pending(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.blocking(move |database| read_all(database, kind, true))
            .await
    }
}
