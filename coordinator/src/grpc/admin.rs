//! The `Admin` service: thin, read-only handlers for operators (status, round
//! history, checkpoints). Under mTLS only certificates the CA issued with the
//! operator role (`confide:role:operator`, see `access`) are admitted, and
//! every call is logged with who asked.

use tonic::{Request, Response, Status};
use tracing::info;

use confide_proto::v1 as pb;
use pb::admin_server::Admin;

use super::Handlers;
use crate::convert::record_to_pb;

impl Handlers {
    /// The Admin API takes only operator certificates under mTLS (the role
    /// check is in `Access::check`); each admitted call is logged as an
    /// audit line naming the operator, the call and the peer address.
    fn operator<T>(&self, req: &Request<T>, call: &'static str) -> Result<(), Status> {
        let who = self.admit(req, true)?;
        info!(
            operator = who.as_ref().map_or("(insecure mode)", |c| c.name.as_str()),
            serial = who.as_ref().map_or("", |c| c.serial.as_str()),
            remote = ?req.remote_addr(),
            call,
            "admin request"
        );
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for Handlers {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.operator(&req, "Status")?;
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
        self.operator(&req, "Rounds")?;
        let rounds = self.fed.history().into_iter().map(record_to_pb).collect();
        Ok(Response::new(pb::RoundsResponse { rounds }))
    }

    async fn checkpoints(
        &self,
        req: Request<pb::CheckpointsRequest>,
    ) -> Result<Response<pb::CheckpointsResponse>, Status> {
        self.operator(&req, "Checkpoints")?;
        let Some(store) = self.fed.store.clone() else {
            return Ok(Response::new(pb::CheckpointsResponse {
                checkpoints: vec![],
            }));
        };
        // Object-storage listing blocks: off the runtime's worker threads.
        let list = tokio::task::spawn_blocking(move || crate::checkpoint_infos_in(store.as_ref()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::CheckpointsResponse { checkpoints: list }))
    }
}
