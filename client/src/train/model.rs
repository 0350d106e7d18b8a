//! The model type the trainers read and write is the wire contract's
//! ([`confide_proto::model`]): the same tensors, flatten order and
//! safetensors bytes the coordinator aggregates and checkpoints. Its tests
//! live with it in `proto`.

pub use confide_proto::model::{Model, ModelError, Tensor};

impl From<ModelError> for crate::error::ClientError {
    fn from(e: ModelError) -> Self {
        crate::error::ClientError::Data(e.into())
    }
}
