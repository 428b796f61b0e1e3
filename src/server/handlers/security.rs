//! Users, access rules and quotas, administered over the protocol (the access
//! rules require `admin` on the cluster for these).

use std::sync::Arc;

use spool_protocol::requests::{ListAclsResponse, ListQuotasResponse, ListUsersResponse};
use spool_protocol::{ErrorCode, ErrorResponse, Request, Response};

use crate::auth::{Auth, AuthError, Quota, Rule};
use crate::server::errors::error;

pub(crate) fn auth_error(e: &AuthError) -> ErrorResponse {
    let code = match e {
        AuthError::BadCredentials(_) | AuthError::RateLimited(_) => ErrorCode::AuthenticationFailed,
        AuthError::Invalid(_) => ErrorCode::InvalidConfig,
        AuthError::NotFound(_) => ErrorCode::InvalidConfig,
        AuthError::TooManyConnections(_) => ErrorCode::LimitReached,
        AuthError::Storage(_) => ErrorCode::StorageError,
    };
    error(code, e.to_string())
}

/// Answers a user or rule request.
pub async fn handle(auth: Option<Arc<Auth>>, request: Request) -> Result<Response, ErrorResponse> {
    let Some(auth) = auth else {
        return Err(error(
            ErrorCode::InvalidConfig,
            "authentication is off on this broker (start it with spool serve --auth)",
        ));
    };
    // Hashing and syncing files: off the async threads.
    tokio::task::spawn_blocking(move || answer(&auth, request))
        .await
        .unwrap_or_else(|e| Err(error(ErrorCode::Internal, format!("task failed: {e}"))))
}

fn answer(auth: &Auth, request: Request) -> Result<Response, ErrorResponse> {
    let done = |r: Result<(), AuthError>| r.map(|()| Response::Done).map_err(|e| auth_error(&e));
    match request {
        Request::UpsertUser(r) => done(auth.users.upsert(&r.name, &r.password)),
        Request::DeleteUser(r) => done(auth.users.remove(&r.name)),
        Request::ListUsers(_) => Ok(ListUsersResponse {
            names: auth.users.names(),
        }
        .into()),
        Request::AddAcl(r) => done(Rule::from_wire(&r.acl).and_then(|rule| auth.acls.add(rule))),
        Request::RemoveAcl(r) => {
            done(Rule::from_wire(&r.acl).and_then(|rule| auth.acls.remove(&rule)))
        }
        Request::ListAcls(_) => Ok(ListAclsResponse {
            acls: auth.acls.list().iter().map(Rule::to_wire).collect(),
        }
        .into()),
        Request::SetQuota(r) => {
            let (principal, quota) = Quota::from_wire(&r.quota);
            done(auth.quotas.set(&principal, quota))
        }
        Request::RemoveQuota(r) => done(auth.quotas.remove(&r.principal)),
        Request::ListQuotas(_) => Ok(ListQuotasResponse {
            quotas: auth
                .quotas
                .list()
                .iter()
                .map(|(principal, quota)| quota.to_wire(principal))
                .collect(),
        }
        .into()),
        other => Err(error(
            ErrorCode::Internal,
            format!("request kind {} is not a security request", other.kind()),
        )),
    }
}
