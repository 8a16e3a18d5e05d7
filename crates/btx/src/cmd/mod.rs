pub mod forward;
pub mod generate;
pub mod train;
