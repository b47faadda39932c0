//! Reports: statistics, the VTAB results table, the AT vs iDAT paired comparison, the adapter
//! weight analysis, plots and Markdown report files. Library functions on plain serde data;
//! pipeline stages wrap them. Rules and formats: docs/report.md.

pub mod adapter_stats;
pub mod backbones;
pub mod compare;
pub mod markdown;
pub mod plot;
pub mod published;
pub mod stats;
pub mod vtab;
pub mod writers;
