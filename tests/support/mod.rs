pub mod cluster;
pub mod schema;
