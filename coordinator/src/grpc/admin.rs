//! The `Admin` service: thin, read-only handlers for operators (status, round
//! history, checkpoints). Under mTLS only operator certificates
//! (`operator-NAME`) are admitted.

use tonic::{Request, Response, Status};
use tracing::warn;

use confide_proto::v1 as pb;
use pb::admin_server::Admin;

use super::Handlers;
use crate::convert::record_to_pb;

impl Handlers {
    /// The Admin API takes only operator certificates (SAN `operator-NAME`) under mTLS.
    fn operator<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match self.admit(req, true)? {
            Some(c) if !c.name.starts_with("operator-") => {
                warn!(peer = %c.name, "admin request refused: not an operator certificate");
                Err(Status::permission_denied(format!(
                    "{} is not an operator certificate",
                    c.name
                )))
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Admin for Handlers {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.operator(&req)?;
        let (round, stage, sites, completed) = self.fed.status();
        let s = self.fed.settings();
        Ok(Response::new(pb::StatusResponse {
            federation: s.federation.clone(),
            suite: s.suite.name().into(),
            current_round: round,
            stage,
            connected_sites: sites,
            completed_rounds: completed,
            target_rounds: s.rounds,
            secure_aggregation: s.secure_aggregation,
        }))
    }

    async fn rounds(
        &self,
        req: Request<pb::RoundsRequest>,
    ) -> Result<Response<pb::RoundsResponse>, Status> {
        self.operator(&req)?;
        let rounds = self.fed.history().into_iter().map(record_to_pb).collect();
        Ok(Response::new(pb::RoundsResponse { rounds }))
    }

    async fn checkpoints(
        &self,
        req: Request<pb::CheckpointsRequest>,
    ) -> Result<Response<pb::CheckpointsResponse>, Status> {
        self.operator(&req)?;
        let Some(dir) = self.fed.settings().checkpoints.dir.clone() else {
            return Ok(Response::new(pb::CheckpointsResponse {
                checkpoints: vec![],
            }));
        };
        let list = crate::checkpoint_infos(&dir).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::CheckpointsResponse { checkpoints: list }))
    }
}
