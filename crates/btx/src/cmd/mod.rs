pub mod bench;
pub mod data;
pub mod eval;
pub mod forward;
pub mod generate;
pub mod import;
pub mod mix;
pub mod train;
