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
