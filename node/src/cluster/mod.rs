//! The pieces the cluster service ([`crate::services::cluster`]) runs on: the
//! `/fogmesh/cluster/1` protocol and the content-addressed blob store.

pub mod blobs;
pub mod protocol;
