//! amk-schedule: lowers one decode step's IR to a schedule of tasks on workers (thread blocks)
//! that synchronise only through monotone counters, and reads and writes `schedule.ron`.
//!
//! Contract: [`lower`] turns a [`amk_ir::graph::DecodeGraph`] and a [`ScheduleConfig`] into a
//! [`Schedule`] whose every task declares the byte regions it reads, writes and adds to (its
//! op's [`TaskOp::footprint`]). A schedule proves nothing by itself: `amk-verify` decides
//! whether it may run.

pub mod config;
pub mod lower;
pub mod ops;
pub mod schedule;

pub use config::{PrecisionPlan, ScheduleConfig};
pub use lower::{lower, LowerError};
pub use ops::TaskOp;
pub use schedule::{Schedule, WeightFormat};
