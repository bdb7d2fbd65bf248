pub mod cluster;
pub mod replication;
pub mod schema;
pub mod wait;
