pub mod cluster;
pub mod schema;
pub mod wait;
