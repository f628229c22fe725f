//! The store contract suite against the in-memory and the embedded (redb) stores. MongoDB's
//! run is in `mongo_store.rs`.

#[path = "support/store_contract.rs"]
mod store_contract;

mod memory {
    use super::store_contract;
    use nebula_control_plane::store::Store;
    use nebula_control_plane::store::memory::MemoryStore;
    use std::sync::Arc;

    async fn make() -> (Arc<dyn Store>, ()) {
        (Arc::new(MemoryStore::new()), ())
    }

    crate::store_contract_tests!(make());
}

mod embedded {
    use super::store_contract;
    use nebula_control_plane::store::Store;
    use nebula_control_plane::store::embedded::EmbeddedStore;
    use std::sync::Arc;

    async fn make() -> (Arc<dyn Store>, tempfile::TempDir) {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(directory.path()).expect("open");
        (Arc::new(store), directory)
    }

    crate::store_contract_tests!(make());

    /// What was committed survives closing and reopening the database.
    #[tokio::test]
    async fn survives_reopen() {
        use nebula_control_plane::store::{Kind, Record};
        let directory = tempfile::tempdir().expect("tempdir");
        {
            let store = EmbeddedStore::open(directory.path()).expect("open");
            let record = Record {
                name: "web".into(),
                version: 0,
                pending_publish: true,
                tombstone: false,
                body: "{}".into(),
            };
            store.insert(Kind::App, &record).await.expect("insert");
        }
        let identity = {
            let store = EmbeddedStore::open(directory.path()).expect("reopen");
            store.identity()
        };
        let store = EmbeddedStore::open(directory.path()).expect("reopen");
        assert_eq!(store.identity(), identity, "the identity is fixed at init");
        let record = store
            .get(Kind::App, "web")
            .await
            .expect("get")
            .expect("kept");
        assert!(record.pending_publish);
        assert_eq!(store.pending(Kind::App).await.expect("pending").len(), 1);
    }
}
