//! The ML stage kinds the product ships, one file per kind (see docs/stages.md).
pub mod analysis;
pub mod common;
pub mod dataset_imagefolder;
pub mod dataset_mini;
pub mod dataset_vtab;
pub mod decode;
pub mod eval;
pub mod model_pretrain;
pub mod model_vit;
pub mod report;
pub mod train;

use super::Registry;

/// Register every shipped kind.
pub fn register_all(r: &mut Registry) {
    r.register::<dataset_vtab::DatasetVtab>()
        .register::<dataset_mini::DatasetMini>()
        .register::<dataset_imagefolder::DatasetImageFolder>()
        .register::<decode::Decode>()
        .register::<model_vit::ModelVit>()
        .register::<model_pretrain::ModelPretrain>()
        .register::<train::TrainAdapt>()
        .register::<train::TrainIdat>()
        .register::<eval::Eval>()
        .register::<analysis::AdapterStats>()
        .register::<report::ReportVtab>();
}
