//! The store contract suite against MongoDB (the MongoDB-wire server of
//! `scripts/services.sh`, or `NEBULA_TEST_MONGO_URL`). Each test uses its own database and
//! drops it afterwards.

#[path = "support/store_contract.rs"]
mod store_contract;

use nebula_control_plane::store::Store;
use nebula_control_plane::store::mongo::MongoStore;
use std::sync::Arc;

fn mongo_url() -> String {
    std::env::var("NEBULA_TEST_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// Drops the test database when the test ends.
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop runs outside the test's runtime; a small one of its own does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(client) = mongodb::Client::with_uri_str(mongo_url()).await {
                    let _ = client.database(&name).drop().await;
                }
            });
        })
        .join();
    }
}

async fn make() -> (Arc<dyn Store>, DropDatabase) {
    let database = format!("nebula_test_{:016x}", fastrand::u64(..));
    let store = MongoStore::connect(&mongo_url(), &database)
        .await
        .expect("connect to the MongoDB-wire server (scripts/services.sh start mongo)");
    (Arc::new(store), DropDatabase(database))
}

store_contract_tests!(make());

/// A document edited by hand so that even its bookkeeping does not parse: listings still
/// work (it is listed by name), and reading it is that object's `Corrupt`.
#[tokio::test]
async fn a_malformed_document_is_that_objects_error() {
    use nebula_control_plane::error::StoreError;
    use nebula_control_plane::store::{Kind, Record};
    let (store, guard) = make().await;
    store
        .insert(
            Kind::App,
            &Record {
                name: "good".into(),
                version: 0,
                pending_publish: true,
                tombstone: false,
                body: "{}".into(),
            },
        )
        .await
        .expect("insert");
    let client = mongodb::Client::with_uri_str(mongo_url())
        .await
        .expect("client");
    client
        .database(&guard.0)
        .collection::<mongodb::bson::Document>("apps")
        .insert_one(mongodb::bson::doc! {"_id": "bad", "version": "seven", "body": 3})
        .await
        .expect("raw insert");
    let names: Vec<String> = store
        .list(Kind::App)
        .await
        .expect("the listing survives")
        .into_iter()
        .map(|record| record.name)
        .collect();
    assert_eq!(names, vec!["bad", "good"]);
    let pending = store.pending(Kind::App).await.expect("pending survives");
    assert_eq!(pending.len(), 1);
    assert!(matches!(
        store.get(Kind::App, "bad").await,
        Err(StoreError::Corrupt { .. })
    ));
}
