pub mod cluster;
pub mod package_tree;
pub mod replication;
pub mod schema;
pub mod settings;
pub mod upgrade_script;
pub mod wait;
